/*
 * The host-private state of a connection, shared by _channel.c (calls) and
 * _leases.c (who holds which slot). Not part of the cffi API (_channel.h).
 */
#ifndef PP_CONN_H
#define PP_CONN_H

#include <pthread.h>
#include <semaphore.h>

#include "_channel.h"
#include "channel.h"

/* Longest single sleep on a word the worker can write to: every blocked
 * waiter re-checks the host-private state this often. */
#define SLICE_NS 50000000ull
/* How long the main thread sleeps in a call before it returns to Python
 * (PP_CALL_PENDING) so that signal handlers (Ctrl-C) run. */
#define INTERRUPT_SLICE_NS 20000000ull
#define LEASE_BUSY (1ull << 63)
#define LEASE_ORPHAN (1ull << 62)
#define LEASE_SLOT(lease) ((uint32_t)((lease) & 0xFFFFu))

/* A call between submit and finish, kept here so that a waiter can return to
 * Python (PENDING) and resume, or give the call up, without losing it. */
typedef struct pp_pending {
    uint32_t count;
    uint32_t table;
    uint64_t out_size;
    uint8_t *out;
    uint8_t *ret;
    uint32_t ret_cap;
    int spill;
    int keep_arena; /* the caller holds the arena past the call (pp_arena_hold) */
    int near;       /* sent with PP_FLAG_NEAR: the worker thread comes to this CPU */
    pp_layout layout;
    uint64_t deadline;
} pp_pending;

/* Whose answer a buffers() block's out holds in the arena (see pp_arena_hold):
 * that lease's calls leave it as it is. */
typedef struct pp_kept {
    int64_t lease; /* 0: nobody's, the next block zeroes it */
    uint64_t args_len;
    uint64_t out_size;
} pp_kept;

typedef struct pp_hslot {
    alignas(PP_CACHE_LINE) _Atomic uint64_t lease;
    uint64_t seq;     /* down_seq of the last frame written */
    uint32_t answers; /* answers taken, to hold against the slot's own count */
    uint32_t gen;
    int threaded; /* a worker thread serves the slot (BIND sent, no RETIRE since) */
    int retiring; /* a RETIRE (frame `seq`) is unanswered */
    pp_pending call;
} pp_hslot;

struct pp_conn {
    uint8_t *base;
    size_t size;
    pp_header *hdr;
    uint32_t nslots;
    uint32_t max_threads;
    uint64_t payload_cap;
    uint64_t arena_cap;
    int wait_mode;
    uint64_t spin_ns;
    uint32_t idle_retire_ms;
    uint64_t serial; /* unique per conn: the key of the thread's lease cache */
    alignas(PP_CACHE_LINE) _Atomic uint64_t tickets; /* BIND ring */
    pthread_mutex_t lease_lock;
    uint32_t owned; /* slots leased or orphaned (under lease_lock) */
    uint32_t orphans;
    _Atomic uint32_t slot_waiters;
    sem_t slot_freed;
    alignas(PP_CACHE_LINE) _Atomic uint32_t state;
    _Atomic int64_t inflight;
    sem_t drained; /* posted when the last call leaves a non-READY conn */
    _Atomic uint32_t arena_owner; /* slot + 1 of the call holding the arena, or 0 */
    _Atomic uint32_t arena_waiters;
    sem_t arena_freed;
    uint64_t arena_faulted; /* arena bytes faulted in by pp_arena_hold (under the arena) */
    pp_kept kept;           /* (under the arena) */
    _Atomic uint64_t calls;
    _Atomic uint64_t failures;
    pp_hslot *slots;
    uint64_t owner; /* who answers this worker's calls back (pp_on_callback, _channel.c) */
};

static inline uint64_t ppc_min_u64(uint64_t a, uint64_t b) { return a < b ? a : b; }

static inline pp_slot *ppc_slot_at(pp_conn *c, uint32_t i) { return pp_slot_at(c->base, c->nslots, c->payload_cap, i); }

static inline void ppc_wake_peer(_Atomic uint32_t *flag)
{
    /* Dekker with the other side's "set the flag, re-check the sequence". */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(flag, memory_order_relaxed) && atomic_exchange(flag, 0))
        pp_futex_wake(flag, 1);
}

void ppc_bind(pp_conn *c, uint32_t i);

/* Writes the down frame's sequence number and wakes the slot's thread, or
 * has the worker start one when the slot's thread retired while idle. */
static inline void ppc_publish(pp_conn *c, uint32_t i)
{
    pp_slot *s = ppc_slot_at(c, i);
    atomic_store_explicit(&s->down_seq, ++c->slots[i].seq, memory_order_release);
    /* Dekker with the worker's "set the flag, re-check the sequence". */
    atomic_thread_fence(memory_order_seq_cst);
    uint32_t flag = atomic_load_explicit(&s->worker_waiting, memory_order_relaxed);
    if (flag && (flag = atomic_exchange(&s->worker_waiting, 0)) == PP_WORKER_RETIRED)
        ppc_bind(c, i);
    else if (flag)
        pp_futex_wake(&s->worker_waiting, 1);
}

static inline int ppc_lease_in_flight(pp_conn *c, int64_t lease)
{
    uint32_t i = LEASE_SLOT(lease);
    return lease > 0 && i < c->nslots && atomic_load(&c->slots[i].lease) == ((uint64_t)lease | LEASE_BUSY);
}

/* _channel.c */
int ppc_await_frame(pp_conn *c, pp_slot *s, uint64_t seq, uint64_t deadline, int may_pend);
/* The same, spinning `extra_spin_ns` past the conn's spin window (see pp_spin_for_bytes);
 * `near`: the worker thread runs the call on this CPU, so each step of the
 * spin yields the CPU to it. */
int ppc_await_frame_for(pp_conn *c, pp_slot *s, uint64_t seq, uint64_t deadline, int may_pend,
                        uint64_t extra_spin_ns, int near);
int ppc_violation(const char *why);
void ppc_release_arena(pp_conn *c, uint32_t slot);
void ppc_leave(pp_conn *c);

/* _leases.c */
void ppc_reap_orphans(pp_conn *c);
void ppc_announce_free(pp_conn *c);

#endif
