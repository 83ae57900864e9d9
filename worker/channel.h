/*
 * The shared-memory data plane between a host and one worker.
 *
 * One segment per worker, created by the host (mode 0600, random name,
 * unlinked before the worker starts: the worker inherits the fd):
 *
 *   +---------------------+  0
 *   | pp_header           |  magic, protocol, geometry, max_threads;
 *   |                     |  worker_sleeping (the dispatcher's futex word);
 *   |                     |  async_bell (the host's completion futex word)
 *   +---------------------+  PP_HEADER_SIZE
 *   | ring[nslots]        |  BIND messages in arrival order, one cache line
 *   |                     |  each: "give slot i a thread of its own"
 *   +---------------------+  pp_slots_offset(nslots)
 *   | slot 0              |  down line (host -> worker frame), wake line
 *   |                     |  (two futex flags + the call-back descriptor),
 *   |                     |  up line (worker -> host frame), the error
 *   |                     |  message, and payload_cap bytes of payload
 *   | slot 1 ...          |
 *   +---------------------+  pp_arena_offset(...)
 *   | arena               |  arena_cap bytes for the one call at a time whose
 *   |                     |  args + out exceed a slot's payload
 *   +---------------------+
 *
 * THREADS. A slot is a conversation between one host thread T and one worker
 * thread W(T). The host leases slot i to T on T's first call (host-private
 * state: lease words in _channel.c) and sends BIND(i) through the ring; the
 * worker's dispatcher thread hands slot i to a parked spare thread (it keeps
 * PPW_SPARE_THREADS parked, so a first call does not wait for
 * pthread_create) and makes a new spare. From then on W(T) serves every
 * frame on slot i, and only those: T's calls run on W(T), calls of other
 * host threads on other worker threads, at the same time. When T exits (or
 * its lease is taken over, see below), the host sends RETIRE on the slot:
 * W(T) answers it and exits, so the next owner of slot i gets a fresh thread
 * (fresh thread-local state), never T's. A slot thread idle for the
 * header's idle_retire_ms (if set) exits too, swapping worker_waiting from 1
 * (asleep) to PP_WORKER_RETIRED: the host, which reads that flag when it
 * hands over a frame, then sends BIND for the slot, and a fresh thread serves
 * the frame (only one of the swap and the host's exchange of the flag wins).
 *
 * FRAMES. Each slot carries one frame at a time, alternately written by the
 * two sides; every frame has a sequence number, and both numbers only grow:
 *
 *     host                               worker thread W(T)
 *     down_seq = k   CALL  ----------->  runs the call
 *                    <-----------  ANSWER  up_seq = k        (call done)
 *   or, while the call runs, a call back:
 *                    <---------  CALLBACK  up_seq = k        (cb descriptor)
 *     runs it on T
 *     down_seq = k+1 REPLY ----------->  the plugin goes on
 *                    <-----------  ANSWER  up_seq = k+1      (call done)
 *   a nested call (the call back calls this bundle again) is a CALL in
 *   place of the REPLY: W(T) serves it on its own stack, answers it, and
 *   waits on for the REPLY (up to PP_MAX_DEPTH frames deep, cb_depth). The
 *   host lays a nested call's args and out past the call back's; until it
 *   serves call backs (a later step), the worker refuses nested CALLs.
 *     down_seq = k   RETIRE ---------->  W(T) answers and exits
 *                    <-----------  ANSWER  up_seq = k
 *
 * So the worker writes up_seq = down_seq of the frame it responds to, and
 * the host writes down_seq = up_seq + 1: while the host waits for frame k,
 * up_seq is k - 1 or k, and anything else is a forged answer or scribbling.
 * A CALL's fields are on the down line (small args inline); its answer's on
 * the up line (small outs inline); bigger args and outs go to the slot's
 * payload, then to the arena (`spill`). A batch (count > 1) runs one
 * function over `count` packed argument records with one hand-off.
 *
 * CALL BACKS (protocol level; no plugin API emits them yet): a CALLBACK frame
 * names in the wake line's cb_* fields what to run (cb_target: a host
 * contract id or a bundle id, cb_function, cb_depth) and where its args and
 * out live: cb_args_len bytes at payload offset cb_offset (8-aligned, at or
 * past the running call's own spill bytes), its out (cb_out_size bytes) right
 * after them. The host answers with a REPLY frame whose `count` is a
 * PP_STATUS_*, `function` the AbiError code, `out_size` the out bytes written,
 * `args_len` the message length and the message in err_msg. A host that
 * serves no call backs replies PP_STATUS_NO_CALLBACKS (AbiError
 * HostContractNotFound). PP_FN_CALL_BACK_PROBE exercises the round trip.
 *
 * Async calls (flag PP_FLAG_ASYNC): after the ANSWER, the worker also bumps
 * the header's async_bell and wakes it, so one host thread can wait for the
 * answers of many slots at once.
 *
 * Waiting: either side spins for a bounded window, then sets its flag word
 * (worker_waiting / host_waiting) and sleeps on it with futex(2); the other
 * side wakes it only when it sees the flag (Dekker: the flag store and the
 * re-check are sequentially consistent on both sides, so no wake-up is
 * lost). Raw futex calls, not sem_t: glibc aborts the calling process when a
 * semaphore it is handed was scribbled over, and the host must survive a
 * worker that scribbles. Parked threads (spares, threads of idle slots) are
 * asleep in the kernel and cost nothing.
 *
 * Trust: the host never follows a pointer from the segment, computes every
 * offset itself, and reads each length the worker wrote once, bounds-checked
 * (see polyplug_isolated/_channel.c). No mutex lives here: a dying worker
 * could leave it locked.
 */
#ifndef PP_CHANNEL_H
#define PP_CHANNEL_H

#include <sched.h>
#include <linux/futex.h>
#include <semaphore.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PP_PROTOCOL_VERSION 8u
#define PP_MAGIC 0x70706c67u /* "pplg" */
#define PP_CACHE_LINE 64
#define PP_ERR_CAP 1024 /* bytes of an AbiError message carried back */
#define PP_INLINE_ARGS 24
#define PP_INLINE_OUT 32
#define PP_MAX_SLOTS 4096
#define PP_MAX_DEPTH 16 /* nested call-back frames on one slot */
#define PP_ALIGN8(n) (((n) + 7u) & ~(uint64_t)7u)
#define PP_ROUND_LINE(n) ((((size_t)(n)) + PP_CACHE_LINE - 1) / PP_CACHE_LINE * PP_CACHE_LINE)

/* How a side waits for the other: spin for a window then sleep, only spin,
 * or only sleep. */
#define PP_WAIT_AUTO 0
#define PP_WAIT_SPIN 1
#define PP_WAIT_BLOCK 2

/* Where args/out that are not inline live. */
#define PP_IN_SLOT 0
#define PP_IN_ARENA 1

/* Function ids past any contract's functions: instance management, and a
 * self-test of the call-back round trip. */
#define PP_FN_CREATE_INSTANCE 0xFFFFFFFFu  /* args -> create_instance; out: u32 handle */
#define PP_FN_DESTROY_INSTANCE 0xFFFFFFFEu /* destroys request.instance */
#define PP_FN_CALL_BACK_PROBE 0xFFFFFFFDu  /* the worker thread asks for a call back (cb_target 0) and
                                              answers with the host's REPLY: a protocol self-test */

/* Pointer fixups: how pointers cross the process boundary without the host
 * ever holding one. The table (pp_fixup[fixups]) follows the args. */
#define PP_FIX_ARG_POINTER 0 /* args+offset holds an offset into args (UINT64_MAX: NULL); the
                                worker makes it a pointer before the call */
#define PP_FIX_OUT_VIEW 1    /* out+offset holds a StringView the plugin returned: the worker
                                copies its bytes to the return area and rewrites ptr as the
                                offset there (UINT64_MAX: NULL) */
#define PP_FIX_OUT_BUFFER 2  /* the same for a Buffer, which the worker then frees with
                                host->free(ptr, cap, 1) and whose cap becomes len */
#define PP_FIX_RETURN_CAP 3  /* offset = the most return-area bytes the host will read */
#define PP_NULL_OFFSET UINT64_MAX

/* Response status, written by the worker (and by the host in a REPLY). */
#define PP_STATUS_OK 0           /* the plugin ran; err_code is its AbiError code */
#define PP_STATUS_BAD_REQUEST 1  /* the worker refused the request (err_* say why) */
#define PP_STATUS_NO_CALLBACKS 2 /* REPLY: this host serves no call backs */

/* Frame kinds: down (host -> worker) and up (worker -> host). */
#define PP_DOWN_CALL 1
#define PP_DOWN_REPLY 2
#define PP_DOWN_RETIRE 3
#define PP_UP_ANSWER 1
#define PP_UP_CALLBACK 2

/* worker_waiting of a slot whose thread left after idle_retire_ms: the host
 * that finds it there when it hands over a frame sends BIND for the slot. */
#define PP_WORKER_RETIRED 3u

/* Down-frame flags. */
#define PP_FLAG_ASYNC 1u    /* ring the header's async_bell after the answer */
#define PP_FLAG_OUT_KEPT 2u /* the out is the caller's, in place in the arena (buffers()): the worker
                               leaves it as it is instead of zeroing it (no pass over a megabyte) */
#define PP_FLAG_PEER_WAITS 4u /* sent while the host answers a call back: another worker's thread waits
                                 for this answer, yielding the CPU it likely shares with this one, so
                                 after answering the slot thread yields from its first wait step */
#define PP_FLAG_NEAR 8u     /* a large call: its worker thread runs it on the caller's CPU (near_cpu),
                               within the CPUs it is allowed, while the caller yields (see PP_NEAR_BYTES) */

/* Bytes a call moves through the slot or arena (pp_layout.spill_bytes) from
 * which, in wait=auto, it runs on the caller's CPU: past this size, moving
 * what the caller just wrote to another core's cache costs more than a
 * hand-over on one CPU. Measured on a 2-core Zen 4 VM (a private L2 per
 * core) with the in-place payload echo, interleaved: at 128 KiB moved the
 * two ways tie (10-13 us), at 256 KiB the caller's CPU is 1.4-1.9x faster
 * (12-19 us against 20-26 us), at 2 MiB (a 1 MiB echo) 1.6-2x. */
#define PP_NEAR_BYTES (256u << 10)

typedef struct pp_header {
    uint32_t magic;
    uint32_t protocol_version;
    uint32_t nslots;
    uint32_t max_threads; /* slot threads the worker may run at once */
    uint64_t payload_cap;
    uint64_t arena_cap;
    uint32_t idle_retire_ms; /* a slot thread idle this long exits (0: never), see RETIRED */
    uint32_t reserved;
    alignas(PP_CACHE_LINE) _Atomic uint32_t worker_sleeping; /* the dispatcher sleeps on it */
    _Atomic uint32_t worker_cpu; /* where each side last waited (see pp_same_cpu) */
    _Atomic uint32_t host_cpu;
    _Atomic uint32_t near_declined; /* 1: the last PP_FLAG_NEAR call could not come to its caller's CPU */
    alignas(PP_CACHE_LINE) _Atomic uint32_t async_bell; /* bumped after each async answer */
    _Atomic uint32_t async_waiting;                     /* the host sleeps on async_bell */
} pp_header;

/* A ring entry: BIND(slot). */
typedef struct pp_bind {
    alignas(PP_CACHE_LINE) _Atomic uint64_t seq; /* ticket + 1 once published */
    uint32_t slot;
} pp_bind;

typedef struct pp_fixup {
    uint32_t offset;
    uint32_t kind;
} pp_fixup;

typedef struct pp_slot {
    /* down line: written by the host, down_seq last */
    alignas(PP_CACHE_LINE) _Atomic uint64_t down_seq;
    uint16_t kind;     /* PP_DOWN_* */
    uint8_t flags;     /* PP_FLAG_* */
    uint8_t spill;     /* PP_IN_SLOT or PP_IN_ARENA */
    uint32_t contract; /* index of the interface in the worker's registry */
    uint32_t function; /* REPLY: the AbiError code */
    uint32_t count;    /* calls in this request: 1, or a batch; REPLY: its PP_STATUS_* */
    uint32_t args_len; /* per call */
    uint32_t out_size; /* per call; REPLY: out bytes written */
    uint32_t instance; /* 0: the contract's default instance, else a PP_FN_CREATE_INSTANCE handle */
    uint16_t fixups;   /* entries in the fixup table (only with count == 1) */
    uint16_t near_cpu; /* PP_FLAG_NEAR: the CPU the caller runs on */
    uint8_t args[PP_INLINE_ARGS];
    /* wake line: the two sleep flags, and the descriptor of a CALLBACK frame.
     * Between the down and up lines: CPUs fetch lines in 128-byte pairs, and
     * the two hot lines, written by different sides, must not share one. */
    alignas(PP_CACHE_LINE) _Atomic uint32_t host_waiting;
    _Atomic uint32_t worker_waiting;
    uint64_t cb_target; /* host contract id or bundle id */
    uint32_t cb_function;
    uint32_t cb_depth;
    uint32_t cb_offset; /* payload offset of the call back's args; its out follows them */
    uint32_t cb_args_len;
    uint32_t cb_out_size;
    /* up line: written by the worker, up_seq last */
    alignas(PP_CACHE_LINE) _Atomic uint64_t up_seq;
    uint16_t up_kind; /* PP_UP_* */
    uint16_t status;
    uint32_t err_code;
    uint32_t err_len;
    uint32_t done_count; /* calls that completed Ok (a batch stops at the first error) */
    uint8_t out[PP_INLINE_OUT];
    uint32_t ret_len; /* bytes of the return area used (fixups) */
    uint32_t answers; /* answers written to this slot so far (wraps): lets the host spot a second one */
    char err_msg[PP_ERR_CAP];
} pp_slot;

_Static_assert(sizeof(pp_bind) == PP_CACHE_LINE, "a ring entry is one cache line");
_Static_assert(offsetof(pp_slot, host_waiting) == PP_CACHE_LINE, "the down frame is one cache line");
_Static_assert(offsetof(pp_slot, up_seq) == 2 * PP_CACHE_LINE, "the wake line is one cache line");
_Static_assert(offsetof(pp_slot, err_msg) == 3 * PP_CACHE_LINE, "the up frame is one cache line");

#define PP_HEADER_SIZE PP_ROUND_LINE(sizeof(pp_header))
#define PP_SLOT_HEADER_SIZE PP_ROUND_LINE(sizeof(pp_slot))

static inline size_t pp_slots_offset(uint32_t nslots)
{
    return PP_HEADER_SIZE + (size_t)nslots * sizeof(pp_bind);
}

static inline size_t pp_slot_stride(uint64_t payload_cap)
{
    return PP_SLOT_HEADER_SIZE + PP_ROUND_LINE(payload_cap);
}

static inline size_t pp_arena_offset(uint32_t nslots, uint64_t payload_cap)
{
    return pp_slots_offset(nslots) + (size_t)nslots * pp_slot_stride(payload_cap);
}

static inline size_t pp_segment_size(uint32_t nslots, uint64_t payload_cap, uint64_t arena_cap)
{
    return pp_arena_offset(nslots, payload_cap) + PP_ROUND_LINE(arena_cap);
}

static inline pp_bind *pp_ring(uint8_t *base) { return (pp_bind *)(base + PP_HEADER_SIZE); }

static inline pp_slot *pp_slot_at(uint8_t *base, uint32_t nslots, uint64_t payload_cap, uint32_t i)
{
    return (pp_slot *)(base + pp_slots_offset(nslots) + (size_t)i * pp_slot_stride(payload_cap));
}

static inline uint8_t *pp_payload(pp_slot *slot) { return (uint8_t *)slot + PP_SLOT_HEADER_SIZE; }

/* Where a request's parts live, computed the same way on both sides from
 * (count, args_len, out_size, fixups). In the spill region (slot payload or
 * arena): args, the fixup table, out, then the return area, which takes the
 * rest. `spill_bytes` is what the region must hold before the return area. */
typedef struct pp_layout {
    int args_inline;
    int out_inline;
    uint64_t fixup_offset;
    uint64_t out_offset;
    uint64_t spill_bytes; /* also where the return area starts (8-aligned) */
} pp_layout;

static inline pp_layout pp_layout_of(uint32_t count, uint64_t args_len, uint64_t out_size, uint32_t fixups)
{
    pp_layout l;
    uint64_t all_args = (uint64_t)count * args_len, all_out = (uint64_t)count * out_size;
    l.args_inline = count == 1 && fixups == 0 && args_len <= PP_INLINE_ARGS;
    l.out_inline = count == 1 && fixups == 0 && out_size <= PP_INLINE_OUT;
    l.fixup_offset = l.args_inline ? 0 : PP_ALIGN8(all_args);
    l.out_offset = l.fixup_offset + (uint64_t)fixups * sizeof(pp_fixup);
    l.spill_bytes = PP_ALIGN8(l.out_offset + (l.out_inline ? 0 : all_out));
    return l;
}

static inline uint64_t pp_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Sleeps while *word == expected, until woken or the monotonic clock passes
 * deadline_ns (UINT64_MAX: no deadline). Any return may be spurious (EINTR,
 * EAGAIN when the word already changed): callers re-check and loop. The
 * words live in shared memory, so no FUTEX_PRIVATE_FLAG. */
static inline void pp_futex_wait_until(_Atomic uint32_t *word, uint32_t expected, uint64_t deadline_ns)
{
    struct timespec ts = {(time_t)(deadline_ns / 1000000000u), (long)(deadline_ns % 1000000000u)};
    syscall(SYS_futex, word, FUTEX_WAIT_BITSET, expected, deadline_ns == UINT64_MAX ? NULL : &ts, NULL,
            FUTEX_BITSET_MATCH_ANY);
}

static inline void pp_futex_wake(_Atomic uint32_t *word, int waiters)
{
    syscall(SYS_futex, word, FUTEX_WAKE, waiters, NULL, NULL, 0);
}

/* Host-private semaphores (never in the segment): waits until posted or
 * the deadline passes; 1 when posted. */
static inline int pp_sem_wait_until(sem_t *sem, uint64_t deadline_ns)
{
    struct timespec ts = {(time_t)(deadline_ns / 1000000000u), (long)(deadline_ns % 1000000000u)};
    return sem_clockwait(sem, CLOCK_MONOTONIC, &ts) == 0;
}

/* One step of a busy wait. The first PP_PAUSE_SPINS steps only hint the
 * CPU (the peer is running on another core and answers within ~1 us); after
 * that each step yields the core, because when the scheduler has put both
 * processes on one core, spinning only delays the peer we wait for. */
#define PP_PAUSE_SPINS 64u

/* How much longer than the spin window a side keeps spinning after a call
 * that moved `bytes` through the slot or arena: the other side's next step
 * (writing the next megabyte, copying this one) takes time in proportion,
 * and a sleep costs a wake-up (tens of microseconds on a VM) each way.
 * 16 bytes a nanosecond, at most 2 ms. */
static inline uint64_t pp_spin_for_bytes(uint64_t bytes)
{
    uint64_t ns = bytes / 16;
    return ns < 2000000u ? ns : 2000000u;
}

/* Publishes the CPU this side runs on (stored only when it changed, to keep
 * the line quiet) and tells whether the other side last waited on the same
 * one. When both processes share a core, every pause spent spinning is time
 * the peer cannot run: such a wait yields from its first step. */
static inline int pp_same_cpu(_Atomic uint32_t *mine, _Atomic uint32_t *theirs)
{
    uint32_t cpu = (uint32_t)sched_getcpu();
    if (atomic_load_explicit(mine, memory_order_relaxed) != cpu)
        atomic_store_explicit(mine, cpu, memory_order_relaxed);
    return atomic_load_explicit(theirs, memory_order_relaxed) == cpu;
}

static inline void pp_spin_step(unsigned i)
{
    if (i >= PP_PAUSE_SPINS) {
        sched_yield();
        return;
    }
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

#endif
