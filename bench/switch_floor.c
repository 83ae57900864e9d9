/*
 * The floor of a call between bundles on two CPUs: what two context switches
 * on one CPU cost (README, "Host contracts, calls between bundles").
 *
 *   cc -O2 bench/switch_floor.c -o /tmp/switch_floor && /tmp/switch_floor
 *
 * Such a call has three threads take turns (the host's, the caller's worker,
 * the callee's worker); with two CPUs two of them share one, so every call
 * hands that CPU over and back. Here two processes pinned to CPU 0 hand a
 * word back and forth through shared memory, waiting with sched_yield (how
 * the workers wait for each other); for comparison, the same hand-off on two
 * CPUs with a pause loop (no switch at all). Prints ns per round trip.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define ROUNDS 200000ul

static unsigned long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (unsigned long)t.tv_sec * 1000000000ul + (unsigned long)t.tv_nsec;
}

static void pin(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof set, &set);
}

static void await_value(_Atomic unsigned long *word, unsigned long value, int yield)
{
    while (atomic_load(word) != value) {
        if (yield)
            sched_yield();
        else
            __builtin_ia32_pause();
    }
}

static double round_trip_ns(int child_cpu, int yield)
{
    _Atomic unsigned long *word = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (fork() == 0) {
        pin(child_cpu);
        for (unsigned long i = 1; i <= ROUNDS; i++) {
            await_value(word, 2 * i - 1, yield);
            atomic_store(word, 2 * i);
        }
        _exit(0);
    }
    pin(0);
    unsigned long start = now_ns();
    for (unsigned long i = 1; i <= ROUNDS; i++) {
        atomic_store(word, 2 * i - 1);
        await_value(word, 2 * i, yield);
    }
    double ns = (double)(now_ns() - start) / ROUNDS;
    wait(NULL);
    munmap((void *)word, 4096);
    return ns;
}

int main(void)
{
    printf("one CPU, sched_yield (two context switches): %.0f ns per round trip\n", round_trip_ns(0, 1));
    printf("two CPUs, pause loop (no switch):            %.0f ns per round trip\n", round_trip_ns(1, 0));
    return 0;
}
