/*
 * Host side of the data plane: submit calls into a worker's segment and wait
 * for the answers, in one C call that runs without the GIL.
 *
 * The segment layout and the hand-off protocol are in worker/channel.h. This
 * file adds the host-private connection state that a hostile worker cannot
 * touch: the ticket counter, the free-slot bitmap, the in-flight count used
 * to drain, the arena lock, and the DEAD flag the liveness monitor raises.
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

/* Longest single sleep on a word the worker can write to: every blocked
 * waiter re-checks the host-private state this often. */
#define SLICE_NS 50000000ull
#define BITMAP_WORDS (PP_MAX_SLOTS / 64)

struct pp_conn {
    uint8_t *base;
    size_t size;
    pp_header *hdr;
    uint32_t nslots;
    uint64_t payload_cap;
    uint64_t arena_cap;
    int wait_mode;
    uint64_t spin_ns;
    alignas(PP_CACHE_LINE) _Atomic uint64_t tickets;
    alignas(PP_CACHE_LINE) _Atomic uint64_t free_slots[BITMAP_WORDS];
    _Atomic uint32_t slot_waiters;
    sem_t slot_freed;
    alignas(PP_CACHE_LINE) _Atomic uint32_t state;
    _Atomic int64_t inflight;
    sem_t drained; /* posted when the last call leaves a non-READY conn */
    pthread_mutex_t arena_lock;
    _Atomic uint64_t calls;
    _Atomic uint64_t failures;
    uint32_t *answers; /* per slot: answers taken, to hold against the slot's own count */
    uint64_t owner;    /* who answers this worker's calls back (pp_on_callback) */
};

/* The conns whose workers wait on this thread for the answer to a call back:
 * a call into one of them would wait for itself. */
#define WAITING_MAX 64
static _Thread_local pp_conn *waiting_on[WAITING_MAX];
static _Thread_local int waiting_depth;

/* Why the calling thread's last call failed (read by Python on failure only). */
static _Thread_local pp_result last_result;

pp_result *pp_last_result(void) { return &last_result; }

size_t pp_segment_bytes(uint32_t nslots, uint64_t payload_cap, uint64_t arena_cap)
{
    return pp_segment_size(nslots, payload_cap, arena_cap);
}

static void init_segment(pp_conn *c)
{
    pp_header *h = c->hdr;
    memset(h, 0, sizeof *h);
    h->magic = PP_MAGIC;
    h->protocol_version = PP_PROTOCOL_VERSION;
    h->nslots = c->nslots;
    h->payload_cap = c->payload_cap;
    h->arena_cap = c->arena_cap;
    h->worker_cpu = h->host_cpu = UINT32_MAX;
}

pp_conn *pp_conn_create(int fd, uint32_t nslots, uint64_t payload_cap, uint64_t arena_cap, int wait_mode,
                        uint64_t spin_ns)
{
    if (nslots == 0 || nslots > PP_MAX_SLOTS || payload_cap > UINT32_MAX || arena_cap > UINT32_MAX) {
        errno = EINVAL;
        return NULL;
    }
    size_t size = pp_segment_size(nslots, payload_cap, arena_cap);
    if (ftruncate(fd, (off_t)size) != 0)
        return NULL;
    void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED)
        return NULL;
    pp_conn *c;
    if (posix_memalign((void **)&c, PP_CACHE_LINE, sizeof *c) != 0) {
        munmap(base, size);
        errno = ENOMEM;
        return NULL;
    }
    memset(c, 0, sizeof *c);
    c->base = base;
    c->size = size;
    c->hdr = base;
    c->nslots = nslots;
    c->payload_cap = payload_cap;
    c->arena_cap = arena_cap;
    c->wait_mode = wait_mode;
    c->spin_ns = spin_ns;
    for (uint32_t i = 0; i < nslots; i++)
        c->free_slots[i / 64] |= 1ull << (i % 64);
    c->answers = calloc(nslots, sizeof *c->answers);
    if (!c->answers) {
        munmap(base, size);
        free(c);
        errno = ENOMEM;
        return NULL;
    }
    sem_init(&c->slot_freed, 0, 0);
    sem_init(&c->drained, 0, 0);
    pthread_mutex_init(&c->arena_lock, NULL);
    init_segment(c);
    return c;
}

/* Only called by the cdata finaliser, i.e. when no thread can be inside a
 * call any more: every caller holds a reference to the conn. */
void pp_conn_destroy(pp_conn *c)
{
    munmap(c->base, c->size);
    sem_destroy(&c->slot_freed);
    sem_destroy(&c->drained);
    pthread_mutex_destroy(&c->arena_lock);
    free(c->answers);
    free(c);
}

void pp_conn_set_owner(pp_conn *c, uint64_t owner) { c->owner = owner; }

int64_t pp_conn_inflight(pp_conn *c) { return atomic_load(&c->inflight); }

uint64_t pp_conn_calls(pp_conn *c) { return atomic_load(&c->calls); }

uint64_t pp_conn_failures(pp_conn *c) { return atomic_load(&c->failures); }

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

/* Wakes every caller of a worker that is gone: blocked callers return at
 * once; callers that miss the wake-up see the state within one SLICE_NS. */
void pp_conn_mark_dead(pp_conn *c)
{
    atomic_store(&c->state, PP_CONN_DEAD);
    for (uint32_t i = 0; i < c->nslots; i++) {
        pp_slot *s = pp_slot_at(c->base, c->nslots, c->payload_cap, i);
        /* A waiter between its last state check and its futex_wait(1) would
         * miss a bare wake-up and sleep a whole slice: the changed word makes
         * that futex_wait return at once. */
        atomic_store(&s->host_waiting, 2);
        pp_futex_wake(&s->host_waiting, INT32_MAX);
        sem_post(&c->slot_freed);
    }
    sem_post(&c->drained);
}

static uint64_t min_u64(uint64_t a, uint64_t b) { return a < b ? a : b; }

/* Records why the worker's answer cannot be trusted (for ProtocolError). */
static int violation(const char *why)
{
    size_t n = strlen(why);
    memcpy(last_result.err_msg, why, n);
    last_result.err_len = (uint32_t)n;
    last_result.err_code = 0;
    return PP_CALL_PROTOCOL;
}

static int take_free_bit(pp_conn *c)
{
    for (uint32_t w = 0; w < (c->nslots + 63) / 64; w++) {
        uint64_t bits = atomic_load_explicit(&c->free_slots[w], memory_order_relaxed);
        while (bits) {
            int bit = __builtin_ctzll(bits);
            if (atomic_compare_exchange_weak(&c->free_slots[w], &bits, bits & ~(1ull << bit)))
                return (int)(w * 64 + (uint32_t)bit);
        }
    }
    return -1;
}

/* Returns a slot number, or -PP_CALL_TIMEOUT / -PP_CALL_DEAD. */
static int take_slot(pp_conn *c, uint64_t deadline)
{
    for (;;) {
        int idx = take_free_bit(c);
        if (idx >= 0)
            return idx;
        if (atomic_load(&c->state) == PP_CONN_DEAD)
            return -PP_CALL_DEAD;
        uint64_t now = pp_now_ns();
        if (now >= deadline)
            return -PP_CALL_TIMEOUT;
        /* Dekker with give_slot: announce, re-check, then sleep. */
        atomic_fetch_add(&c->slot_waiters, 1);
        idx = take_free_bit(c);
        if (idx < 0)
            pp_sem_wait_until(&c->slot_freed, min_u64(deadline, now + SLICE_NS));
        atomic_fetch_sub(&c->slot_waiters, 1);
        if (idx >= 0)
            return idx;
    }
}

static void give_slot(pp_conn *c, uint32_t idx)
{
    atomic_fetch_or(&c->free_slots[idx / 64], 1ull << (idx % 64));
    if (atomic_load(&c->slot_waiters))
        sem_post(&c->slot_freed);
}

static int lock_arena(pp_conn *c, uint64_t deadline)
{
    for (;;) {
        if (atomic_load(&c->state) == PP_CONN_DEAD)
            return PP_CALL_DEAD;
        uint64_t now = pp_now_ns();
        if (now >= deadline)
            return PP_CALL_TIMEOUT;
        uint64_t until = min_u64(deadline, now + SLICE_NS);
        struct timespec ts = {(time_t)(until / 1000000000u), (long)(until % 1000000000u)};
        if (pthread_mutex_clocklock(&c->arena_lock, CLOCK_MONOTONIC, &ts) == 0)
            return PP_CALL_OK;
    }
}

static void wake_worker(pp_header *h)
{
    /* Dekker with the worker's "set sleeping, re-check the ring". */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&h->worker_sleeping, memory_order_relaxed) && atomic_exchange(&h->worker_sleeping, 0))
        pp_futex_wake(&h->worker_sleeping, 1);
}

/* The header is written once, by us: a worker that changed it is
 * scribbling over the segment, and no answer from it can be trusted. */
static int segment_scribbled(pp_conn *c)
{
    const volatile pp_header *h = c->hdr;
    return h->magic != PP_MAGIC || h->protocol_version != PP_PROTOCOL_VERSION || h->nslots != c->nslots;
}

static int stray_answer(pp_conn *c)
{
    return violation(segment_scribbled(c) ? "the worker overwrote the segment header"
                                          : "the worker answered a call twice (or wrote into a waiting slot)");
}

/* The worker asked for something while serving this call (worker/callback.h):
 * answer it on this thread, the one the plugin's call came from, then wake
 * the worker. The request is read once, bounds-checked, by the handler. */
static int call_back(pp_conn *c, pp_slot *s, uint64_t asked)
{
    uint32_t len = *(volatile uint32_t *)&s->cb_len;
    if (len > PP_CB_CAP)
        return violation("the worker's call-back request is longer than the call-back area");
    int pushed = waiting_depth < WAITING_MAX;
    if (pushed)
        waiting_on[waiting_depth++] = c;
    int64_t reply = pp_on_callback(c->owner, s->cb, len, PP_CB_CAP);
    if (pushed)
        waiting_depth--;
    s->cb_len = reply > 0 && reply <= PP_CB_CAP ? (uint32_t)reply : 0;
    atomic_store_explicit(&s->cb_done, asked, memory_order_release);
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&s->worker_waiting, memory_order_relaxed) && atomic_exchange(&s->worker_waiting, 0))
        pp_futex_wake(&s->worker_waiting, 1);
    return PP_CALL_OK;
}

/* A call back waits on this slot: its sequence number, else 0. */
static inline uint64_t asked(pp_slot *s)
{
    uint64_t seq = atomic_load_explicit(&s->cb_seq, memory_order_acquire);
    return seq != atomic_load_explicit(&s->cb_done, memory_order_relaxed) ? seq : 0;
}

static int await_answer(pp_conn *c, pp_slot *s, uint64_t seq, uint64_t deadline)
{
    uint64_t now = pp_now_ns();
    uint64_t spin_until = c->wait_mode == PP_WAIT_SPIN    ? UINT64_MAX
                          : c->wait_mode == PP_WAIT_BLOCK ? now
                                                          : now + c->spin_ns;
    unsigned first = pp_same_cpu(&c->hdr->host_cpu, &c->hdr->worker_cpu) ? PP_PAUSE_SPINS : 1;
    for (unsigned i = first; c->wait_mode != PP_WAIT_BLOCK; i++) {
        uint64_t done = atomic_load_explicit(&s->done_seq, memory_order_acquire);
        if (done == seq)
            return PP_CALL_OK;
        /* The worker serves in ticket order: while this call waits, the only
         * value it may write here is seq. Anything else is a second answer to
         * an earlier call on this slot, or scribbling. */
        if (done != 0)
            return stray_answer(c);
        uint64_t request = asked(s);
        if (request) {
            int rc = call_back(c, s, request);
            if (rc != PP_CALL_OK)
                return rc;
            i = first; /* the answer follows soon: spin again */
            now = pp_now_ns();
            spin_until = c->wait_mode == PP_WAIT_SPIN ? UINT64_MAX : c->wait_mode == PP_WAIT_BLOCK ? now : now + c->spin_ns;
            continue;
        }
        if ((i & 127) == 0) {
            now = pp_now_ns();
            if (atomic_load_explicit(&c->state, memory_order_relaxed) == PP_CONN_DEAD)
                return PP_CALL_DEAD;
            if (segment_scribbled(c))
                return violation("the worker overwrote the segment header");
            if (now >= deadline)
                return PP_CALL_TIMEOUT;
            if (now >= spin_until)
                break;
        }
        pp_spin_step(i);
    }
    for (;;) {
        atomic_store(&s->host_waiting, 1);
        uint64_t done = atomic_load(&s->done_seq);
        if (done == seq) {
            atomic_store(&s->host_waiting, 0);
            return PP_CALL_OK;
        }
        if (done != 0)
            return stray_answer(c);
        uint64_t request = asked(s);
        if (request) {
            atomic_store(&s->host_waiting, 0);
            int rc = call_back(c, s, request);
            if (rc != PP_CALL_OK)
                return rc;
            continue;
        }
        if (atomic_load(&c->state) == PP_CONN_DEAD)
            return PP_CALL_DEAD;
        if (segment_scribbled(c))
            return violation("the worker overwrote the segment header");
        now = pp_now_ns();
        if (now >= deadline)
            return PP_CALL_TIMEOUT;
        pp_futex_wait_until(&s->host_waiting, 1, min_u64(deadline, now + SLICE_NS));
    }
}

/* Takes the answer's status out of the slot. Every field the worker wrote is
 * read once (volatile) and bounds-checked: it may change under our feet. */
static int read_status(pp_slot *s, uint32_t count)
{
    uint32_t status = *(volatile uint32_t *)&s->status;
    uint32_t code = *(volatile uint32_t *)&s->err_code;
    uint32_t len = *(volatile uint32_t *)&s->err_len;
    uint32_t done = *(volatile uint32_t *)&s->done_count;
    pp_result *res = &last_result;
    if (len > PP_ERR_CAP || done > count || (status != PP_STATUS_OK && status != PP_STATUS_BAD_REQUEST) ||
        (status == PP_STATUS_OK && code == 0 && done != count)) {
        res->done_count = 0;
        return violation("the worker's answer has fields out of range (status, message length or count)");
    }
    res->err_code = code;
    res->err_len = len;
    res->done_count = done;
    if (code != 0 || status != PP_STATUS_OK)
        memcpy(res->err_msg, s->err_msg, len);
    if (status == PP_STATUS_BAD_REQUEST)
        return PP_CALL_REFUSED;
    return code != 0 ? PP_CALL_PLUGIN_ERROR : PP_CALL_OK;
}

static uint64_t deadline_of(double timeout_s)
{
    return timeout_s < 0 ? UINT64_MAX : pp_now_ns() + (uint64_t)(timeout_s * 1e9);
}

/* What a plain call does not need: an instance, pointer fixups, a return area. */
typedef struct pp_extra {
    uint32_t instance;
    const pp_fixup *fixups;
    uint32_t nfixups;
    uint8_t *ret;
    uint32_t ret_cap;
} pp_extra;

static const pp_extra PLAIN = {0, NULL, 0, NULL, 0};

/* The whole call: slot, request, wait, answer. `out` receives count *
 * out_size bytes when the call succeeds (and the completed prefix of a batch
 * when it fails). */
static int run(pp_conn *c, uint32_t contract, uint32_t function, const uint8_t *args, uint64_t args_len,
               uint32_t count, uint8_t *out, uint64_t out_size, const pp_extra *x, double timeout_s)
{
    last_result.done_count = 0;
    last_result.err_len = 0;
    last_result.ret_len = 0;
    /* The host appends one PP_FIX_RETURN_CAP entry to a caller's fixups. */
    uint32_t table = x->nfixups ? x->nfixups + 1 : 0;
    if (count == 0 || args_len > UINT32_MAX || out_size > UINT32_MAX || table > UINT16_MAX ||
        (table && count != 1))
        return PP_CALL_TOO_LARGE;
    pp_layout layout = pp_layout_of(count, args_len, out_size, table);
    uint64_t need = layout.spill_bytes + (table ? x->ret_cap : 0);
    int spill = need <= c->payload_cap ? PP_IN_SLOT : PP_IN_ARENA;
    if (spill == PP_IN_ARENA && need > c->arena_cap)
        return PP_CALL_TOO_LARGE;

    for (int i = 0; i < waiting_depth; i++)
        if (waiting_on[i] == c)
            return PP_CALL_REENTRANT;
    int rc;
    atomic_fetch_add(&c->inflight, 1);
    if (atomic_load(&c->state) != PP_CONN_READY) {
        rc = PP_CALL_UNAVAILABLE; /* draining or gone: nothing was sent, so a caller may go elsewhere */
        goto leave;
    }
    uint64_t deadline = deadline_of(timeout_s);
    if (spill == PP_IN_ARENA && (rc = lock_arena(c, deadline)) != PP_CALL_OK)
        goto leave;
    int idx = take_slot(c, deadline);
    if (idx < 0) {
        rc = -idx;
        goto unlock;
    }
    pp_slot *s = pp_slot_at(c->base, c->nslots, c->payload_cap, (uint32_t)idx);
    /* We zero done_seq when we take an answer, and count the answers: anything
     * else here is the worker answering a call twice, or scribbling. */
    if (atomic_load_explicit(&s->done_seq, memory_order_relaxed) != 0 ||
        *(volatile uint32_t *)&s->answers != c->answers[idx]) {
        rc = violation("the worker answered a call twice (or wrote into an idle slot)");
        goto unlock;
    }
    uint8_t *region = spill == PP_IN_ARENA ? c->base + pp_arena_offset(c->nslots, c->payload_cap) : pp_payload(s);
    uint64_t ticket = atomic_fetch_add(&c->tickets, 1);
    pp_request *r = &pp_ring(c->base)[ticket % c->nslots];
    r->slot = (uint32_t)idx;
    r->contract = contract;
    r->function = function;
    r->count = count;
    r->args_len = (uint32_t)args_len;
    r->out_size = (uint32_t)out_size;
    r->instance = x->instance;
    r->fixups = (uint16_t)table;
    r->spill = (uint8_t)spill;
    if (args_len)
        memcpy(layout.args_inline ? r->args : region, args, (size_t)(args_len * count));
    if (table) {
        pp_fixup *fix = (pp_fixup *)(region + layout.fixup_offset);
        memcpy(fix, x->fixups, x->nfixups * sizeof *fix);
        fix[x->nfixups] = (pp_fixup){x->ret_cap, PP_FIX_RETURN_CAP};
    }
    atomic_store_explicit(&r->seq, ticket + 1, memory_order_release);
    wake_worker(c->hdr);

    rc = await_answer(c, s, ticket + 1, deadline);
    if (rc == PP_CALL_OK && *(volatile uint32_t *)&s->answers != c->answers[idx] + 1)
        rc = violation("the slot's answer count does not match: an answer was forged or repeated");
    if (rc == PP_CALL_OK) {
        c->answers[idx]++;
        rc = read_status(s, count);
        uint64_t done = last_result.done_count;
        if (rc == PP_CALL_OK || rc == PP_CALL_PLUGIN_ERROR) {
            const uint8_t *from = layout.out_inline ? s->out : region + layout.out_offset;
            if (done && out_size)
                memcpy(out, from, (size_t)(done * out_size));
        }
        if (rc == PP_CALL_OK && table) {
            uint32_t ret_len = *(volatile uint32_t *)&s->ret_len;
            if (ret_len > x->ret_cap)
                rc = violation("the worker's return area length is out of range");
            else
                memcpy(x->ret, region + layout.spill_bytes, ret_len);
            last_result.ret_len = ret_len;
        }
        atomic_store_explicit(&s->done_seq, 0, memory_order_relaxed);
        give_slot(c, (uint32_t)idx);
    }
    /* After a timeout or a death the slot stays taken: the worker that might
     * still write into it is being killed and the conn is never reused. */
unlock:
    if (spill == PP_IN_ARENA)
        pthread_mutex_unlock(&c->arena_lock);
leave:
    atomic_fetch_add_explicit(&c->calls, count, memory_order_relaxed);
    if (rc != PP_CALL_OK)
        atomic_fetch_add_explicit(&c->failures, 1, memory_order_relaxed);
    if (atomic_fetch_sub(&c->inflight, 1) == 1 && atomic_load(&c->state) != PP_CONN_READY)
        sem_post(&c->drained);
    return rc;
}

int pp_call(pp_conn *c, uint32_t contract, uint32_t function, const uint8_t *args, size_t args_len, uint8_t *out,
            size_t out_size, double timeout_s)
{
    return run(c, contract, function, args, args_len, 1, out, out_size, &PLAIN, timeout_s);
}

int pp_call_ex(pp_conn *c, uint32_t contract, uint32_t function, uint32_t instance, const uint8_t *args,
               size_t args_len, const pp_fixup *fixups, uint32_t nfixups, uint8_t *out, size_t out_size,
               uint8_t *ret, size_t ret_cap, double timeout_s)
{
    if (ret_cap > UINT32_MAX)
        return PP_CALL_TOO_LARGE;
    pp_extra x = {instance, fixups, nfixups, ret, (uint32_t)ret_cap};
    return run(c, contract, function, args, args_len, 1, out, out_size, &x, timeout_s);
}

int64_t pp_call_small(pp_conn *c, uint32_t contract, uint32_t function, const uint8_t *args, size_t args_len,
                      size_t out_size, double timeout_s)
{
    uint8_t out[8] = {0};
    if (out_size > 7)
        return -PP_CALL_TOO_LARGE;
    int rc = run(c, contract, function, args, args_len, 1, out, out_size, &PLAIN, timeout_s);
    if (rc != PP_CALL_OK)
        return -rc;
    uint64_t value = 0;
    for (size_t i = out_size; i-- > 0;)
        value = value << 8 | out[i];
    return (int64_t)value;
}

int pp_call_batch(pp_conn *c, uint32_t contract, uint32_t function, const uint8_t *args, size_t args_len,
                  size_t count, uint8_t *out, size_t out_size, double timeout_s)
{
    if (count > UINT32_MAX)
        return PP_CALL_TOO_LARGE;
    return run(c, contract, function, args, args_len, (uint32_t)count, out, out_size, &PLAIN, timeout_s);
}

_Static_assert(sizeof(((pp_result *)0)->err_msg) == PP_ERR_CAP, "pp_result carries a whole message");
