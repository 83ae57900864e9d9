/*
 * The C-to-C floor of a cross-process round trip, for `python -m bench`.
 *
 *   floor spin|sem|sem-1cpu|sem-2cpu ROUNDS WARMUP SAMPLES_FILE [BUDGET_MS]
 *
 * Forks; parent and child share one anonymous MAP_SHARED mapping and
 * ping-pong ROUNDS round trips (after WARMUP untimed ones):
 *
 *   spin  the parent stores ping = i (release) and busy-waits with a pause
 *         hint until pong == i; the child busy-waits on ping and answers.
 *         After SPIN_YIELD_AFTER pauses (~100 us) a waiter also yields the
 *         CPU: never reached when each side has its own core, it keeps a
 *         run where both share one core from taking a time slice per hand-off.
 *   sem   the parent posts sem `ping` and waits on sem `pong`; the child
 *         waits on `ping` and posts `pong` (process-shared sem_t).
 *   sem-1cpu  as sem, both processes pinned to the CPU the parent started
 *         on: no wake-up crosses cores.
 *   sem-2cpu  as sem, the parent pinned to its CPU and the child to another
 *         one: every wake-up crosses cores.
 * `spin` and `sem` leave placement to the scheduler, as the isolated runtime
 * does; for `sem` it often puts both on one core (wake-affine).
 *
 * Each timed round trip is measured with CLOCK_MONOTONIC (the clock behind
 * Python's perf_counter_ns) and written as a native uint64 to SAMPLES_FILE;
 * a one-line JSON summary goes to stdout. With BUDGET_MS, the timed rounds
 * stop once that much time has passed ("rounds" says how many ran).
 *
 * Built by bench/_floor.py with `cc -O2` into a temporary directory.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <sched.h>
#include <semaphore.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct shared {
    alignas(64) _Atomic uint64_t ping;
    alignas(64) _Atomic uint64_t pong;
    alignas(64) sem_t ping_sem;
    alignas(64) sem_t pong_sem;
} shared;

#define SPIN_YIELD_AFTER 4096u

static inline void cpu_relax(unsigned spins)
{
    if (spins >= SPIN_YIELD_AFTER) {
        sched_yield();
        return;
    }
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void sem_wait_retry(sem_t *s)
{
    while (sem_wait(s) != 0 && errno == EINTR) {
    }
}

static void child(shared *sh, int use_sem, uint64_t total)
{
    for (uint64_t i = 1; i <= total; i++) {
        if (use_sem) {
            sem_wait_retry(&sh->ping_sem);
            sem_post(&sh->pong_sem);
        } else {
            for (unsigned spins = 0; atomic_load_explicit(&sh->ping, memory_order_acquire) != i; spins++)
                cpu_relax(spins);
            atomic_store_explicit(&sh->pong, i, memory_order_release);
        }
    }
}

static inline void round_trip(shared *sh, int use_sem, uint64_t i)
{
    if (use_sem) {
        sem_post(&sh->ping_sem);
        sem_wait_retry(&sh->pong_sem);
    } else {
        atomic_store_explicit(&sh->ping, i, memory_order_release);
        for (unsigned spins = 0; atomic_load_explicit(&sh->pong, memory_order_acquire) != i; spins++)
            cpu_relax(spins);
    }
}

static int pin_to(int cpu)
{
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    if (sched_setaffinity(0, sizeof one, &one) != 0) {
        perror("floor: sched_setaffinity");
        return -1;
    }
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    const char *mode = argc == 5 || argc == 6 ? argv[1] : "";
    int pin = strcmp(mode, "sem-1cpu") == 0 ? 1 : strcmp(mode, "sem-2cpu") == 0 ? 2 : 0;
    int use_sem = pin || strcmp(mode, "sem") == 0;
    if (!use_sem && strcmp(mode, "spin") != 0) {
        fprintf(stderr, "usage: %s spin|sem|sem-1cpu|sem-2cpu ROUNDS WARMUP SAMPLES_FILE [BUDGET_MS]\n",
                argv[0]);
        return 2;
    }
    int parent_cpu = sched_getcpu(), child_cpu = parent_cpu;
    if (pin == 2) {
        cpu_set_t allowed;
        if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) {
            perror("floor: sched_getaffinity");
            return 1;
        }
        for (int cpu = 0; cpu < CPU_SETSIZE && child_cpu == parent_cpu; cpu++)
            if (cpu != parent_cpu && CPU_ISSET(cpu, &allowed))
                child_cpu = cpu;
        if (child_cpu == parent_cpu) {
            fprintf(stderr, "floor: sem-2cpu needs two CPUs\n");
            return 3;
        }
    }
    if (pin && pin_to(parent_cpu) != 0)
        return 1;
    uint64_t rounds = strtoull(argv[2], NULL, 10), warmup = strtoull(argv[3], NULL, 10);
    uint64_t budget_ns = argc == 6 ? strtoull(argv[5], NULL, 10) * 1000000u : UINT64_MAX;
    if (rounds == 0) {
        fprintf(stderr, "floor: ROUNDS must be positive\n");
        return 2;
    }
    uint64_t *lat = malloc(rounds * sizeof *lat);
    shared *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (!lat || sh == MAP_FAILED) {
        perror("floor: allocation");
        return 1;
    }
    memset(sh, 0, sizeof *sh);
    if (sem_init(&sh->ping_sem, 1, 0) != 0 || sem_init(&sh->pong_sem, 1, 0) != 0) {
        perror("floor: sem_init");
        return 1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        perror("floor: fork");
        return 1;
    }
    if (pid == 0) {
        if (pin == 2 && pin_to(child_cpu) != 0)
            _exit(1);
        child(sh, use_sem, warmup + rounds);
        _exit(0);
    }
    uint64_t i = 1, done = 0;
    uint64_t start = now_ns(), deadline = budget_ns == UINT64_MAX ? UINT64_MAX : start + budget_ns;
    for (; i <= warmup && now_ns() < deadline; i++)
        round_trip(sh, use_sem, i);
    start = now_ns();
    for (; done < rounds; done++, i++) {
        uint64_t t0 = now_ns();
        round_trip(sh, use_sem, i);
        uint64_t t1 = now_ns();
        lat[done] = t1 - t0;
        if (t1 >= deadline && done > 0)
            break;
    }
    if (done < rounds)
        done++; /* the round that crossed the deadline was timed too */
    uint64_t wall = now_ns() - start;
    int status = 0;
    if (i <= warmup + rounds)
        kill(pid, SIGKILL); /* it still waits for rounds that will not come */
    if (waitpid(pid, &status, 0) != pid ||
        (i > warmup + rounds && (!WIFEXITED(status) || WEXITSTATUS(status) != 0))) {
        fprintf(stderr, "floor: child failed (status %d)\n", status);
        return 1;
    }

    FILE *f = fopen(argv[4], "wb");
    if (!f || fwrite(lat, sizeof *lat, done, f) != done || fclose(f) != 0) {
        perror("floor: writing samples");
        return 1;
    }
    rounds = done;
    qsort(lat, rounds, sizeof *lat, cmp_u64);
    printf("{\"mode\": \"%s\", \"rounds\": %llu, \"wall_ns\": %llu, \"p50_ns\": %llu, \"p99_ns\": %llu}\n",
           mode, (unsigned long long)rounds, (unsigned long long)wall,
           (unsigned long long)lat[rounds / 2], (unsigned long long)lat[(rounds * 99) / 100]);
    sem_destroy(&sh->ping_sem);
    sem_destroy(&sh->pong_sem);
    munmap(sh, sizeof *sh);
    free(lat);
    return 0;
}
