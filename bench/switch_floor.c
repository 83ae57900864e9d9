/*
 * The floor of a call between bundles on two CPUs (README, "Host contracts,
 * calls between bundles, dependencies"):
 *
 *   cc -O2 bench/switch_floor.c -o /tmp/switch_floor && /tmp/switch_floor
 *
 * Such a call has three threads take turns (the host's, the caller's worker,
 * the callee's worker); with two CPUs two of them share one, so each call
 * hands that CPU over and back. Prints, in ns:
 *
 *   - two processes on CPU 0 handing a word back and forth, waiting with
 *     sched_yield (two context switches per round trip), and the same
 *     hand-off across two CPUs with a pause loop (no switch); then sleeping
 *     on the word instead (futex), on one CPU and across two;
 *   - the skeleton of a call between bundles, with no work in it: a host
 *     process H pinned to CPU 1 calls worker A, whose call needs worker B
 *     (both unpinned, as workers are). "host route": A asks H, H calls B and
 *     replies to A (polyplug_isolated's route); "direct route": A calls B
 *     itself. Each side waits as the runtime's do: H spins, A (calling out)
 *     and B (answering a call made for a waiting worker) yield at once, A
 *     between calls after 64 pause steps. p50 and p90 of 100000 calls.
 */
#define _GNU_SOURCE
#include <linux/futex.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define ROUNDS 200000ul
#define CALLS 100000ul
#define PAUSES 64u

typedef struct word {
    _Alignas(64) _Atomic unsigned long v;
} word;

static unsigned long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (unsigned long)t.tv_sec * 1000000000ul + (unsigned long)t.tv_nsec;
}

static cpu_set_t g_all; /* the CPUs this program may use */

static void pin(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof set, &set);
}

static void unpin(void) { sched_setaffinity(0, sizeof g_all, &g_all); }

/* Waits for *w == value: pause steps from `first` to PAUSES, then sched_yield. */
static void await_value(word *w, unsigned long value, unsigned first)
{
    for (unsigned i = first; atomic_load(&w->v) != value; i++) {
        if (i >= PAUSES)
            sched_yield();
        else
            __builtin_ia32_pause();
    }
}

static void *shared(size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    memset(p, 0, size);
    return p;
}

enum wait { YIELD, PAUSE, SLEEP };

/* Waits for *w == value as `how` says. */
static void await_as(word *w, unsigned long value, enum wait how)
{
    unsigned long seen;
    while ((seen = atomic_load(&w->v)) != value) {
        if (how == SLEEP)
            syscall(SYS_futex, &w->v, FUTEX_WAIT, (unsigned)seen, NULL, NULL, 0);
        else
            await_value(w, value, how == YIELD ? PAUSES : 0);
    }
}

static void hand_over(word *w, unsigned long value, enum wait how)
{
    atomic_store(&w->v, value);
    if (how == SLEEP)
        syscall(SYS_futex, &w->v, FUTEX_WAKE, 1, NULL, NULL, 0);
}

/* ns per round trip, the child on `child_cpu`. */
static double ping_pong(int child_cpu, enum wait how)
{
    word *w = shared(sizeof *w);
    unsigned long rounds = how == SLEEP ? ROUNDS / 10 : ROUNDS;
    if (fork() == 0) {
        pin(child_cpu);
        for (unsigned long i = 1; i <= rounds; i++) {
            await_as(w, 2 * i - 1, how);
            hand_over(w, 2 * i, how);
        }
        _exit(0);
    }
    pin(0);
    unsigned long start = now_ns();
    for (unsigned long i = 1; i <= rounds; i++) {
        hand_over(w, 2 * i - 1, how);
        await_as(w, 2 * i, how);
    }
    double ns = (double)(now_ns() - start) / rounds;
    wait(NULL);
    munmap(w, sizeof *w);
    return ns;
}

typedef struct chain {
    word h2a, a2h, h2b, b2h, a2b, b2a; /* who writes to whom */
} chain;

static int by_value(const void *x, const void *y)
{
    unsigned long p = *(const unsigned long *)x, q = *(const unsigned long *)y;
    return p < q ? -1 : p > q;
}

static void call_chain(int direct)
{
    chain *c = shared(sizeof *c);
    pid_t a = fork();
    if (a == 0) { /* the caller's worker: h2a 2i-1 is the call, 2i the reply to its call back */
        unpin();
        for (unsigned long i = 1; i <= CALLS; i++) {
            await_value(&c->h2a, 2 * i - 1, 1);
            if (direct) {
                atomic_store(&c->a2b.v, i);
                await_value(&c->b2a, i, PAUSES);
            } else {
                atomic_store(&c->a2h.v, 2 * i - 1);
                await_value(&c->h2a, 2 * i, PAUSES);
            }
            atomic_store(&c->a2h.v, 2 * i);
        }
        _exit(0);
    }
    pid_t b = fork();
    if (b == 0) { /* the callee's worker */
        unpin();
        for (unsigned long i = 1; i <= CALLS; i++) {
            await_value(direct ? &c->a2b : &c->h2b, i, PAUSES);
            atomic_store(direct ? &c->b2a.v : &c->b2h.v, i);
        }
        _exit(0);
    }
    pin(1);
    unsigned long *took = malloc(CALLS * sizeof *took);
    for (unsigned long i = 1; i <= CALLS; i++) {
        unsigned long start = now_ns();
        atomic_store(&c->h2a.v, 2 * i - 1);
        if (!direct) {
            await_value(&c->a2h, 2 * i - 1, 1);
            atomic_store(&c->h2b.v, i);
            await_value(&c->b2h, i, 1);
            atomic_store(&c->h2a.v, 2 * i);
        }
        await_value(&c->a2h, 2 * i, 1);
        took[i - 1] = now_ns() - start;
    }
    waitpid(a, NULL, 0);
    waitpid(b, NULL, 0);
    qsort(took, CALLS, sizeof *took, by_value);
    printf("call between bundles, no work, %s route:  p50 %lu ns, p90 %lu ns\n", direct ? "direct" : "host  ",
           took[CALLS / 2], took[CALLS * 9 / 10]);
    free(took);
    munmap(c, sizeof *c);
}

int main(void)
{
    sched_getaffinity(0, sizeof g_all, &g_all);
    printf("one CPU, sched_yield (two context switches):  %.0f ns per round trip\n", ping_pong(0, YIELD));
    printf("two CPUs, pause loop (no switch):             %.0f ns per round trip\n", ping_pong(1, PAUSE));
    printf("one CPU, futex sleep and wake:                %.0f ns per round trip\n", ping_pong(0, SLEEP));
    printf("two CPUs, futex sleep and wake:               %.0f ns per round trip\n", ping_pong(1, SLEEP));
    call_chain(0);
    call_chain(1);
    return 0;
}
