/*
 * Leases: which host thread (or async call) holds which slot, and with it
 * which worker thread serves it (see THREADS in worker/channel.h).
 *
 * Lease words: 0 free; L = gen << 16 | slot owned and idle; L | BUSY owned
 * with a frame in flight; ORPHAN | slot a call whose waiter gave up
 * (interrupted, cancelled, its thread gone) and whose answer is still due.
 * The owner moves L <-> L | BUSY with one CAS per call (_channel.c);
 * everything else (take, release, reap) happens here under lease_lock,
 * never while waiting on the worker.
 */
#define _GNU_SOURCE
#include "_conn.h"

#include <stdatomic.h>
#include <stdlib.h>

/* Takes the answers of orphaned calls that arrived: their slots become free
 * (their threads retire on the next take). Under lease_lock. */
void ppc_reap_orphans(pp_conn *c)
{
    if (!c->orphans)
        return;
    for (uint32_t i = 0; i < c->nslots; i++) {
        pp_hslot *hs = &c->slots[i];
        if (atomic_load(&hs->lease) != (LEASE_ORPHAN | i))
            continue;
        pp_slot *s = ppc_slot_at(c, i);
        if (atomic_load_explicit(&s->up_seq, memory_order_acquire) != hs->seq ||
            *(volatile uint16_t *)&s->up_kind != PP_UP_ANSWER)
            continue;
        hs->answers++;
        ppc_release_arena(c, i);
        c->orphans--;
        c->owned--;
        atomic_store(&hs->lease, 0);
        ppc_leave(c);
    }
}

/* ---- leases ---------------------------------------------------------------- */

/* A RETIRE on slot i (idle, threaded): its thread answers and exits. */
static void send_retire(pp_conn *c, uint32_t i)
{
    pp_hslot *hs = &c->slots[i];
    pp_slot *s = ppc_slot_at(c, i);
    s->kind = PP_DOWN_RETIRE;
    s->flags = 0;
    ppc_publish(c, i);
    hs->threaded = 0;
    hs->retiring = 1;
}

/* Readies a slot just claimed (lease word newL | BUSY) for its new owner:
 * the previous thread retired (its RETIRE answered), then BIND. */
static int prepare_slot(pp_conn *c, uint32_t i, uint64_t deadline)
{
    pp_hslot *hs = &c->slots[i];
    pp_slot *s = ppc_slot_at(c, i);
    if (hs->threaded)
        send_retire(c, i);
    if (hs->retiring) {
        int rc = ppc_await_frame(c, s, hs->seq, deadline, 0);
        if (rc != PP_CALL_OK)
            return rc;
        if (*(volatile uint32_t *)&s->answers != hs->answers + 1)
            return ppc_violation("the slot's answer count does not match: an answer was forged or repeated");
        hs->answers++;
        hs->retiring = 0;
    }
    ppc_bind(c, i);
    hs->threaded = 1;
    return PP_CALL_OK;
}

/* BIND(i) through the ring: the worker gives slot i a thread. At most one is
 * unconsumed per slot (a slot's next BIND follows its thread's RETIRE answer
 * or retirement, so its last BIND was taken), which keeps the ring from
 * overrunning: see the ticket argument in worker/channel.h. */
void ppc_bind(pp_conn *c, uint32_t i)
{
    uint64_t ticket = atomic_fetch_add(&c->tickets, 1);
    pp_bind *r = &pp_ring(c->base)[ticket % c->nslots];
    r->slot = i;
    atomic_store_explicit(&r->seq, ticket + 1, memory_order_release);
    ppc_wake_peer(&c->hdr->worker_sleeping);
}

/* Claims a slot for a new lease (under lease_lock): a free one while fewer
 * than max_threads are owned, else (may_take_over) an idle one taken over
 * from its owner. Returns the slot or -1. */
static int claim_slot(pp_conn *c, uint64_t *lease, int may_take_over)
{
    ppc_reap_orphans(c);
    int idle = -1;
    for (uint32_t i = 0; i < c->nslots; i++) {
        uint64_t word = atomic_load(&c->slots[i].lease);
        if (word == 0 && c->owned < c->max_threads) {
            uint32_t gen = ++c->slots[i].gen & 0xFFFFFFFu;
            if (gen == 0)
                gen = c->slots[i].gen = 1;
            *lease = (uint64_t)gen << 16 | i;
            if (atomic_compare_exchange_strong(&c->slots[i].lease, &word, *lease | LEASE_BUSY)) {
                c->owned++;
                return (int)i;
            }
        } else if (idle < 0 && word && !(word & (LEASE_BUSY | LEASE_ORPHAN))) {
            idle = (int)i;
        }
    }
    if (c->owned < c->max_threads || idle < 0 || !may_take_over)
        return -1;
    /* Past max_threads: take over an idle slot; its owner's next call finds
     * its lease gone and takes another (PP_CALL_LEASE_LOST). */
    for (uint32_t i = (uint32_t)idle; i < c->nslots; i++) {
        pp_hslot *hs = &c->slots[i];
        uint64_t word = atomic_load(&hs->lease);
        if (!word || (word & (LEASE_BUSY | LEASE_ORPHAN)))
            continue;
        uint32_t gen = ++hs->gen & 0xFFFFFFFu;
        if (gen == 0)
            gen = hs->gen = 1;
        *lease = (uint64_t)gen << 16 | i;
        if (atomic_compare_exchange_strong(&hs->lease, &word, *lease | LEASE_BUSY))
            return (int)i;
    }
    return -1;
}

int64_t pp_lease_take(pp_conn *c, double timeout_s, int may_take_over)
{
    uint64_t deadline = timeout_s < 0 ? UINT64_MAX : pp_now_ns() + (uint64_t)(timeout_s * 1e9);
    for (;;) {
        if (atomic_load(&c->state) == PP_CONN_DEAD)
            return -PP_CALL_DEAD;
        uint64_t lease = 0;
        /* Dekker with the slot givers: announce, claim, then sleep. */
        atomic_fetch_add(&c->slot_waiters, 1);
        pthread_mutex_lock(&c->lease_lock);
        int i = claim_slot(c, &lease, may_take_over);
        pthread_mutex_unlock(&c->lease_lock);
        if (i < 0) {
            uint64_t now = pp_now_ns();
            if (now < deadline)
                pp_sem_wait_until(&c->slot_freed, ppc_min_u64(deadline, now + SLICE_NS));
        }
        atomic_fetch_sub(&c->slot_waiters, 1);
        if (i >= 0) {
            int rc = prepare_slot(c, (uint32_t)i, deadline);
            if (rc != PP_CALL_OK)
                return -rc; /* the slot stays claimed: its worker is dying or broke the protocol */
            atomic_store(&c->slots[i].lease, lease);
            return (int64_t)lease;
        }
        if (pp_now_ns() >= deadline)
            return -PP_CALL_TIMEOUT;
    }
}

void ppc_announce_free(pp_conn *c)
{
    if (atomic_load(&c->slot_waiters))
        sem_post(&c->slot_freed);
}

void pp_lease_release(pp_conn *c, int64_t lease)
{
    uint32_t i = LEASE_SLOT(lease);
    if (lease <= 0 || i >= c->nslots || atomic_load(&c->state) == PP_CONN_DEAD)
        return;
    pp_hslot *hs = &c->slots[i];
    pthread_mutex_lock(&c->lease_lock);
    uint64_t word = (uint64_t)lease;
    if (atomic_compare_exchange_strong(&hs->lease, &word, (uint64_t)lease | LEASE_BUSY)) {
        send_retire(c, i); /* answered before the slot's next BIND (prepare_slot) */
        c->owned--;
        atomic_store(&hs->lease, 0);
    }
    pthread_mutex_unlock(&c->lease_lock);
    ppc_announce_free(c);
}

void pp_abandon(pp_conn *c, int64_t lease)
{
    if (!ppc_lease_in_flight(c, lease))
        return;
    uint32_t i = LEASE_SLOT(lease);
    pthread_mutex_lock(&c->lease_lock);
    uint64_t busy = (uint64_t)lease | LEASE_BUSY;
    if (atomic_compare_exchange_strong(&c->slots[i].lease, &busy, LEASE_ORPHAN | i))
        c->orphans++;
    ppc_reap_orphans(c);
    pthread_mutex_unlock(&c->lease_lock);
}
