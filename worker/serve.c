/*
 * The worker's serve loops, without touching Python: a dispatcher (entered
 * through cffi with the GIL released; it returns on ppw_stop) takes BIND
 * messages from the ring and gives each bound slot a thread of its own,
 * which then serves that slot's frames (see the protocol in channel.h).
 *
 * Also the parent watchdog: a thread that ends the process when the control
 * socket hangs up, whatever the plugin is doing. It is used instead of
 * PR_SET_PDEATHSIG, which fires when the *thread* that spawned the worker
 * exits, not the host process.
 */
#define _GNU_SOURCE
#include "channel.h"
#include "polyplug_abi.h"
#include "worker.h"

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Parked threads kept ready for the next BIND (at most max_threads). */
#define PPW_SPARE_THREADS 2

static uint8_t *g_base;
static uint32_t g_nslots;
static uint32_t g_max_threads;
static int g_wait_mode;
static uint64_t g_spin_ns;
static uint64_t g_payload_cap;
static uint64_t g_arena_cap;
static _Atomic int g_stop;

/* Maps the segment the host created and checks it speaks our protocol.
 * Returns 0, or -1 with errno set, or 1 for a geometry/version mismatch. */
int ppw_attach(int fd)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return -1;
    if ((size_t)st.st_size < PP_HEADER_SIZE)
        return 1;
    void *base = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED)
        return -1;
    pp_header *h = base;
    if (h->magic != PP_MAGIC || h->protocol_version != PP_PROTOCOL_VERSION || h->nslots == 0 ||
        h->nslots > PP_MAX_SLOTS ||
        pp_segment_size(h->nslots, h->payload_cap, h->arena_cap) != (size_t)st.st_size) {
        munmap(base, (size_t)st.st_size);
        return 1;
    }
    g_base = base;
    g_nslots = h->nslots;
    g_max_threads = h->max_threads;
    g_payload_cap = h->payload_cap;
    g_arena_cap = h->arena_cap;
    return 0;
}

static void answer(pp_slot *s, uint64_t seq, uint32_t status, uint32_t done, uint32_t ret_len, const AbiError *err)
{
    int ring_bell = s->flags & PP_FLAG_ASYNC;
    size_t len = err->message.ptr ? err->message.len : 0;
    if (len > PP_ERR_CAP)
        len = PP_ERR_CAP;
    if (len)
        memcpy(s->err_msg, err->message.ptr, len);
    s->up_kind = PP_UP_ANSWER;
    s->status = (uint16_t)status;
    s->err_code = err->code;
    s->err_len = (uint32_t)len;
    s->done_count = done;
    s->ret_len = ret_len;
    s->answers++;
    /* Publishes the fields above, then the Dekker half that pairs with the
     * host's "set host_waiting, re-check up_seq". */
    atomic_store_explicit(&s->up_seq, seq, memory_order_release);
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&s->host_waiting, memory_order_relaxed) && atomic_exchange(&s->host_waiting, 0))
        pp_futex_wake(&s->host_waiting, 1);
    if (ring_bell) {
        pp_header *h = (pp_header *)g_base;
        atomic_fetch_add(&h->async_bell, 1);
        if (atomic_load(&h->async_waiting) && atomic_exchange(&h->async_waiting, 0))
            pp_futex_wake(&h->async_bell, INT32_MAX);
    }
}

static void refuse(pp_slot *s, uint64_t seq, const char *why)
{
    AbiError err = {ABI_GENERIC, {(const uint8_t *)why, strlen(why)}};
    answer(s, seq, PP_STATUS_BAD_REQUEST, 0, 0, &err);
}

static void fail_with(AbiError *err, uint32_t code, const char *message)
{
    err->code = code;
    err->message.ptr = (const uint8_t *)message;
    err->message.len = strlen(message);
}

/* Turns the args' offset fields into pointers into this process's mapping. */
static const char *fix_args(const pp_fixup *fix, uint32_t n, uint8_t *args, uint64_t args_len)
{
    for (uint32_t i = 0; i < n; i++) {
        if (fix[i].kind != PP_FIX_ARG_POINTER)
            continue;
        if ((uint64_t)fix[i].offset + 8 > args_len)
            return "a pointer fixup lies outside the args";
        uint64_t target;
        memcpy(&target, args + fix[i].offset, 8);
        if (target != PP_NULL_OFFSET && target > args_len)
            return "a pointer fixup points outside the args";
        uintptr_t pointer = target == PP_NULL_OFFSET ? 0 : (uintptr_t)(args + target);
        memcpy(args + fix[i].offset, &pointer, 8);
    }
    return NULL;
}

/* Copies what the StringViews and Buffers in out point at into the return
 * area, rewriting each pointer as an offset there; frees returned Buffers.
 * Returns the bytes used, or sets err when they do not fit (every returned
 * Buffer is freed all the same: the plugin handed their ownership over). */
static uint32_t copy_back(const pp_fixup *fix, uint32_t n, uint8_t *out, uint64_t out_size, uint8_t *ret,
                          uint64_t ret_cap, AbiError *err)
{
    uint64_t used = 0;
    int failed = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t kind = fix[i].kind;
        if (kind != PP_FIX_OUT_VIEW && kind != PP_FIX_OUT_BUFFER)
            continue;
        uint64_t width = kind == PP_FIX_OUT_VIEW ? sizeof(StringView) : sizeof(Buffer);
        if ((uint64_t)fix[i].offset + width > out_size) {
            fail_with(err, ABI_INVALID_POINTER, "polyplug_isolated: an out fixup lies outside out");
            failed = 1;
            continue;
        }
        uint8_t *field = out + fix[i].offset;
        uint8_t *data;
        uint64_t len, cap = 0;
        memcpy(&data, field, sizeof data);
        memcpy(&len, field + 8, 8);
        if (kind == PP_FIX_OUT_BUFFER)
            memcpy(&cap, field + 16, 8);
        uint64_t where = PP_NULL_OFFSET;
        /* used only grows in 8-byte steps and may pass an unaligned ret_cap:
         * compare before subtracting. */
        if (data && !failed && (used > ret_cap || len > ret_cap - used)) {
            fail_with(err, ABI_BUFFER_TOO_SMALL,
                      "polyplug_isolated: the returned strings and buffers do not fit the call's return "
                      "area; raise Runtime(payload_capacity=...)");
            failed = 1;
        }
        if (data && !failed) {
            memcpy(ret + used, data, len);
            where = used;
            used = PP_ALIGN8(used + len);
        }
        if (data && kind == PP_FIX_OUT_BUFFER)
            ppw_free_buffer(data, cap);
        memcpy(field, &where, 8);
        if (kind == PP_FIX_OUT_BUFFER)
            memcpy(field + 16, &len, 8);
    }
    return failed ? 0 : (uint32_t)used;
}

/* The frame this thread answers next, and where its call's own bytes end in
 * the slot's payload: a call back moves the first (its REPLY is a frame) and
 * puts its args past the second. */
static _Thread_local uint64_t t_seq;
static _Thread_local uint64_t t_payload_used;
static _Thread_local pp_slot *t_slot;
static _Thread_local uint32_t t_slot_index;
static _Thread_local int t_tid;
static _Thread_local uint64_t t_moved; /* bytes of args and out the last call moved */
static _Thread_local int t_cb_yields; /* ppw_call_back_yields */
static _Thread_local int t_peer_waits; /* the last frame served had PP_FLAG_PEER_WAITS */

static const char *call_back(uint64_t target, uint32_t function, const void *args, uint32_t args_len, void *out,
                             uint32_t out_size, AbiError *err);

static void serve_one(pp_slot *s, uint64_t seq)
{
    t_seq = seq;
    uint32_t count = s->count, spill = s->spill, nfix = s->fixups;
    uint32_t contract = s->contract, function = s->function, instance = s->instance;
    uint64_t args_len = s->args_len, out_size = s->out_size;
    pp_layout layout = pp_layout_of(count, args_len, out_size, nfix);
    t_moved = layout.spill_bytes;
    uint64_t region_cap = spill == PP_IN_ARENA ? g_arena_cap : g_payload_cap;
    if (count == 0 || spill > PP_IN_ARENA || layout.spill_bytes > region_cap || (nfix && count != 1))
        return refuse(s, seq, "request does not fit its region");
    uint8_t *region = spill == PP_IN_ARENA ? g_base + pp_arena_offset(g_nslots, g_payload_cap) : pp_payload(s);
    uint8_t *args = args_len == 0 ? NULL : layout.args_inline ? s->args : region;
    /* An inline out lies in the up lines, which the host polls while it
     * waits: the plugin writes it here, and it is copied there at once with
     * the answer, so that the lines move to the host once per call. */
    uint8_t staged[PP_INLINE_OUT];
    uint8_t *out = out_size == 0 ? NULL : layout.out_inline ? staged : region + layout.out_offset;
    const pp_fixup *fix = (const pp_fixup *)(region + layout.fixup_offset);
    uint64_t ret_cap = region_cap - layout.spill_bytes;
    for (uint32_t i = 0; i < nfix; i++)
        if (fix[i].kind == PP_FIX_RETURN_CAP && fix[i].offset < ret_cap)
            ret_cap = fix[i].offset;
    const char *refused = fix_args(fix, nfix, args, args_len);
    if (refused)
        return refuse(s, seq, refused);
    t_payload_used = spill == PP_IN_ARENA ? 0 : layout.spill_bytes;
    if (out && (out == staged || !(s->flags & PP_FLAG_OUT_KEPT)))
        memset(out, 0, (size_t)(count * out_size));
    AbiError err = {ABI_OK, {NULL, 0}};

    if (function == PP_FN_CALL_BACK_PROBE) {
        refused = call_back(0, 0, NULL, 0, NULL, 0, &err);
        if (refused)
            return refuse(s, t_seq, refused);
        return answer(s, t_seq, PP_STATUS_OK, err.code == ABI_OK, 0, &err);
    }
    if (function == PP_FN_CREATE_INSTANCE || function == PP_FN_DESTROY_INSTANCE) {
        if (function == PP_FN_DESTROY_INSTANCE)
            refused = ppw_destroy_instance(contract, instance);
        else if (out_size != sizeof(uint32_t) || count != 1)
            refused = "create_instance answers a 4-byte handle";
        else {
            uint32_t handle = ppw_create_instance(contract, args, &refused);
            memcpy(out, &handle, sizeof handle);
        }
        if (refused)
            return refuse(s, seq, refused);
        memcpy(s->out, out, out_size);
        return answer(s, seq, PP_STATUS_OK, 1, 0, &err);
    }

    uint32_t done = 0;
    ppw_mark_busy_thread();
    ppw_busy_begin(t_slot_index, t_tid, contract, function);
    for (; done < count; done++) {
        uint8_t *one_out = out ? out + done * out_size : NULL;
        int fault = ppw_fault_before(PPW_PHASE_CALL, contract, function, &err);
        if (fault == PPW_SKIP)
            break;
        refused = ppw_invoke_on(contract, instance, function, args ? args + done * args_len : NULL, one_out, &err);
        if (refused || err.code != ABI_OK)
            break;
        if (fault == PPW_RUN_CORRUPT && one_out)
            ppw_fault_corrupt(one_out, out_size);
    }
    ppw_busy_end(t_slot_index);
    if (refused)
        return refuse(s, t_seq, refused);
    uint32_t ret_len = 0;
    if (nfix && err.code == ABI_OK) {
        ret_len = copy_back(fix, nfix, out, out_size, region + layout.spill_bytes, ret_cap, &err);
        if (err.code != ABI_OK)
            done = 0;
    }
    if (out == staged)
        memcpy(s->out, staged, out_size);
    answer(s, t_seq, PP_STATUS_OK, done, ret_len, &err);
}

/* CFS keeps two processes that hand work back and forth on one core: both
 * ran recently, so neither counts as movable ("cache hot"), and the call
 * rate drops to what context switches allow. When the host's caller and this
 * thread keep meeting on one CPU while another is allowed, this thread steps
 * aside: it forbids itself that CPU for one migration, then allows it again. */
#define COLOCATED_BEFORE_MOVING 64

static _Thread_local unsigned t_colocated;
static _Atomic int g_spinners; /* slot threads spinning now (wait=auto) */
static int g_spin_cap = 1;     /* at most half the CPUs this worker may use, at least 1 */

static void step_aside(uint32_t host_cpu)
{
    if (++t_colocated < COLOCATED_BEFORE_MOVING)
        return;
    t_colocated = 0;
    /* The CPUs allowed now, not at start: a pin set from outside (taskset, a
     * bench placing its sides) stays, and the thread only moves within it. */
    cpu_set_t allowed;
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0 || host_cpu >= CPU_SETSIZE)
        return;
    cpu_set_t elsewhere = allowed;
    CPU_CLR(host_cpu, &elsewhere);
    if (CPU_COUNT(&elsewhere) == 0)
        return;
    if (sched_setaffinity(0, sizeof elsewhere, &elsewhere) == 0)
        sched_setaffinity(0, sizeof allowed, &allowed);
}

/* A large call (PP_FLAG_NEAR) runs on its caller's CPU, where the bytes the
 * caller just wrote are in cache; the caller yields that CPU meanwhile. The
 * thread stays pinned there while its calls stay large and sleeps between
 * them (a spin would keep the caller off its CPU), so that the caller's next
 * call wakes it there; the first call that is not large restores the CPUs it
 * was allowed before. It only comes within the CPUs allowed at that moment:
 * a pin set from outside (taskset) stays, and the host is told
 * (near_declined), so that its callers wait as for any other call. */
#define LARGE_CALLS_BEFORE_NEAR 2

static _Thread_local int t_near;
static _Thread_local uint32_t t_near_cpu;
static _Thread_local cpu_set_t t_allowed; /* before it came near */

static void leave_near(void)
{
    if (!t_near)
        return;
    t_near = 0;
    /* A pin set from outside meanwhile (anything but the one CPU it came to) stays. */
    cpu_set_t now;
    if (sched_getaffinity(0, sizeof now, &now) != 0 || CPU_COUNT(&now) != 1 || !CPU_ISSET(t_near_cpu, &now))
        return;
    /* Back to the CPUs it was allowed by way of the others, as step_aside
     * would after many calls: the small calls that follow wait spinning, a
     * CPU each, instead of taking turns on the caller's (~10 us each). */
    cpu_set_t elsewhere = t_allowed;
    CPU_CLR(t_near_cpu, &elsewhere);
    if (CPU_COUNT(&elsewhere) > 0)
        sched_setaffinity(0, sizeof elsewhere, &elsewhere);
    sched_setaffinity(0, sizeof t_allowed, &t_allowed);
}

static void come_near(pp_header *h, uint32_t cpu)
{
    if (t_near && cpu == t_near_cpu)
        return;
    leave_near();
    cpu_set_t allowed, there;
    int declined = 1;
    if (cpu < CPU_SETSIZE && sched_getaffinity(0, sizeof allowed, &allowed) == 0 && CPU_ISSET(cpu, &allowed)) {
        CPU_ZERO(&there);
        CPU_SET(cpu, &there);
        if (sched_setaffinity(0, sizeof there, &there) == 0) {
            t_allowed = allowed;
            t_near_cpu = cpu;
            t_near = 1;
            declined = 0;
        }
    }
    if (atomic_load_explicit(&h->near_declined, memory_order_relaxed) != (uint32_t)declined)
        atomic_store_explicit(&h->near_declined, (uint32_t)declined, memory_order_relaxed);
}

/* A thread whose calls keep coming after its spin window has passed stops
 * spinning after them (wait=auto, between calls): its spin only took a CPU
 * from the threads that do have work (with a host calling many bundles in
 * turn, the ones it calls next), and it sleeps anyway. A call that comes
 * within WAY_BACK_WINDOWS windows again (its wake-up included) brings the
 * spin back. */
#define LATE_CALLS_BEFORE_NO_SPIN 2
#define WAY_BACK_WINDOWS 4

static _Thread_local unsigned t_late_calls; /* in a row, between calls */

static int await_sleeping(pp_header *h, pp_slot *s, uint64_t served, int may_retire);

/* Waits until the slot's down_seq moves past `served`. Returns 0 when it
 * does, 1 when asked to stop, 2 when it retired after idle_retire_ms (only
 * `may_retire`: between calls). Spins for the wait window first (the host's
 * next call usually follows at once; not after late calls, above), then
 * sleeps on worker_waiting. */
static int await_frame(pp_header *h, pp_slot *s, uint64_t served, int may_retire)
{
    int mode = g_wait_mode;
    uint64_t entered = mode == PP_WAIT_AUTO ? pp_now_ns() : 0;
    uint64_t window = g_spin_ns + pp_spin_for_bytes(t_moved);
    uint64_t spin_until = mode == PP_WAIT_SPIN    ? UINT64_MAX
                          : mode == PP_WAIT_BLOCK ? 0
                                                  : entered + window;
    int same_cpu = pp_same_cpu(&h->worker_cpu, &h->host_cpu);
    /* Spinning sides want a CPU each; sleeping ones wake each other fastest
     * on one CPU, so wait=block never steps aside (nor does it co-locate them),
     * nor does a thread that came near (it sleeps). */
    if (same_cpu && mode != PP_WAIT_BLOCK && !t_near)
        step_aside(atomic_load_explicit(&h->host_cpu, memory_order_relaxed));
    else
        t_colocated = 0;
    /* Yields from the first step when the CPU is likely shared with the
     * thread we wait for: the host's, or another worker's (a call back out to
     * another bundle, or an answer to one, PP_FLAG_PEER_WAITS). */
    unsigned first = same_cpu || t_cb_yields || t_peer_waits ? PP_PAUSE_SPINS : 1;
    /* Past half the CPUs, a spinning thread only takes a CPU from the threads
     * it waits for: with many calls in flight, wait=auto sleeps at once. */
    int counted = mode == PP_WAIT_AUTO && !t_near; /* near: sleeps at once */
    int between_calls = may_retire && mode == PP_WAIT_AUTO;
    if (between_calls && t_late_calls >= LATE_CALLS_BEFORE_NO_SPIN)
        counted = 0;
    if (counted && atomic_fetch_add(&g_spinners, 1) >= g_spin_cap) {
        atomic_fetch_sub(&g_spinners, 1);
        counted = 0;
    }
    for (unsigned i = first; mode == PP_WAIT_SPIN || counted; i++) {
        if (atomic_load_explicit(&s->down_seq, memory_order_acquire) != served ||
            atomic_load_explicit(&g_stop, memory_order_relaxed))
            break;
        if ((i & 127) == 0 && pp_now_ns() >= spin_until)
            break;
        pp_spin_step(i);
    }
    if (counted)
        atomic_fetch_sub(&g_spinners, 1);
    if (atomic_load_explicit(&s->down_seq, memory_order_acquire) != served) {
        if (between_calls)
            t_late_calls = 0; /* it came while this thread spun */
        return 0;
    }
    if (atomic_load_explicit(&g_stop, memory_order_relaxed))
        return 1;
    int woken = await_sleeping(h, s, served, may_retire);
    if (woken == 0 && between_calls) {
        /* Unspun, the time also counts this thread's wake-up, which a call
         * waits for: one within a few windows brings the spin back. */
        uint64_t late_after = counted ? window : WAY_BACK_WINDOWS * window;
        t_late_calls = pp_now_ns() - entered > late_after ? t_late_calls + 1 : 0;
    }
    return woken;
}

/* await_frame's second half: sleeps on worker_waiting until the frame comes. */
static int await_sleeping(pp_header *h, pp_slot *s, uint64_t served, int may_retire)
{
    uint64_t retire_at = may_retire && h->idle_retire_ms ? pp_now_ns() + h->idle_retire_ms * 1000000ull : UINT64_MAX;
    for (;;) {
        atomic_store(&s->worker_waiting, 1);
        if (atomic_load(&s->down_seq) != served) {
            atomic_store(&s->worker_waiting, 0);
            return 0;
        }
        if (atomic_load(&g_stop))
            return 1;
        pp_futex_wait_until(&s->worker_waiting, 1, retire_at);
        uint32_t asleep = 1;
        if (pp_now_ns() >= retire_at && atomic_compare_exchange_strong(&s->worker_waiting, &asleep, PP_WORKER_RETIRED))
            return 2; /* a frame published meanwhile goes to the thread the host's BIND brings */
    }
}

/* Asks the host thread waiting on this thread's slot to run a call back
 * (see CALL BACKS in channel.h) and waits for its REPLY. Returns NULL when
 * the host replied (err: its AbiError, the message valid until the next call
 * back), or why it could not ask. A CALL arriving instead (a nested call) is
 * refused for now: the host lays out nested calls once it serves call backs. */
static const char *call_back(uint64_t target, uint32_t function, const void *args, uint32_t args_len, void *out,
                             uint32_t out_size, AbiError *err)
{
    static _Thread_local char message[PP_ERR_CAP];
    pp_slot *s = t_slot;
    pp_header *h = (pp_header *)g_base;
    uint64_t offset = PP_ALIGN8(t_payload_used);
    if (!s)
        return "a call back outside a call";
    if (offset + args_len + out_size > g_payload_cap)
        return "the call back's args and out do not fit the slot's payload";
    uint8_t *payload = pp_payload(s);
    if (args_len)
        memcpy(payload + offset, args, args_len);
    s->cb_target = target;
    s->cb_function = function;
    s->cb_depth = 1;
    s->cb_offset = (uint32_t)offset;
    s->cb_args_len = args_len;
    s->cb_out_size = out_size;
    s->up_kind = PP_UP_CALLBACK;
    atomic_store_explicit(&s->up_seq, t_seq, memory_order_release);
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&s->host_waiting, memory_order_relaxed) && atomic_exchange(&s->host_waiting, 0))
        pp_futex_wake(&s->host_waiting, 1);
    if (await_frame(h, s, t_seq, 0))
        return "the worker is stopping";
    t_seq = atomic_load_explicit(&s->down_seq, memory_order_acquire);
    if (s->kind != PP_DOWN_REPLY)
        return "the host answered a call back with a frame that is not a REPLY";
    uint32_t len = s->args_len < PP_ERR_CAP ? s->args_len : PP_ERR_CAP;
    memcpy(message, s->err_msg, len);
    err->code = s->count == PP_STATUS_OK ? s->function : s->function ? s->function : ABI_GENERIC;
    err->message.ptr = (const uint8_t *)message;
    err->message.len = len;
    uint32_t got = s->out_size < out_size ? s->out_size : out_size;
    if (got)
        memcpy(out, payload + offset + args_len, got);
    return NULL;
}

void ppw_call_back_yields(int on) { t_cb_yields = on; }

/* For cb_transport.c: the room a call back's args and out have in this
 * thread's slot (0: the thread serves no slot), and the call back itself. */
uint64_t ppw_call_back_room(void)
{
    uint64_t used = PP_ALIGN8(t_payload_used);
    return t_slot && used < g_payload_cap ? g_payload_cap - used : 0;
}

const char *ppw_call_back(uint64_t target, uint32_t function, const void *args, uint32_t args_len, void *out,
                          uint32_t out_size, AbiError *err)
{
    return call_back(target, function, args, args_len, out, out_size, err);
}

/* W(T): serves one slot's frames until RETIRE or stop. It starts from the
 * slot's last answer: the previous thread of the slot answered everything
 * up to it (RETIRE last), and the host writes the next frame after it. */
static void serve_slot(uint32_t index)
{
    pp_header *h = (pp_header *)g_base;
    pp_slot *s = pp_slot_at(g_base, g_nslots, g_payload_cap, index);
    t_slot = s;
    t_slot_index = index;
    t_tid = gettid();
    uint64_t served = atomic_load_explicit(&s->up_seq, memory_order_acquire);
    unsigned large_run = 0; /* PP_FLAG_NEAR calls in a row */
    while (!await_frame(h, s, served, 1)) {
        served = atomic_load_explicit(&s->down_seq, memory_order_acquire);
        uint32_t kind = s->kind;
        AbiError ok = {ABI_OK, {NULL, 0}};
        if (kind == PP_DOWN_RETIRE)
            return answer(s, served, PP_STATUS_OK, 0, 0, &ok);
        if (kind == PP_DOWN_CALL) {
            t_peer_waits = (s->flags & PP_FLAG_PEER_WAITS) != 0;
            /* A lone large call between small ones stays where it is: coming
             * near and going back costs two moves (~35 us), which only a run
             * of large calls pays back. */
            large_run = s->flags & PP_FLAG_NEAR ? large_run + 1 : 0;
            if (large_run >= LARGE_CALLS_BEFORE_NEAR)
                come_near(h, s->near_cpu);
            else if (!large_run)
                leave_near();
            serve_one(s, served);
            served = t_seq; /* past the REPLYs of its call backs */
        } else
            refuse(s, served, "a frame that is neither a call nor a retire, with no call back waiting");
    }
}

/* A worker thread: parked as a spare until the dispatcher assigns it a slot
 * (assigned = slot + 1), then W(T) for that slot. */
typedef struct ppw_thread {
    pthread_t id;
    _Atomic uint32_t assigned;
    struct ppw_thread *next; /* in g_threads */
} ppw_thread;

/* `assigned` of a spare told to exit: a changed word, so that no wake-up is lost. */
#define STOP_SPARE UINT32_MAX

static ppw_thread *g_threads;     /* every thread started, for ppw_stop (dispatcher-private) */
static ppw_thread **g_slot_owner; /* per slot: its thread, or NULL */
static ppw_thread *g_spares[PPW_SPARE_THREADS];
static unsigned g_nspares;

static void *slot_thread(void *arg)
{
    ppw_thread *t = arg;
    ppw_thread_alt_stack();
    uint32_t assigned;
    while ((assigned = atomic_load(&t->assigned)) == 0)
        pp_futex_wait_until(&t->assigned, 0, UINT64_MAX);
    if (assigned == STOP_SPARE)
        return NULL;
    serve_slot(assigned - 1);
    stack_t off = {.ss_flags = SS_DISABLE}, alt;
    if (sigaltstack(&off, &alt) == 0 && !(alt.ss_flags & SS_DISABLE))
        free(alt.ss_sp); /* ppw_thread_alt_stack's */
    return NULL;
}

static ppw_thread *start_thread(uint32_t assigned)
{
    ppw_thread *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    atomic_store(&t->assigned, assigned);
    if (pthread_create(&t->id, NULL, slot_thread, t) != 0) {
        free(t);
        return NULL;
    }
    t->next = g_threads;
    g_threads = t;
    return t;
}

static void forget_thread(ppw_thread *gone)
{
    for (ppw_thread **p = &g_threads; *p; p = &(*p)->next)
        if (*p == gone) {
            *p = gone->next;
            break;
        }
    free(gone);
}

/* BIND(index): the slot's previous thread (if any) answered RETIRE before
 * the host could send this, so it is exiting: join it, then hand the slot to
 * a spare and start the next spare. A slot that gets no thread (no memory)
 * is never answered: the host's deadline or close ends its calls. */
static void bind_slot(uint32_t index)
{
    if (index >= g_nslots)
        return;
    ppw_thread *old = g_slot_owner[index];
    if (old) {
        pthread_join(old->id, NULL);
        forget_thread(old);
    }
    ppw_thread *t = NULL;
    if (g_nspares) {
        t = g_spares[--g_nspares];
        atomic_store(&t->assigned, index + 1);
        pp_futex_wake(&t->assigned, 1);
    } else {
        t = start_thread(index + 1);
    }
    g_slot_owner[index] = t;
    unsigned want = g_max_threads < PPW_SPARE_THREADS ? g_max_threads : PPW_SPARE_THREADS;
    while (g_nspares < want) {
        ppw_thread *spare = start_thread(0);
        if (!spare)
            break;
        g_spares[g_nspares++] = spare;
    }
}

/* Waits until ring entry `r` carries ticket `seq - 1` (BINDs are rare: the
 * dispatcher sleeps at once). Returns 0 when it does, 1 when asked to stop. */
static int await_bind(pp_header *h, pp_bind *r, uint64_t seq)
{
    for (;;) {
        atomic_store(&h->worker_sleeping, 1);
        if (atomic_load(&r->seq) == seq) {
            atomic_store(&h->worker_sleeping, 0);
            return 0;
        }
        if (atomic_load(&g_stop))
            return 1;
        pp_futex_wait_until(&h->worker_sleeping, 1, UINT64_MAX);
    }
}

static void stop_threads(void)
{
    for (uint32_t i = 0; i < g_nslots; i++) {
        pp_slot *s = pp_slot_at(g_base, g_nslots, g_payload_cap, i);
        atomic_store(&s->worker_waiting, 0);
        pp_futex_wake(&s->worker_waiting, INT32_MAX);
    }
    for (unsigned i = 0; i < g_nspares; i++) {
        atomic_store(&g_spares[i]->assigned, STOP_SPARE);
        pp_futex_wake(&g_spares[i]->assigned, 1);
    }
    g_nspares = 0;
    while (g_threads) {
        pthread_join(g_threads->id, NULL);
        forget_thread(g_threads);
    }
}

int ppw_serve(int wait_mode, uint64_t spin_ns)
{
    cpu_set_t allowed;
    int cpus = sched_getaffinity(0, sizeof allowed, &allowed) == 0 ? CPU_COUNT(&allowed) : 1;
    g_spin_cap = cpus / 2 > 1 ? cpus / 2 : 1;
    g_wait_mode = wait_mode;
    g_spin_ns = spin_ns;
    g_slot_owner = calloc(g_nslots, sizeof *g_slot_owner);
    if (!g_slot_owner)
        return -1;
    pp_header *h = (pp_header *)g_base;
    pp_bind *ring = pp_ring(g_base);
    unsigned want = g_max_threads < PPW_SPARE_THREADS ? g_max_threads : PPW_SPARE_THREADS;
    while (g_nspares < want) {
        ppw_thread *spare = start_thread(0);
        if (!spare)
            break;
        g_spares[g_nspares++] = spare;
    }
    for (uint64_t ticket = 0;; ticket++) {
        pp_bind *r = &ring[ticket % g_nslots];
        if (await_bind(h, r, ticket + 1))
            break;
        bind_slot(r->slot);
    }
    stop_threads();
    return 0;
}

void ppw_stop(void)
{
    atomic_store(&g_stop, 1);
    pp_header *h = (pp_header *)g_base;
    atomic_store(&h->worker_sleeping, 0);
    pp_futex_wake(&h->worker_sleeping, 1);
}

static void *watchdog(void *arg)
{
    struct pollfd p = {(int)(intptr_t)arg, POLLRDHUP, 0};
    for (;;) {
        if (poll(&p, 1, -1) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)))
            _exit(0);
    }
    return NULL;
}

int ppw_start_watchdog(int fd)
{
    pthread_t t;
    if (pthread_create(&t, NULL, watchdog, (void *)(intptr_t)fd) != 0)
        return -1;
    pthread_detach(t);
    return 0;
}
