/*
 * Host side of the data plane: submit a call into a worker's segment and wait
 * for its answer, in one C call that runs without the GIL.
 *
 * The segment layout and the hand-off protocol are in worker/channel.h. This
 * file adds the host-private connection state that a hostile worker cannot
 * touch: the free-slot list, the per-slot sequence numbers, the in-flight
 * count used to drain, and the DEAD flag the liveness monitor raises.
 */
#define _GNU_SOURCE
#include "channel.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "_channel.h"

/* Longest single sleep on a semaphore that lives in shared memory: a worker
 * may scribble over it, so every blocked waiter re-checks the host-private
 * state at least this often. */
#define SLICE_NS 50000000ull

struct pp_conn {
    uint8_t *base;
    size_t size;
    pp_header *hdr;
    uint32_t nslots;
    uint64_t payload_cap;
    int wait_mode;
    uint64_t spin_ns;
    _Atomic uint32_t state;
    _Atomic int64_t inflight;
    sem_t drained;          /* posted when the last call leaves a non-READY conn */
    sem_t free_slots;       /* counts the entries of free_stack */
    pthread_mutex_t free_lock;
    uint32_t free_top;
    uint32_t *free_stack;
    uint64_t *slot_seq;     /* last sequence number issued per slot */
};

size_t pp_segment_bytes(uint32_t nslots, uint64_t payload_cap)
{
    return pp_segment_size(nslots, payload_cap);
}

static void init_segment(pp_conn *c)
{
    pp_header *h = c->hdr;
    memset(h, 0, sizeof *h);
    h->magic = PP_MAGIC;
    h->protocol_version = PP_PROTOCOL_VERSION;
    h->nslots = c->nslots;
    h->payload_cap = c->payload_cap;
    h->slot_stride = pp_slot_stride(c->payload_cap);
    sem_init(&h->request_sem, 1, 0);
    for (uint32_t i = 0; i < c->nslots; i++) {
        pp_slot *s = pp_slot_at(c->base, c->nslots, c->payload_cap, i);
        memset(s, 0, sizeof *s);
        sem_init(&s->response_sem, 1, 0);
    }
}

pp_conn *pp_conn_create(int fd, uint32_t nslots, uint64_t payload_cap, int wait_mode, uint64_t spin_ns)
{
    if (nslots == 0 || payload_cap == 0) {
        errno = EINVAL;
        return NULL;
    }
    size_t size = pp_segment_size(nslots, payload_cap);
    if (ftruncate(fd, (off_t)size) != 0)
        return NULL;
    void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED)
        return NULL;
    pp_conn *c = calloc(1, sizeof *c);
    uint32_t *stack = calloc(nslots, sizeof *stack);
    uint64_t *seqs = calloc(nslots, sizeof *seqs);
    if (!c || !stack || !seqs) {
        free(c);
        free(stack);
        free(seqs);
        munmap(base, size);
        errno = ENOMEM;
        return NULL;
    }
    c->base = base;
    c->size = size;
    c->hdr = base;
    c->nslots = nslots;
    c->payload_cap = payload_cap;
    c->wait_mode = wait_mode;
    c->spin_ns = spin_ns;
    c->free_stack = stack;
    c->slot_seq = seqs;
    for (uint32_t i = 0; i < nslots; i++)
        stack[i] = nslots - 1 - i;
    c->free_top = nslots;
    sem_init(&c->free_slots, 0, nslots);
    sem_init(&c->drained, 0, 0);
    pthread_mutex_init(&c->free_lock, NULL);
    init_segment(c);
    return c;
}

/* Only called by the cdata finaliser, i.e. when no thread can be inside
 * pp_call any more: every caller holds a reference to the conn. */
void pp_conn_destroy(pp_conn *c)
{
    munmap(c->base, c->size);
    sem_destroy(&c->free_slots);
    sem_destroy(&c->drained);
    pthread_mutex_destroy(&c->free_lock);
    free(c->free_stack);
    free(c->slot_seq);
    free(c);
}

int64_t pp_conn_inflight(pp_conn *c) { return atomic_load(&c->inflight); }

uint32_t pp_conn_state(pp_conn *c) { return atomic_load(&c->state); }

void pp_conn_set_draining(pp_conn *c)
{
    uint32_t ready = PP_CONN_READY;
    atomic_compare_exchange_strong(&c->state, &ready, PP_CONN_DRAINING);
}

int pp_conn_wait_drained(pp_conn *c, double timeout_s)
{
    uint64_t deadline = pp_now_ns() + (uint64_t)(timeout_s * 1e9);
    while (atomic_load(&c->inflight) != 0) {
        if (pp_now_ns() >= deadline)
            return 0;
        pp_sem_wait_until(&c->drained, deadline);
    }
    return 1;
}

/* Wakes every caller of a worker that is gone. The slots' semaphores are
 * posted once each so callers blocked on them return promptly; callers that
 * miss the post see the state within one SLICE_NS. */
void pp_conn_mark_dead(pp_conn *c)
{
    atomic_store(&c->state, PP_CONN_DEAD);
    for (uint32_t i = 0; i < c->nslots; i++) {
        sem_post(&pp_slot_at(c->base, c->nslots, c->payload_cap, i)->response_sem);
        sem_post(&c->free_slots);
    }
    sem_post(&c->drained);
}

static uint64_t min_u64(uint64_t a, uint64_t b) { return a < b ? a : b; }

/* Returns a slot number, or -PP_CALL_TIMEOUT / -PP_CALL_DEAD. */
static int take_slot(pp_conn *c, uint64_t deadline)
{
    for (;;) {
        int acquired = sem_trywait(&c->free_slots) == 0;
        if (!acquired) {
            uint64_t now = pp_now_ns();
            if (now >= deadline)
                return -PP_CALL_TIMEOUT;
            acquired = pp_sem_wait_until(&c->free_slots, min_u64(deadline, now + SLICE_NS));
        }
        /* mark_dead posts free_slots to wake us: after a death a count no
         * longer stands for a free slot, so the state decides first. */
        if (atomic_load(&c->state) == PP_CONN_DEAD)
            return -PP_CALL_DEAD;
        if (acquired)
            break;
    }
    pthread_mutex_lock(&c->free_lock);
    int idx = (int)c->free_stack[--c->free_top];
    pthread_mutex_unlock(&c->free_lock);
    return idx;
}

static void give_slot(pp_conn *c, uint32_t idx)
{
    pthread_mutex_lock(&c->free_lock);
    c->free_stack[c->free_top++] = idx;
    pthread_mutex_unlock(&c->free_lock);
    sem_post(&c->free_slots);
}

static void submit(pp_conn *c, uint32_t idx)
{
    pp_header *h = c->hdr;
    /* The ticket is a full barrier (lock xadd); the tail value itself is
     * untrusted, but ticket % nslots always stays inside the ring. */
    uint64_t ticket = atomic_fetch_add(&h->ring_tail, 1);
    pp_ring_entry *e = &pp_ring(c->base)[ticket % c->nslots];
    e->slot = idx;
    atomic_store_explicit(&e->seq, ticket + 1, memory_order_release);
    /* Dekker with the worker's "set sleeping, re-check ring": one of the two
     * sequentially consistent operations must see the other. */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&h->worker_sleeping, memory_order_relaxed) &&
        atomic_exchange(&h->worker_sleeping, 0))
        sem_post(&h->request_sem);
}

static int await_answer(pp_conn *c, pp_slot *s, uint64_t seq, uint64_t deadline)
{
    uint64_t now = pp_now_ns();
    uint64_t spin_until = c->wait_mode == PP_WAIT_SPIN    ? UINT64_MAX
                          : c->wait_mode == PP_WAIT_BLOCK ? now
                                                          : now + c->spin_ns;
    for (unsigned i = 1;; i++) {
        if (atomic_load_explicit(&s->done_seq, memory_order_acquire) == seq)
            return PP_CALL_OK;
        if ((i & 127) == 0) {
            now = pp_now_ns();
            if (atomic_load_explicit(&c->state, memory_order_relaxed) == PP_CONN_DEAD)
                return PP_CALL_DEAD;
            if (now >= deadline)
                return PP_CALL_TIMEOUT;
            if (now >= spin_until)
                break;
        }
        pp_spin_step(i);
    }
    for (;;) {
        atomic_store(&s->host_waiting, 1);
        if (atomic_load(&s->done_seq) == seq) {
            atomic_store(&s->host_waiting, 0);
            return PP_CALL_OK;
        }
        if (atomic_load(&c->state) == PP_CONN_DEAD)
            return PP_CALL_DEAD;
        now = pp_now_ns();
        if (now >= deadline)
            return PP_CALL_TIMEOUT;
        pp_sem_wait_until(&s->response_sem, min_u64(deadline, now + SLICE_NS));
    }
}

/* Copies the answer out of the slot. Every field is read once (volatile) and
 * bounds-checked: the worker may change it under our feet. */
static int read_answer(pp_slot *s, uint8_t *out, size_t out_size, size_t out_off, pp_result *res)
{
    uint32_t status = *(volatile uint32_t *)&s->status;
    uint32_t code = *(volatile uint32_t *)&s->err_code;
    uint32_t len = *(volatile uint32_t *)&s->err_len;
    if (len > PP_ERR_CAP || (status != PP_STATUS_OK && status != PP_STATUS_BAD_REQUEST)) {
        res->err_code = status;
        res->err_len = 0;
        return PP_CALL_PROTOCOL;
    }
    res->err_code = code;
    res->err_len = len;
    memcpy(res->err_msg, s->err_msg, len);
    if (status == PP_STATUS_BAD_REQUEST)
        return PP_CALL_REFUSED;
    if (code != 0)
        return PP_CALL_PLUGIN_ERROR;
    if (out_size)
        memcpy(out, pp_payload(s) + out_off, out_size);
    return PP_CALL_OK;
}

int pp_call(pp_conn *c, uint32_t contract, uint32_t function, const uint8_t *args, size_t args_len,
            uint8_t *out, size_t out_size, double timeout_s, pp_result *res)
{
    size_t out_off = PP_ALIGN8(args_len);
    if (args_len > c->payload_cap || out_size > c->payload_cap || out_off + out_size > c->payload_cap)
        return PP_CALL_TOO_LARGE;
    int rc;
    atomic_fetch_add(&c->inflight, 1);
    uint32_t state = atomic_load(&c->state);
    if (state != PP_CONN_READY) {
        rc = state == PP_CONN_DEAD ? PP_CALL_DEAD : PP_CALL_UNAVAILABLE;
        goto leave;
    }
    uint64_t deadline = timeout_s < 0 ? UINT64_MAX : pp_now_ns() + (uint64_t)(timeout_s * 1e9);
    int idx = take_slot(c, deadline);
    if (idx < 0) {
        rc = -idx;
        goto leave;
    }
    pp_slot *s = pp_slot_at(c->base, c->nslots, c->payload_cap, (uint32_t)idx);
    s->contract = contract;
    s->function = function;
    s->instance = 0;
    s->args_len = args_len;
    s->out_size = out_size;
    if (args_len)
        memcpy(pp_payload(s), args, args_len);
    uint64_t seq = ++c->slot_seq[idx];
    atomic_store_explicit(&s->req_seq, seq, memory_order_release);
    submit(c, (uint32_t)idx);
    rc = await_answer(c, s, seq, deadline);
    if (rc == PP_CALL_OK) {
        rc = read_answer(s, out, out_size, out_off, res);
        give_slot(c, (uint32_t)idx);
    }
    /* After a timeout or a death the slot stays taken: the worker that might
     * still write into it is being killed and the conn is never reused. */
leave:
    if (atomic_fetch_sub(&c->inflight, 1) == 1 && atomic_load(&c->state) != PP_CONN_READY)
        sem_post(&c->drained);
    return rc;
}

_Static_assert(sizeof(((pp_result *)0)->err_msg) == PP_ERR_CAP, "pp_result carries a whole message");
