/*
 * The C floor of the 1 MiB echo, for `python -m bench._shapes`: what moving
 * a megabyte between two cores costs without any runtime in the way.
 *
 *   copy_floor ROUNDS BYTES
 *
 * One round is what the echo case does: write BYTES into `args`, have them
 * copied into `out`, read the last byte of `out`. Three ways, interleaved:
 *   local  one thread does both copies (an in-process call);
 *   cross  the write on this thread, the copy on a second thread pinned to
 *          another CPU, handed over by spinning on a flag: the megabyte the
 *          first core wrote has to move to the second core's cache;
 *   same   as cross, but both threads pinned to one CPU (the hand-over
 *          yields the CPU instead of spinning).
 * Prints one JSON line: the p50 ns of each way.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint8_t *source, *args, *out;
static size_t bytes;
static _Atomic uint64_t ping, pong;
static int yield_waits;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Waits until *word is `value` (or UINT64_MAX: stop). */
static void wait_for(_Atomic uint64_t *word, uint64_t value)
{
    uint64_t seen;
    while ((seen = atomic_load_explicit(word, memory_order_acquire)) != value && seen != UINT64_MAX) {
        if (yield_waits)
            sched_yield();
#if defined(__x86_64__) || defined(__i386__)
        else
            __builtin_ia32_pause();
#endif
    }
}

static void pin(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

static int peer_cpu;

static void *peer(void *unused)
{
    (void)unused;
    pin(peer_cpu);
    for (uint64_t k = 1;; k++) {
        wait_for(&ping, k);
        if (atomic_load(&ping) == UINT64_MAX)
            return NULL;
        memcpy(out, args, bytes);
        atomic_store_explicit(&pong, k, memory_order_release);
    }
}

static int compare(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t median(uint64_t *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, compare);
    return v[n / 2];
}

/* `rounds` handed-over rounds with the peer on `cpu`; the p50. */
static uint64_t handed_over(int rounds, int cpu, int same)
{
    pthread_t thread;
    peer_cpu = cpu;
    yield_waits = same;
    atomic_store(&ping, 0);
    atomic_store(&pong, 0);
    pthread_create(&thread, NULL, peer, NULL);
    uint64_t *t = calloc((size_t)rounds, sizeof *t);
    volatile uint8_t sink = 0;
    for (int r = 0; r < rounds + 10; r++) {
        uint64_t t0 = now_ns();
        memcpy(args, source, bytes);
        atomic_store_explicit(&ping, (uint64_t)r + 1, memory_order_release);
        wait_for(&pong, (uint64_t)r + 1);
        sink = out[bytes - 1];
        if (r >= 10)
            t[r - 10] = now_ns() - t0;
    }
    (void)sink;
    atomic_store(&ping, UINT64_MAX);
    pthread_join(thread, NULL);
    uint64_t p50 = median(t, rounds);
    free(t);
    return p50;
}

static uint64_t local(int rounds)
{
    uint64_t *t = calloc((size_t)rounds, sizeof *t);
    volatile uint8_t sink = 0;
    for (int r = 0; r < rounds + 10; r++) {
        uint64_t t0 = now_ns();
        memcpy(args, source, bytes);
        memcpy(out, args, bytes);
        sink = out[bytes - 1];
        if (r >= 10)
            t[r - 10] = now_ns() - t0;
    }
    (void)sink;
    uint64_t p50 = median(t, rounds);
    free(t);
    return p50;
}

int main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    int rounds = atoi(argv[1]);
    bytes = (size_t)atol(argv[2]);
    if (rounds < 1 || bytes < 1)
        return 2;
    source = malloc(bytes);
    args = malloc(bytes);
    out = malloc(bytes);
    for (size_t i = 0; i < bytes; i++)
        source[i] = (uint8_t)i;
    memset(args, 0, bytes);
    memset(out, 0, bytes);
    int here = sched_getcpu(), other = -1;
    cpu_set_t allowed;
    sched_getaffinity(0, sizeof allowed, &allowed);
    pin(here);
    for (int c = 0; c < CPU_SETSIZE && other < 0; c++)
        if (c != here && CPU_ISSET(c, &allowed))
            other = c;
    uint64_t l = local(rounds), x = other >= 0 ? handed_over(rounds, other, 0) : 0, s = handed_over(rounds, here, 1);
    printf("{\"local_ns\": %llu, \"cross_ns\": %llu, \"same_ns\": %llu}\n", (unsigned long long)l,
           (unsigned long long)x, (unsigned long long)s);
    return 0;
}
