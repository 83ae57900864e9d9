/*
 * Host side of the data plane: submit calls into a worker's segment and
 * wait for the answers, in C calls that run without the GIL.
 *
 * The segment layout and the slot protocol are in worker/channel.h. This
 * file adds the host-private connection state that a hostile worker cannot
 * touch: per slot its lease word (who owns it, whether a frame is in flight),
 * its sequence numbers and answer count, the in-flight count used to drain,
 * the arena owner, and the DEAD flag the liveness monitor raises.
 *
 * Who holds which slot is _leases.c's business; the state both share is in
 * _conn.h.
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
#include "_conn.h"
#include "callback.h"


/* Per host thread: why its last call failed (read by Python on failure
 * only); the out of its last small call (kept here, not in the slot's
 * state, which the slot's next owner overwrites); and its leases of the last
 * few conns it called, so that the hot path finds its lease without Python. */
#define LEASE_CACHE 4
typedef struct pp_thread_state {
    pp_result result;
    uint8_t small_out[PP_FAST_OUT];
    struct {
        uint64_t conn_serial;
        int64_t lease;
    } leases[LEASE_CACHE];
    unsigned next_lease;
} pp_thread_state;

static _Thread_local pp_thread_state me;
static _Atomic uint64_t conn_serials;
#define last_result (me.result)
#define small_out (me.small_out)

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
    h->max_threads = c->max_threads;
    h->payload_cap = c->payload_cap;
    h->arena_cap = c->arena_cap;
    h->idle_retire_ms = c->idle_retire_ms;
    h->worker_cpu = h->host_cpu = UINT32_MAX;
}

pp_conn *pp_conn_create(int fd, uint32_t nslots, uint32_t max_threads, uint64_t payload_cap, uint64_t arena_cap,
                        int wait_mode, uint64_t spin_ns, uint32_t idle_retire_ms)
{
    if (nslots == 0 || nslots > PP_MAX_SLOTS || max_threads == 0 || max_threads > nslots ||
        payload_cap > UINT32_MAX || arena_cap > UINT32_MAX) {
        errno = EINVAL;
        return NULL;
    }
    size_t size = pp_segment_size(nslots, payload_cap, arena_cap);
    if (ftruncate(fd, (off_t)size) != 0)
        return NULL;
    void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED)
        return NULL;
    pp_conn *c = NULL;
    pp_hslot *slots = NULL;
    if (posix_memalign((void **)&c, PP_CACHE_LINE, sizeof *c) != 0 ||
        posix_memalign((void **)&slots, PP_CACHE_LINE, nslots * sizeof *slots) != 0) {
        free(c);
        munmap(base, size);
        errno = ENOMEM;
        return NULL;
    }
    memset(c, 0, sizeof *c);
    memset(slots, 0, nslots * sizeof *slots);
    c->base = base;
    c->size = size;
    c->hdr = base;
    c->nslots = nslots;
    c->max_threads = max_threads;
    c->payload_cap = payload_cap;
    c->arena_cap = arena_cap;
    c->wait_mode = wait_mode;
    c->spin_ns = spin_ns;
    c->idle_retire_ms = idle_retire_ms;
    c->slots = slots;
    c->serial = atomic_fetch_add(&conn_serials, 1) + 1;
    pthread_mutex_init(&c->lease_lock, NULL);
    sem_init(&c->slot_freed, 0, 0);
    sem_init(&c->drained, 0, 0);
    sem_init(&c->arena_freed, 0, 0);
    init_segment(c);
    return c;
}

/* Only called by the cdata finaliser, i.e. when no thread can be inside a
 * call any more: every caller holds a reference to the conn. */
void pp_conn_destroy(pp_conn *c)
{
    munmap(c->base, c->size);
    pthread_mutex_destroy(&c->lease_lock);
    sem_destroy(&c->slot_freed);
    sem_destroy(&c->drained);
    sem_destroy(&c->arena_freed);
    free(c->slots);
    free(c);
}

int64_t pp_conn_inflight(pp_conn *c) { return atomic_load(&c->inflight); }

uint64_t pp_conn_calls(pp_conn *c) { return atomic_load(&c->calls); }

uint64_t pp_conn_failures(pp_conn *c) { return atomic_load(&c->failures); }

void pp_conn_set_draining(pp_conn *c)
{
    uint32_t ready = PP_CONN_READY;
    atomic_compare_exchange_strong(&c->state, &ready, PP_CONN_DRAINING);
}


void ppc_release_arena(pp_conn *c, uint32_t slot)
{
    uint32_t mine = slot + 1;
    if (atomic_compare_exchange_strong(&c->arena_owner, &mine, 0) && atomic_load(&c->arena_waiters))
        sem_post(&c->arena_freed);
}

/* The call that ended (answered, given up, or its worker gone) leaves the
 * in-flight count; the last one out of a non-READY conn wakes the drainer. */
void ppc_leave(pp_conn *c)
{
    if (atomic_fetch_sub(&c->inflight, 1) == 1 && atomic_load(&c->state) != PP_CONN_READY)
        sem_post(&c->drained);
}


int pp_conn_wait_drained(pp_conn *c, double timeout_s)
{
    uint64_t deadline = pp_now_ns() + (uint64_t)(timeout_s * 1e9);
    for (;;) {
        pthread_mutex_lock(&c->lease_lock);
        ppc_reap_orphans(c);
        uint32_t orphans = c->orphans;
        pthread_mutex_unlock(&c->lease_lock);
        if (atomic_load(&c->inflight) == 0)
            return 1;
        uint64_t now = pp_now_ns();
        if (now >= deadline)
            return 0;
        /* An orphan's answer posts nothing: look again soon. */
        pp_sem_wait_until(&c->drained, orphans ? ppc_min_u64(deadline, now + SLICE_NS / 5) : deadline);
    }
}

/* Wakes every caller of a worker that is gone: blocked callers return at
 * once; callers that miss the wake-up see the state within one SLICE_NS. */
void pp_conn_mark_dead(pp_conn *c)
{
    atomic_store(&c->state, PP_CONN_DEAD);
    for (uint32_t i = 0; i < c->nslots; i++) {
        sem_post(&c->slot_freed);
        /* Only a thread holding a lease waits on its slot. One that claims
         * the slot after this load reads DEAD before it would wait (both are
         * seq_cst): a slot never leased stays untouched, and its pages
         * unallocated (touching all 64 took ~0.2 ms of a restart). */
        if (atomic_load(&c->slots[i].lease) == 0)
            continue;
        pp_slot *s = ppc_slot_at(c, i);
        /* A waiter between its last state check and its futex_wait(1) would
         * miss a bare wake-up and sleep a whole slice: the changed word makes
         * that futex_wait return at once. */
        atomic_store(&s->host_waiting, 2);
        pp_futex_wake(&s->host_waiting, INT32_MAX);
    }
    atomic_fetch_add(&c->hdr->async_bell, 1);
    pp_futex_wake(&c->hdr->async_bell, INT32_MAX);
    sem_post(&c->arena_freed);
    sem_post(&c->drained);
}

/* Records why the worker's answer cannot be trusted (for ProtocolError). */
int ppc_violation(const char *why)
{
    size_t n = strlen(why);
    memcpy(last_result.err_msg, why, n);
    last_result.err_len = (uint32_t)n;
    last_result.err_code = 0;
    return PP_CALL_PROTOCOL;
}

/* The header is written once, by us: a worker that changed it is
 * scribbling over the segment, and no answer from it can be trusted. */
static int segment_scribbled(pp_conn *c)
{
    const volatile pp_header *h = c->hdr;
    return h->magic != PP_MAGIC || h->protocol_version != PP_PROTOCOL_VERSION || h->nslots != c->nslots;
}

/* While the host waits for frame `seq`, the worker may only have written
 * seq - 1 (not answered yet) or seq. */
static int stray_answer(pp_conn *c)
{
    return ppc_violation(segment_scribbled(c) ? "the worker overwrote the segment header"
                                          : "the worker answered a frame twice or out of turn");
}

static int interruptible(void) { return gettid() == getpid(); }

/* Host threads spinning in wait=auto now, and how many may: half the CPUs
 * online (not the calling thread's affinity, which may be a pin), at least one. */
static _Atomic int spinners;

static int spin_cap(void)
{
    static _Atomic int cap;
    int n = atomic_load_explicit(&cap, memory_order_relaxed);
    if (n == 0) {
        long online = sysconf(_SC_NPROCESSORS_ONLN);
        n = online >= 4 ? (int)(online / 2) : 1;
        atomic_store_explicit(&cap, n, memory_order_relaxed);
    }
    return n;
}

/* Waits until the worker responded to frame `seq` on slot `s` (PP_CALL_OK),
 * or the conn died, the deadline passed, the worker broke the protocol, or
 * (main thread only, `may_pend`) INTERRUPT_SLICE_NS passed asleep:
 * PP_CALL_PENDING, so Python can run its signal handlers and resume. */
int ppc_await_frame(pp_conn *c, pp_slot *s, uint64_t seq, uint64_t deadline, int may_pend)
{
    return ppc_await_frame_for(c, s, seq, deadline, may_pend, 0, 0);
}

int ppc_await_frame_for(pp_conn *c, pp_slot *s, uint64_t seq, uint64_t deadline, int may_pend,
                        uint64_t extra_spin_ns, int near)
{
    uint64_t now = pp_now_ns();
    uint64_t spin_until = c->wait_mode == PP_WAIT_SPIN    ? UINT64_MAX
                          : c->wait_mode == PP_WAIT_BLOCK ? now
                                                          : now + c->spin_ns + extra_spin_ns;
    unsigned first = pp_same_cpu(&c->hdr->host_cpu, &c->hdr->worker_cpu) || near ? PP_PAUSE_SPINS : 1;
    /* Past half the CPUs, a spinning thread only takes a CPU from the threads
     * it waits for: with many calls in flight, wait=auto sleeps at once. */
    int counted = c->wait_mode == PP_WAIT_AUTO;
    if (counted && atomic_fetch_add(&spinners, 1) >= spin_cap()) {
        atomic_fetch_sub(&spinners, 1);
        counted = 0;
    }
    int rc = -1;
    for (unsigned i = first; c->wait_mode == PP_WAIT_SPIN || counted; i++) {
        uint64_t up = atomic_load_explicit(&s->up_seq, memory_order_acquire);
        if (up == seq) {
            rc = PP_CALL_OK;
            break;
        }
        if (up != seq - 1) {
            rc = stray_answer(c);
            break;
        }
        if ((i & 127) == 0) {
            now = pp_now_ns();
            if (atomic_load_explicit(&c->state, memory_order_relaxed) == PP_CONN_DEAD)
                rc = PP_CALL_DEAD;
            else if (segment_scribbled(c))
                rc = ppc_violation("the worker overwrote the segment header");
            else if (now >= deadline)
                rc = PP_CALL_TIMEOUT;
            if (rc >= 0 || now >= spin_until)
                break;
        }
        pp_spin_step(i);
    }
    if (counted)
        atomic_fetch_sub(&spinners, 1);
    if (rc >= 0)
        return rc;
    uint64_t pend_at = may_pend && interruptible() ? pp_now_ns() + INTERRUPT_SLICE_NS : UINT64_MAX;
    for (;;) {
        atomic_store(&s->host_waiting, 1);
        uint64_t up = atomic_load(&s->up_seq);
        if (up == seq) {
            atomic_store(&s->host_waiting, 0);
            return PP_CALL_OK;
        }
        if (up != seq - 1)
            return stray_answer(c);
        if (atomic_load(&c->state) == PP_CONN_DEAD)
            return PP_CALL_DEAD;
        if (segment_scribbled(c))
            return ppc_violation("the worker overwrote the segment header");
        now = pp_now_ns();
        if (now >= deadline)
            return PP_CALL_TIMEOUT;
        if (now >= pend_at)
            return PP_CALL_PENDING;
        pp_futex_wait_until(&s->host_waiting, 1, ppc_min_u64(ppc_min_u64(deadline, pend_at), now + SLICE_NS));
    }
}

/* ---- calls ----------------------------------------------------------------- */

/* Takes the arena for slot's call. The slot may already hold it (pp_arena_hold):
 * fine for an in-place call (`in_place`), and for anything else a call that
 * would wait for itself (PP_CALL_ARENA_HELD, nothing sent). */
static int lock_arena(pp_conn *c, uint32_t slot, uint64_t deadline, int in_place)
{
    for (;;) {
        uint32_t none = 0;
        if (atomic_compare_exchange_strong(&c->arena_owner, &none, slot + 1))
            return PP_CALL_OK;
        if (none == slot + 1)
            return in_place ? PP_CALL_OK : PP_CALL_ARENA_HELD;
        if (atomic_load(&c->state) == PP_CONN_DEAD)
            return PP_CALL_DEAD;
        uint64_t now = pp_now_ns();
        if (now >= deadline)
            return PP_CALL_TIMEOUT;
        atomic_fetch_add(&c->arena_waiters, 1);
        if (atomic_load(&c->arena_owner) != 0)
            pp_sem_wait_until(&c->arena_freed, ppc_min_u64(deadline, now + SLICE_NS));
        atomic_fetch_sub(&c->arena_waiters, 1);
    }
}

/* Takes the answer's status out of the slot. Every field the worker wrote is
 * read once (volatile) and bounds-checked: it may change under our feet. */
static int read_status(pp_slot *s, uint32_t count)
{
    uint32_t status = *(volatile uint16_t *)&s->status;
    uint32_t code = *(volatile uint32_t *)&s->err_code;
    uint32_t len = *(volatile uint32_t *)&s->err_len;
    uint32_t done = *(volatile uint32_t *)&s->done_count;
    pp_result *res = &last_result;
    if (len > PP_ERR_CAP || done > count || (status != PP_STATUS_OK && status != PP_STATUS_BAD_REQUEST) ||
        (status == PP_STATUS_OK && code == 0 && done != count)) {
        res->done_count = 0;
        return ppc_violation("the worker's answer has fields out of range (status, message length or count)");
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
    uint8_t flags;
    int keep_arena;
} pp_extra;

static const pp_extra PLAIN = {0, NULL, 0, NULL, 0, 0, 0};

/* ---- calls back ----------------------------------------------------------- */

/* The conns whose workers wait on this thread for the answer to a call back:
 * a call into one of them would wait for itself. */
#define WAITING_MAX 64
static _Thread_local pp_conn *waiting_on[WAITING_MAX];
static _Thread_local int waiting_depth;
static _Atomic int depth_limit = PP_CB_MAX_DEPTH;

void pp_conn_set_owner(pp_conn *c, uint64_t owner) { c->owner = owner; }

/* Answers the calls back it has a route for (_cbroutes.c); PP_CB_UNHANDLED: Python does. */
static _Atomic(pp_cb_hook) callback_hook;

void pp_set_callback_hook(void *hook) { atomic_store(&callback_hook, (pp_cb_hook)hook); }

int pp_callback_depth_limit(int limit)
{
    return limit > 0 && limit <= WAITING_MAX ? atomic_exchange(&depth_limit, limit) : atomic_load(&depth_limit);
}

static int waits_on_this_thread(pp_conn *c)
{
    for (int w = 0; w < waiting_depth; w++)
        if (waiting_on[w] == c)
            return 1;
    return 0;
}

/* The reply to a call back nested deeper than the limit (callback.h's wire format). */
static int64_t too_deep(uint8_t *reply, uint32_t cap)
{
    static const char why[] = "polyplug_isolated: calls between bundles and the host nest too deep on this thread "
                              "(most likely a cycle); the limit is pp_callback_depth_limit";
    pp_cb_reply head = {ABI_REENTRANT_CALL_CODE, sizeof why - 1, 0, 0, 0};
    uint64_t size = sizeof head + PP_ALIGN8(sizeof why - 1);
    if (size > cap)
        return -1;
    memset(reply, 0, size);
    memcpy(reply, &head, sizeof head);
    memcpy(reply + sizeof head, why, sizeof why - 1);
    return (int64_t)size;
}

/* A CALLBACK frame (worker/callback.h has what it carries): the worker
 * serving slot i's call asks for something. It runs here, on the thread that
 * made the call (pp_on_callback, in Python), and the REPLY carries the
 * reply's length as its out_size; the call's flags stay (an async call still
 * rings). The request and the reply live in the slot's payload where the
 * worker put them: both are bounds-checked here, once. */
static void reply_callback(pp_conn *c, uint32_t i)
{
    pp_slot *s = ppc_slot_at(c, i);
    uint64_t offset = *(volatile uint32_t *)&s->cb_offset;
    uint64_t len = *(volatile uint32_t *)&s->cb_args_len;
    uint64_t cap = *(volatile uint32_t *)&s->cb_out_size;
    int64_t n = -1;
    const char *why = "polyplug_isolated: the worker laid out a call back outside its slot's payload";
    if (len < sizeof(pp_cb_request))
        why = "polyplug_isolated: a call back this host cannot read (shorter than a request header)";
    /* Each is at most 2^32: the sum cannot wrap. */
    else if (offset % 8 == 0 && offset + len + cap <= c->payload_cap) {
        uint8_t *request = pp_payload(s) + offset;
        if (waiting_depth >= atomic_load_explicit(&depth_limit, memory_order_relaxed)) {
            n = too_deep(request + len, (uint32_t)cap);
        } else {
            waiting_on[waiting_depth++] = c;
            pp_cb_hook hook = atomic_load_explicit(&callback_hook, memory_order_acquire);
            n = hook ? hook(c->owner, request, (uint32_t)len, request + len, (uint32_t)cap) : PP_CB_UNHANDLED;
            if (n == PP_CB_UNHANDLED)
                n = pp_on_callback(c->owner, request, (uint32_t)len, request + len, (uint32_t)cap);
            waiting_depth--;
        }
    }
    s->kind = PP_DOWN_REPLY;
    s->count = n >= 0 ? PP_STATUS_OK : PP_STATUS_BAD_REQUEST;
    s->function = n >= 0 ? 0 : 1; /* AbiError Generic when nobody could answer */
    s->out_size = n >= 0 && (uint64_t)n <= cap ? (uint32_t)n : 0;
    s->args_len = 0;
    if (n < 0) {
        s->args_len = (uint32_t)strlen(why);
        memcpy(s->err_msg, why, s->args_len);
    }
    ppc_publish(c, i);
}

/* Waits for the answer to slot i's call and takes it (copying the outs where
 * the pending call says). Returns PENDING to be resumed, or the outcome; on
 * any outcome but PENDING the call has left the conn. */
static int settle(pp_conn *c, uint32_t i, int may_pend)
{
    pp_hslot *hs = &c->slots[i];
    pp_pending *p = &hs->call;
    pp_slot *s = ppc_slot_at(c, i);
    uint32_t count = p->count;
    int rc;
    for (;;) {
        int near = p->near && !atomic_load_explicit(&c->hdr->near_declined, memory_order_relaxed);
        rc = ppc_await_frame_for(c, s, hs->seq, p->deadline, may_pend, pp_spin_for_bytes(p->layout.spill_bytes),
                                 near);
        if (rc != PP_CALL_OK)
            break;
        uint32_t kind = *(volatile uint16_t *)&s->up_kind;
        if (kind == PP_UP_ANSWER)
            break;
        if (kind != PP_UP_CALLBACK) {
            rc = ppc_violation("the worker answered with an unknown frame kind");
            break;
        }
        reply_callback(c, i);
    }
    if (rc == PP_CALL_PENDING)
        return rc;
    if (rc == PP_CALL_OK && *(volatile uint32_t *)&s->answers != hs->answers + 1)
        rc = ppc_violation("the slot's answer count does not match: an answer was forged or repeated");
    if (rc == PP_CALL_OK) {
        hs->answers++;
        uint8_t *region = p->spill == PP_IN_ARENA ? c->base + pp_arena_offset(c->nslots, c->payload_cap)
                                                  : pp_payload(s);
        rc = read_status(s, p->count);
        uint64_t done = last_result.done_count;
        if (rc == PP_CALL_OK || rc == PP_CALL_PLUGIN_ERROR) {
            const uint8_t *from = p->layout.out_inline ? s->out : region + p->layout.out_offset;
            uint8_t *to = p->out ? p->out : small_out;
            if (done && p->out_size && to != from) /* equal: the out was read in place */
                memcpy(to, from, (size_t)(done * p->out_size));
        }
        if (rc == PP_CALL_OK && p->table) {
            uint32_t ret_len = *(volatile uint32_t *)&s->ret_len;
            if (ret_len > p->ret_cap)
                rc = ppc_violation("the worker's return area length is out of range");
            else if (ret_len) /* a call without a return area has ret NULL */
                memcpy(p->ret, region + p->layout.spill_bytes, ret_len);
            last_result.ret_len = ret_len;
        }
        if (p->spill == PP_IN_ARENA && !p->keep_arena)
            ppc_release_arena(c, i);
        atomic_store_explicit(&hs->lease, atomic_load_explicit(&hs->lease, memory_order_relaxed) & ~LEASE_BUSY,
                              memory_order_release);
        ppc_announce_free(c); /* past max_threads, an idle slot can be taken over */
    }
    /* After a timeout or a death the slot stays taken: the worker that might
     * still write into it is being killed and the conn is never reused. */
    atomic_fetch_add_explicit(&c->calls, count, memory_order_relaxed);
    if (rc != PP_CALL_OK)
        atomic_fetch_add_explicit(&c->failures, 1, memory_order_relaxed);
    ppc_leave(c);
    return rc;
}

/* Hands a call to lease's worker thread. Returns PP_CALL_PENDING once it is
 * on its way (settle takes the answer), or why nothing was sent. `out`
 * receives count * out_size bytes when the call succeeds (and the completed
 * prefix of a batch when it fails). */
static int submit(pp_conn *c, int64_t lease, uint32_t contract, uint32_t function, const uint8_t *args,
                  uint64_t args_len, uint32_t count, uint8_t *out, uint64_t out_size, const pp_extra *x,
                  double timeout_s)
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
    int spill = need <= c->payload_cap && !x->keep_arena ? PP_IN_SLOT : PP_IN_ARENA;
    if (spill == PP_IN_ARENA && need > c->arena_cap)
        return PP_CALL_TOO_LARGE;
    if (waiting_depth && waits_on_this_thread(c))
        return PP_CALL_REENTRANT;
    uint32_t i = LEASE_SLOT(lease);
    if (lease <= 0 || i >= c->nslots)
        return PP_CALL_LEASE_LOST;
    pp_hslot *hs = &c->slots[i];
    uint64_t idle = (uint64_t)lease;
    if (!atomic_compare_exchange_strong(&hs->lease, &idle, idle | LEASE_BUSY))
        return PP_CALL_LEASE_LOST; /* taken over, or given up with a call in flight */

    int rc;
    atomic_fetch_add(&c->inflight, 1);
    if (atomic_load(&c->state) != PP_CONN_READY) {
        rc = PP_CALL_UNAVAILABLE; /* draining or gone: nothing was sent, so a caller may go elsewhere */
        goto unsent;
    }
    uint64_t deadline = deadline_of(timeout_s);
    if (spill == PP_IN_ARENA && (rc = lock_arena(c, i, deadline, x->keep_arena)) != PP_CALL_OK) {
        spill = PP_IN_SLOT; /* not taken: nothing to give back (a buffers() block may hold it) */
        goto unsent;
    }
    if (spill == PP_IN_ARENA && !x->keep_arena)
        c->kept = (pp_kept){0, 0, 0}; /* this call writes over a block's out */
    pp_slot *s = ppc_slot_at(c, i);
    /* The worker answers each frame once: a slot whose count moved since our
     * last answer was answered twice, or scribbled on. */
    if (*(volatile uint32_t *)&s->answers != hs->answers ||
        atomic_load_explicit(&s->up_seq, memory_order_relaxed) != hs->seq) {
        rc = ppc_violation("the worker answered a call twice (or wrote into an idle slot)");
        goto unsent;
    }
    uint8_t *region = spill == PP_IN_ARENA ? c->base + pp_arena_offset(c->nslots, c->payload_cap) : pp_payload(s);
    int near = c->wait_mode == PP_WAIT_AUTO && !(x->flags & PP_FLAG_ASYNC) && layout.spill_bytes >= PP_NEAR_BYTES;
    int cpu = near ? sched_getcpu() : -1;
    near = cpu >= 0 && cpu < UINT16_MAX;
    s->kind = PP_DOWN_CALL;
    s->flags = x->flags | (waiting_depth ? PP_FLAG_PEER_WAITS : 0) | (near ? PP_FLAG_NEAR : 0);
    s->near_cpu = near ? (uint16_t)cpu : 0;
    s->spill = (uint8_t)spill;
    s->contract = contract;
    s->function = function;
    s->count = count;
    s->args_len = (uint32_t)args_len;
    s->out_size = (uint32_t)out_size;
    s->instance = x->instance;
    s->fixups = (uint16_t)table;
    uint8_t *args_to = layout.args_inline ? s->args : region;
    if (args_len && args_to != args) /* equal: written in place (pp_arena_hold) */
        memcpy(args_to, args, (size_t)(args_len * count));
    if (table) {
        pp_fixup *fix = (pp_fixup *)(region + layout.fixup_offset);
        memcpy(fix, x->fixups, x->nfixups * sizeof *fix);
        fix[x->nfixups] = (pp_fixup){x->ret_cap, PP_FIX_RETURN_CAP};
    }
    hs->call = (pp_pending){count, table, out_size, out, x->ret, x->ret_cap, spill, x->keep_arena, near, layout, deadline};
    if (!out)
        memset(small_out, 0, sizeof small_out);
    ppc_publish(c, i);
    return PP_CALL_PENDING;

unsent:
    if (spill == PP_IN_ARENA && !x->keep_arena)
        ppc_release_arena(c, i);
    if (rc != PP_CALL_PROTOCOL)
        atomic_store(&hs->lease, (uint64_t)lease);
    atomic_fetch_add_explicit(&c->calls, count, memory_order_relaxed);
    atomic_fetch_add_explicit(&c->failures, 1, memory_order_relaxed);
    ppc_leave(c);
    return rc;
}

static int run(pp_conn *c, int64_t lease, uint32_t contract, uint32_t function, const uint8_t *args,
               uint64_t args_len, uint32_t count, uint8_t *out, uint64_t out_size, const pp_extra *x,
               double timeout_s)
{
    int rc = submit(c, lease, contract, function, args, args_len, count, out, out_size, x, timeout_s);
    return rc == PP_CALL_PENDING ? settle(c, LEASE_SLOT(lease), 1) : rc;
}

int pp_call(pp_conn *c, int64_t lease, uint32_t contract, uint32_t function, const uint8_t *args, size_t args_len,
            uint8_t *out, size_t out_size, double timeout_s)
{
    return run(c, lease, contract, function, args, args_len, 1, out, out_size, &PLAIN, timeout_s);
}

int pp_call_ex(pp_conn *c, int64_t lease, uint32_t contract, uint32_t function, uint32_t instance,
               const uint8_t *args, size_t args_len, const pp_fixup *fixups, uint32_t nfixups, uint8_t *out,
               size_t out_size, uint8_t *ret, size_t ret_cap, double timeout_s)
{
    if (ret_cap > UINT32_MAX)
        return PP_CALL_TOO_LARGE;
    pp_extra x = {instance, fixups, nfixups, ret, (uint32_t)ret_cap, 0, 0};
    return run(c, lease, contract, function, args, args_len, 1, out, out_size, &x, timeout_s);
}

static int64_t small_value(const uint8_t *out, size_t out_size)
{
    uint64_t value = 0;
    for (size_t i = out_size; i-- > 0;)
        value = value << 8 | out[i];
    return (int64_t)value;
}

void pp_use_lease(pp_conn *c, int64_t lease)
{
    for (unsigned k = 0; k < LEASE_CACHE; k++)
        if (me.leases[k].conn_serial == c->serial) {
            me.leases[k].lease = lease;
            return;
        }
    unsigned k = me.next_lease++ % LEASE_CACHE;
    me.leases[k].conn_serial = c->serial;
    me.leases[k].lease = lease;
}

/* The calling thread's lease of c, as pp_use_lease last set it (0: none). */
static int64_t cached_lease(pp_conn *c)
{
    for (unsigned k = 0; k < LEASE_CACHE; k++)
        if (me.leases[k].conn_serial == c->serial)
            return me.leases[k].lease;
    return 0;
}

/* pp_call_ex_fast with no fixups, written out: calling that one from here
 * measured ~15 ns slower per raw call (bench._shapes, interleaved A/B). */
int pp_call_fast(pp_conn *c, uint32_t contract, uint32_t function, const uint8_t *args, size_t args_len,
                 size_t out_size, double timeout_s, const uint8_t **out)
{
    *out = small_out;
    if (out_size > PP_FAST_OUT)
        return PP_CALL_TOO_LARGE;
    int64_t lease = cached_lease(c);
    if (!lease)
        return PP_CALL_LEASE_LOST;
    return run(c, lease, contract, function, args, args_len, 1, NULL, out_size, &PLAIN, timeout_s);
}

int pp_call_ex_fast(pp_conn *c, uint32_t contract, uint32_t function, const uint8_t *args, size_t args_len,
                    const pp_fixup *fixups, uint32_t nfixups, size_t out_size, double timeout_s,
                    const uint8_t **out)
{
    *out = small_out;
    if (out_size > PP_FAST_OUT)
        return PP_CALL_TOO_LARGE;
    int64_t lease = cached_lease(c);
    if (!lease)
        return PP_CALL_LEASE_LOST;
    pp_extra x = {0, fixups, nfixups, NULL, 0, 0, 0};
    return run(c, lease, contract, function, args, args_len, 1, NULL, out_size, &x, timeout_s);
}

int pp_resume_fast(pp_conn *c) { return pp_resume(c, cached_lease(c)); }

void pp_abandon_fast(pp_conn *c) { pp_abandon(c, cached_lease(c)); }

int pp_call_batch_fast(pp_conn *c, uint32_t contract, uint32_t function, const uint8_t *args, size_t args_len,
                       size_t count, uint8_t *out, size_t out_size, double timeout_s)
{
    int64_t lease = cached_lease(c);
    if (!lease)
        return PP_CALL_LEASE_LOST;
    return pp_call_batch(c, lease, contract, function, args, args_len, count, out, out_size, timeout_s);
}

int64_t pp_call_small(pp_conn *c, uint32_t contract, uint32_t function, const uint8_t *args, size_t args_len,
                      size_t out_size, double timeout_s)
{
    const uint8_t *out;
    if (out_size > 7)
        return -PP_CALL_TOO_LARGE;
    int rc = pp_call_fast(c, contract, function, args, args_len, out_size, timeout_s, &out);
    return rc == PP_CALL_OK ? small_value(out, out_size) : -rc;
}

int pp_call_batch(pp_conn *c, int64_t lease, uint32_t contract, uint32_t function, const uint8_t *args,
                  size_t args_len, size_t count, uint8_t *out, size_t out_size, double timeout_s)
{
    if (count > UINT32_MAX)
        return PP_CALL_TOO_LARGE;
    return run(c, lease, contract, function, args, args_len, (uint32_t)count, out, out_size, &PLAIN, timeout_s);
}

int pp_submit(pp_conn *c, int64_t lease, uint32_t contract, uint32_t function, uint32_t instance,
              const uint8_t *args, size_t args_len, const pp_fixup *fixups, uint32_t nfixups, uint8_t *out,
              size_t out_size, uint8_t *ret, size_t ret_cap, double timeout_s)
{
    if (ret_cap > UINT32_MAX)
        return PP_CALL_TOO_LARGE;
    pp_extra x = {instance, fixups, nfixups, ret, (uint32_t)ret_cap, PP_FLAG_ASYNC, 0};
    return submit(c, lease, contract, function, args, args_len, 1, out, out_size, &x, timeout_s);
}


int pp_resume(pp_conn *c, int64_t lease)
{
    if (!ppc_lease_in_flight(c, lease))
        return PP_CALL_LEASE_LOST;
    return settle(c, LEASE_SLOT(lease), 1);
}

int pp_poll(pp_conn *c, int64_t lease)
{
    if (!ppc_lease_in_flight(c, lease))
        return PP_CALL_LEASE_LOST;
    uint32_t i = LEASE_SLOT(lease);
    pp_hslot *hs = &c->slots[i];
    pp_slot *s = ppc_slot_at(c, i);
    uint64_t up = atomic_load_explicit(&s->up_seq, memory_order_acquire);
    if (up == hs->seq - 1 && atomic_load(&c->state) != PP_CONN_DEAD && pp_now_ns() < hs->call.deadline)
        return PP_CALL_PENDING;
    return settle(c, i, 0);
}


uint32_t pp_bell(pp_conn *c) { return atomic_load(&c->hdr->async_bell); }

void pp_bell_ring(pp_conn *c)
{
    atomic_fetch_add(&c->hdr->async_bell, 1);
    pp_futex_wake(&c->hdr->async_bell, INT32_MAX);
}

void pp_bell_wait(pp_conn *c, uint32_t seen, double timeout_s)
{
    pp_header *h = c->hdr;
    atomic_store(&h->async_waiting, 1);
    if (atomic_load(&h->async_bell) == seen && atomic_load(&c->state) != PP_CONN_DEAD)
        pp_futex_wait_until(&h->async_bell, seen, pp_now_ns() + (uint64_t)(timeout_s * 1e9));
}

/* ---- calls on buffers in the arena ----------------------------------------- */

/* Where an in-place call's args and out lie in the arena: where the worker
 * reads and writes them, except that args and outs small enough to travel
 * in the slot's inline fields get room past everything the worker touches
 * (the host copies them to and from the slot). */
int pp_in_place_layout(pp_conn *c, size_t args_len, size_t out_size, uint64_t *args_at, uint64_t *out_at)
{
    if (args_len > UINT32_MAX || out_size > UINT32_MAX)
        return PP_CALL_TOO_LARGE;
    pp_layout l = pp_layout_of(1, args_len, out_size, 0);
    uint64_t end = l.spill_bytes;
    *args_at = l.args_inline ? end : 0;
    if (l.args_inline)
        end = PP_ALIGN8(end + args_len);
    *out_at = l.out_inline ? end : l.out_offset;
    if (l.out_inline)
        end += out_size;
    return end <= c->arena_cap ? PP_CALL_OK : PP_CALL_TOO_LARGE;
}

uint8_t *pp_arena_base(pp_conn *c) { return c->base + pp_arena_offset(c->nslots, c->payload_cap); }

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif

int pp_arena_hold(pp_conn *c, int64_t lease, size_t args_len, size_t out_size, double timeout_s)
{
    uint32_t i = LEASE_SLOT(lease);
    uint64_t args_at, out_at;
    if (lease <= 0 || i >= c->nslots)
        return PP_CALL_LEASE_LOST;
    int rc = pp_in_place_layout(c, args_len, out_size, &args_at, &out_at);
    if (rc == PP_CALL_OK)
        rc = lock_arena(c, i, deadline_of(timeout_s), 0);
    if (rc != PP_CALL_OK)
        return rc;
    /* The out holds only what this lease's last block left there: this block
     * goes on from it, as if it were the same block. Otherwise its first call
     * zeroes the out, and until then the block may write anywhere. */
    pp_kept *kept = &c->kept;
    if (kept->lease != lease || kept->args_len != args_len || kept->out_size != out_size)
        *kept = (pp_kept){0, 0, 0};
    /* Fault the pages in once (the arena is only ever reused), so that big
     * calls do not take a page fault per page; best effort. */
    uint64_t end = args_at + args_len > out_at + out_size ? args_at + args_len : out_at + out_size;
    uint64_t want = end & ~(uint64_t)4095;
    if (want > c->arena_faulted) {
        if (madvise(pp_arena_base(c) + c->arena_faulted, want - c->arena_faulted, MADV_POPULATE_WRITE) == 0)
            c->arena_faulted = want;
    }
    return rc;
}

void pp_arena_drop(pp_conn *c, int64_t lease)
{
    uint32_t i = LEASE_SLOT(lease);
    if (lease > 0 && i < c->nslots)
        ppc_release_arena(c, i);
}

int pp_call_in_place(pp_conn *c, int64_t lease, uint32_t contract, uint32_t function, size_t args_len,
                     size_t out_size, double timeout_s)
{
    uint64_t args_at, out_at;
    int rc = pp_in_place_layout(c, args_len, out_size, &args_at, &out_at);
    if (rc != PP_CALL_OK)
        return rc;
    uint32_t i = LEASE_SLOT(lease);
    if (lease <= 0 || i >= c->nslots || atomic_load(&c->arena_owner) != i + 1)
        return PP_CALL_LEASE_LOST; /* the arena is not held for this lease */
    uint8_t *arena = pp_arena_base(c);
    pp_extra x = PLAIN;
    x.keep_arena = 1;
    /* The block's first call has its out zeroed (unless it goes on from the
     * lease's last block, see pp_arena_hold); each later answer lands on the
     * last: while the block holds the arena, only its calls write the out. */
    x.flags = c->kept.lease == lease ? PP_FLAG_OUT_KEPT : 0;
    rc = run(c, lease, contract, function, arena + args_at, args_len, 1, out_size ? arena + out_at : NULL, out_size,
             &x, timeout_s);
    int ran = rc == PP_CALL_OK || rc == PP_CALL_PLUGIN_ERROR; /* the worker ran it: the out was zeroed */
    c->kept = ran ? (pp_kept){lease, args_len, out_size} : (pp_kept){0, 0, 0};
    return rc;
}

static const pp_fast_api FAST_API = {
    sizeof(pp_fast_api), pp_call_fast,   pp_call_ex_fast, pp_resume_fast,
    pp_abandon_fast,     pp_call_batch_fast, pp_last_result,
};

const pp_fast_api *pp_fast_api_table(void) { return &FAST_API; }

_Static_assert(sizeof(((pp_result *)0)->err_msg) == PP_ERR_CAP, "pp_result carries a whole message");
