/*
 * Last words of a dying worker: which call was in flight and the native
 * stack, written to stderr (which the host keeps for WorkerCrashed).
 *
 * Installed before Python's faulthandler, which dumps the Python stacks,
 * restores our handler and re-raises: ours then writes the native backtrace
 * and re-raises with the default action, so the host still sees the signal.
 * SIGUSR2 asks for the same dump from a worker the host is about to kill
 * (a hung call): the thread inside the plugin writes its stack, then the
 * process SIGKILLs itself.
 */
#define _GNU_SOURCE
#include "worker.h"

#include <execinfo.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_FRAMES 64

volatile int32_t ppw_busy_contract = -1;
volatile int32_t ppw_busy_function = -1;

/* The call each slot's thread runs, so that a crash report names the call
 * of the thread that crashed (found by its tid: async-signal-safe, unlike
 * thread-local storage in a dlopen'd module). */
#define BUSY_SLOTS 4096 /* PP_MAX_SLOTS */
static struct {
    volatile pid_t tid;
    volatile int32_t contract, function;
} g_busy[BUSY_SLOTS];

void ppw_busy_begin(uint32_t slot, int tid, uint32_t contract, uint32_t function)
{
    if (slot >= BUSY_SLOTS)
        return;
    g_busy[slot].contract = (int32_t)contract;
    g_busy[slot].function = (int32_t)function;
    g_busy[slot].tid = tid;
}

void ppw_busy_end(uint32_t slot)
{
    if (slot < BUSY_SLOTS)
        g_busy[slot].tid = 0;
}
static pthread_t g_busy_thread;
static volatile sig_atomic_t g_busy_thread_set;

static const int FATAL[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};

void ppw_mark_busy_thread(void)
{
    g_busy_thread = pthread_self();
    g_busy_thread_set = 1;
}

/* snprintf is not async-signal-safe; this is. */
static size_t put(char *buf, size_t at, size_t cap, const char *text)
{
    while (*text && at < cap)
        buf[at++] = *text++;
    return at;
}

static size_t put_int(char *buf, size_t at, size_t cap, long value)
{
    char digits[24];
    size_t n = 0;
    unsigned long v = value < 0 ? (unsigned long)-value : (unsigned long)value;
    do
        digits[n++] = (char)('0' + v % 10);
    while ((v /= 10) && n < sizeof digits);
    if (value < 0 && at < cap)
        buf[at++] = '-';
    while (n && at < cap)
        buf[at++] = digits[--n];
    return at;
}

static void last_words(const char *what, int sig)
{
    char line[256];
    size_t n = put(line, 0, sizeof line, "polyplug_isolated worker: ");
    n = put(line, n, sizeof line, what);
    n = put(line, n, sizeof line, " (signal ");
    n = put_int(line, n, sizeof line, sig);
    n = put(line, n, sizeof line, ")");
    int32_t contract = ppw_busy_contract, function = ppw_busy_function;
    pid_t me = (pid_t)syscall(SYS_gettid);
    for (size_t i = 0; i < BUSY_SLOTS; i++)
        if (g_busy[i].tid == me) {
            contract = g_busy[i].contract;
            function = g_busy[i].function;
            break;
        }
    if (function == PPW_BUSY_INIT) {
        n = put(line, n, sizeof line, " during polyplug_init");
    } else if (contract >= 0) {
        n = put(line, n, sizeof line, " during a call: contract index ");
        n = put_int(line, n, sizeof line, contract);
        n = put(line, n, sizeof line, ", function ");
        n = put_int(line, n, sizeof line, function);
    }
    n = put(line, n, sizeof line, "; native stack:\n");
    (void)!write(STDERR_FILENO, line, n);
    void *frames[MAX_FRAMES];
    int depth = backtrace(frames, MAX_FRAMES);
    backtrace_symbols_fd(frames, depth, STDERR_FILENO);
}

static void on_fatal(int sig)
{
    last_words("fatal signal", sig);
    raise(sig); /* SA_RESETHAND restored the default action */
}

static void on_dump_request(int sig)
{
    if (g_busy_thread_set && !pthread_equal(pthread_self(), g_busy_thread)) {
        pthread_kill(g_busy_thread, sig); /* the stack worth seeing is the busy thread's */
        return;
    }
    last_words("killed by the host after a timeout", sig);
    kill(getpid(), SIGKILL);
}

/* A stack overflow leaves no stack to run a handler on: each thread that
 * runs plugin code gets an alternate one (sigaltstack is per thread). */
int ppw_thread_alt_stack(void)
{
    size_t size = 64 * 1024;
    stack_t ss = {.ss_sp = malloc(size), .ss_size = size, .ss_flags = 0};
    return ss.ss_sp && sigaltstack(&ss, NULL) == 0 ? 0 : -1;
}

int ppw_install_crash_handlers(void)
{
    if (ppw_thread_alt_stack() != 0)
        return -1;
    /* backtrace() loads libgcc on first use, which is not safe in a handler. */
    void *warm[1];
    backtrace(warm, 1);

    struct sigaction fatal = {0};
    fatal.sa_handler = on_fatal;
    fatal.sa_flags = SA_ONSTACK | SA_RESETHAND | SA_NODEFER;
    sigemptyset(&fatal.sa_mask);
    for (size_t i = 0; i < sizeof FATAL / sizeof FATAL[0]; i++)
        if (sigaction(FATAL[i], &fatal, NULL) != 0)
            return -1;

    struct sigaction dump = {0};
    dump.sa_handler = on_dump_request;
    dump.sa_flags = SA_ONSTACK | SA_RESTART;
    sigemptyset(&dump.sa_mask);
    return sigaction(SIGUSR2, &dump, NULL);
}
