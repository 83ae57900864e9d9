/*
 * The C floor of a call spread over many sleeping processes, for
 * `python -m bench._scale`.
 *
 *   spread_floor PROCESSES ROUNDS
 *
 * Forks PROCESSES children that share one anonymous MAP_SHARED mapping, a
 * cache line each. Each child sleeps on a futex until its `ping` moves, then
 * answers in `pong` and sleeps again: an idle worker. The parent makes ROUNDS
 * round trips, child 0, 1, 2, ... in turn (one untimed pass over all of them
 * first): it stores `ping`, wakes the child's futex, and busy-waits on `pong`
 * (a pause hint, a yield after ~100 us), as a host calling with wait=auto
 * does. So every round trip wakes a process that has slept since the last
 * pass: what each call of the bench's "spread over all" row pays, with no
 * library, no Python and no data in between.
 *
 * Prints one line of JSON: {"processes", "rounds", "p50_ns", "p90_ns"}.
 * Built by bench/_floor.py with `cc -O2` into a temporary directory.
 */
#define _GNU_SOURCE
#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct line {
    alignas(64) _Atomic uint32_t ping;
    _Atomic uint32_t pong;
} line;

#define YIELD_AFTER 4096u

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void futex(_Atomic uint32_t *word, int op, uint32_t value)
{
    syscall(SYS_futex, word, op, value, NULL, NULL, 0);
}

static _Noreturn void serve(line *mine)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* a killed parent leaves no child asleep */
    uint32_t seen = 0;
    for (;;) {
        uint32_t ping;
        while ((ping = atomic_load_explicit(&mine->ping, memory_order_acquire)) == seen)
            futex(&mine->ping, FUTEX_WAIT, seen);
        seen = ping;
        atomic_store_explicit(&mine->pong, ping, memory_order_release);
    }
}

static void call(line *theirs, uint32_t i)
{
    atomic_store_explicit(&theirs->ping, i, memory_order_release);
    futex(&theirs->ping, FUTEX_WAKE, 1);
    for (unsigned spins = 0; atomic_load_explicit(&theirs->pong, memory_order_acquire) != i; spins++) {
        if (spins >= YIELD_AFTER)
            sched_yield();
        else
            __builtin_ia32_pause();
    }
}

static int by_value(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    long processes = argc == 3 ? atol(argv[1]) : 0, rounds = argc == 3 ? atol(argv[2]) : 0;
    if (processes <= 0 || rounds <= 0) {
        fprintf(stderr, "usage: %s PROCESSES ROUNDS\n", argv[0]);
        return 2;
    }
    line *lines = mmap(NULL, (size_t)processes * sizeof *lines, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                       -1, 0);
    pid_t *children = calloc((size_t)processes, sizeof *children);
    uint64_t *samples = calloc((size_t)rounds, sizeof *samples);
    if (lines == MAP_FAILED || children == NULL || samples == NULL) {
        perror("spread_floor: allocation");
        return 1;
    }
    int failed = 0;
    long started = 0;
    for (; started < processes; started++) {
        pid_t pid = fork();
        if (pid == 0)
            serve(&lines[started]);
        if (pid < 0) {
            perror("spread_floor: fork");
            failed = 1;
            break;
        }
        children[started] = pid;
    }
    uint32_t *calls = calloc((size_t)processes, sizeof *calls);
    if (!failed && calls != NULL) {
        for (long k = 0; k < started; k++) /* every child has run, and sleeps */
            call(&lines[k], ++calls[k]);
        for (long r = 0; r < rounds; r++) {
            long k = r % started;
            uint64_t t0 = now_ns();
            call(&lines[k], ++calls[k]);
            samples[r] = now_ns() - t0;
        }
        qsort(samples, (size_t)rounds, sizeof *samples, by_value);
        printf("{\"processes\": %ld, \"rounds\": %ld, \"p50_ns\": %llu, \"p90_ns\": %llu}\n", started, rounds,
               (unsigned long long)samples[rounds / 2], (unsigned long long)samples[rounds * 9 / 10]);
    }
    for (long k = 0; k < started; k++)
        kill(children[k], SIGKILL);
    for (long k = 0; k < started; k++)
        waitpid(children[k], NULL, 0);
    return failed || calls == NULL;
}
