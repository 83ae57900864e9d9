/*
 * Fault injection, executed in the worker around the real plugin.
 *
 * The host sends a plan (ppw_fault_spec[]); the serve loop asks
 * ppw_fault_before() before each call. Faults are tried in plan order; each
 * counts the calls that match its target, decides with its trigger (every
 * call, the n-th, every n-th, a seeded coin, after a time) and its budget
 * whether it fires, reports the firing to the host (a control frame sent
 * before the action, so even a crash is on record), then acts. Only the
 * serve thread runs calls, so the counters need no locks; a new plan is
 * published with one atomic pointer store, and old plans are kept until
 * unload because the serve thread may still be reading one.
 */
#define _GNU_SOURCE
#include "polyplug_abi.h"
#include "worker.h"

#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define ANY (-1)
#define UNRESOLVED (-2) /* a contract name, looked up at the first call (after init) */
#define NOWHERE (-3)    /* a name this bundle did not register: never matches */

typedef struct fault {
    ppw_fault_spec spec;
    int64_t contract; /* registry index, -1: any */
    uint64_t seen;    /* matching calls so far */
    uint64_t fired;
    uint64_t rng;
    uint64_t armed_ns; /* when the plan was installed */
} fault;

typedef struct plan {
    struct plan *older; /* kept until unload: the serve thread may be reading it */
    uint32_t n;
    fault faults[];
} plan;

static _Atomic(plan *) g_plan;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* xorshift64*: small, fast, and the same sequence for the same seed. */
static double next_unit(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return (double)((x * 0x2545F4914F6CDD1Dull) >> 11) / (double)(1ull << 53);
}

int ppw_faults_install(const ppw_fault_spec *specs, uint32_t n, int append)
{
    plan *old = atomic_load(&g_plan);
    uint32_t kept = append && old ? old->n : 0;
    plan *p = calloc(1, sizeof *p + (kept + n) * sizeof(fault));
    if (!p)
        return -1;
    p->n = kept + n;
    /* Faults already armed keep their counters: appending does not restart them. */
    if (kept)
        memcpy(p->faults, old->faults, kept * sizeof(fault));
    uint64_t now = now_ns();
    for (uint32_t i = 0; i < n; i++) {
        fault *f = &p->faults[kept + i];
        f->spec = specs[i];
        f->spec.contract[sizeof f->spec.contract - 1] = 0;
        f->spec.message[sizeof f->spec.message - 1] = 0;
        f->contract = f->spec.contract[0] ? UNRESOLVED : ANY;
        f->rng = f->spec.seed ? f->spec.seed : 0x9E3779B97F4A7C15ull;
        f->armed_ns = now;
    }
    p->older = old;
    atomic_store_explicit(&g_plan, p, memory_order_release);
    return 0;
}

void ppw_faults_release(void)
{
    plan *p = atomic_exchange(&g_plan, NULL);
    while (p) {
        plan *older = p->older;
        free(p);
        p = older;
    }
}

static int triggered(fault *f)
{
    const ppw_fault_spec *s = &f->spec;
    if (s->max_fires && f->fired >= s->max_fires)
        return 0;
    switch (s->trigger) {
    case PPW_TRIGGER_ALWAYS:
        return 1;
    case PPW_TRIGGER_NTH:
        return f->seen == s->n;
    case PPW_TRIGGER_EVERY:
        return s->n && f->seen % s->n == 0;
    case PPW_TRIGGER_PROBABILITY:
        return next_unit(&f->rng) < s->probability; /* drawn on every matching call */
    case PPW_TRIGGER_AFTER:
        return now_ns() - f->armed_ns >= (uint64_t)(s->after_s * 1e9);
    default:
        return 0;
    }
}

static void hang(void)
{
    for (;;)
        pause();
}

static void sleep_ms(int64_t ms)
{
    struct timespec left = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&left, &left) != 0) {
    }
}

static void leak_mib(int64_t mib)
{
    size_t bytes = (size_t)mib << 20;
    char *block = malloc(bytes);
    if (!block)
        abort(); /* the limit it was leaking towards */
    memset(block, 0xA5, bytes); /* touched, so it really counts */
}

/* Acts on what fires; returns what the serve loop does with the call. */
static int act(const fault *f, AbiError *err)
{
    const ppw_fault_spec *s = &f->spec;
    switch (s->action) {
    case PPW_FAULT_CRASH:
        raise((int)s->arg);
        hang(); /* a blocked or ignored signal: still never answer */
        return PPW_RUN;
    case PPW_FAULT_EXIT:
        _exit((int)s->arg);
    case PPW_FAULT_HANG:
        hang();
        return PPW_RUN;
    case PPW_FAULT_DELAY:
        sleep_ms(s->arg);
        return PPW_RUN;
    case PPW_FAULT_LEAK:
        leak_mib(s->arg);
        return PPW_RUN;
    case PPW_FAULT_CORRUPT:
        return PPW_RUN_CORRUPT;
    case PPW_FAULT_ERROR:
        err->code = (uint32_t)s->arg;
        err->message.ptr = (const uint8_t *)s->message;
        err->message.len = strlen(s->message);
        return PPW_SKIP;
    default:
        return PPW_RUN;
    }
}

int ppw_fault_before(int phase, uint32_t contract, uint32_t function, AbiError *err)
{
    plan *p = atomic_load_explicit(&g_plan, memory_order_acquire);
    int outcome = PPW_RUN;
    for (uint32_t i = 0; p && i < p->n && outcome != PPW_SKIP; i++) {
        fault *f = &p->faults[i];
        const ppw_fault_spec *s = &f->spec;
        if (s->phase != (uint32_t)phase)
            continue;
        if (phase == PPW_PHASE_CALL) {
            if (f->contract == UNRESOLVED) {
                int64_t index = ppw_contract_index(s->contract);
                f->contract = index < 0 ? NOWHERE : index;
            }
            if ((f->contract != ANY && f->contract != (int64_t)contract) ||
                (s->function >= 0 && s->function != (int64_t)function))
                continue;
        }
        f->seen++;
        if (!triggered(f))
            continue;
        f->fired++;
        ppw_send_fault_frame(s->id, f->seen, phase == PPW_PHASE_CALL ? (int64_t)contract : -1,
                             phase == PPW_PHASE_CALL ? (int64_t)function : -1);
        int done = act(f, err);
        if (done != PPW_RUN)
            outcome = done;
    }
    return outcome;
}

void ppw_fault_corrupt(uint8_t *out, uint64_t size)
{
    for (uint64_t i = 0; i < size; i++)
        out[i] ^= 0xFF;
}
