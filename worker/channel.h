/*
 * The shared-memory data plane between a host and one worker.
 *
 * One segment per worker, created by the host (mode 0600, random name,
 * unlinked before the worker starts: the worker inherits the fd):
 *
 *   +---------------------+  0
 *   | pp_header           |  magic, protocol, geometry; worker_sleeping
 *   |                     |  (a futex word: the worker sleeps on it)
 *   +---------------------+  PP_HEADER_SIZE
 *   | ring[nslots]        |  requests in arrival order, one cache line each:
 *   |                     |  seq, slot, contract, function, count, sizes,
 *   |                     |  and up to PP_INLINE_ARGS bytes of args
 *   +---------------------+  pp_slots_offset(nslots)
 *   | slot 0              |  response line: done_seq, status, AbiError code,
 *   |                     |  up to PP_INLINE_OUT bytes of out; then the
 *   |                     |  wake-up line (host_waiting, a futex word), the
 *   |                     |  error message, and payload_cap bytes of payload
 *   | slot 1 ...          |
 *   +---------------------+  pp_arena_offset(...)
 *   | arena               |  arena_cap bytes for the one call at a time whose
 *   |                     |  args + out exceed a slot's payload
 *   +---------------------+
 *
 * A call: the host takes a free slot (host-private bitmap), writes request
 * ticket t into ring[t % nslots] and publishes it with seq = t + 1 (release).
 * The worker takes ring entries in order, runs the call, writes the answer
 * into the slot's response line and stores done_seq = t + 1 (release). A small
 * call (args <= PP_INLINE_ARGS, out <= PP_INLINE_OUT) thus moves two cache
 * lines, one each way. Bigger args and outs go to the slot's payload, then to
 * the arena (`spill`). A batch (count > 1) runs one function over `count`
 * packed argument records with one hand-off.
 *
 * Why ring entry t is free when ticket t + nslots is taken: the taker holds a
 * slot, so of the nslots tickets before it at least one has been answered
 * (each unanswered one holds a slot); the worker serves in ticket order, so
 * ticket t was served before any later one.
 *
 * Waiting: either side spins for a bounded window, then sets a flag word and
 * sleeps on it with futex(2); the other side wakes it only when it sees the
 * flag (Dekker: the flag store and the re-check are sequentially consistent
 * on both sides, so no wake-up is lost). Raw futex calls, not sem_t: glibc
 * aborts the calling process when a semaphore it is handed was scribbled
 * over, and the host must survive a worker that scribbles.
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

#define PP_PROTOCOL_VERSION 7u
#define PP_MAGIC 0x70706c67u /* "pplg" */
#define PP_CACHE_LINE 64
#define PP_ERR_CAP 1024 /* bytes of an AbiError message carried back */
#define PP_INLINE_ARGS 24
#define PP_INLINE_OUT 32
#define PP_MAX_SLOTS 4096
#define PP_CB_CAP 16384 /* bytes of a call-back request or reply */
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

/* Function ids past any contract's functions: instance management. */
#define PP_FN_CREATE_INSTANCE 0xFFFFFFFFu  /* args -> create_instance; out: u32 handle */
#define PP_FN_DESTROY_INSTANCE 0xFFFFFFFEu /* destroys request.instance */

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

/* Response status, written by the worker. */
#define PP_STATUS_OK 0          /* the plugin ran; err_code is its AbiError code */
#define PP_STATUS_BAD_REQUEST 1 /* the worker refused the request (err_* say why) */

typedef struct pp_header {
    uint32_t magic;
    uint32_t protocol_version;
    uint32_t nslots;
    uint32_t reserved;
    uint64_t payload_cap;
    uint64_t arena_cap;
    alignas(PP_CACHE_LINE) _Atomic uint32_t worker_sleeping;
    _Atomic uint32_t worker_cpu; /* where each side last waited (see pp_same_cpu) */
    _Atomic uint32_t host_cpu;
} pp_header;

typedef struct pp_request {
    alignas(PP_CACHE_LINE) _Atomic uint64_t seq; /* ticket + 1 once published */
    uint32_t slot;
    uint32_t contract; /* index of the interface in the worker's registry */
    uint32_t function;
    uint32_t count;    /* calls in this request: 1, or a batch */
    uint32_t args_len; /* per call */
    uint32_t out_size; /* per call */
    uint32_t instance; /* 0: the contract's default instance, else a PP_FN_CREATE_INSTANCE handle */
    uint16_t fixups;   /* entries in the fixup table (only with count == 1) */
    uint8_t spill;     /* PP_IN_SLOT or PP_IN_ARENA */
    uint8_t reserved;
    uint8_t args[PP_INLINE_ARGS];
} pp_request;

typedef struct pp_fixup {
    uint32_t offset;
    uint32_t kind;
} pp_fixup;

typedef struct pp_slot {
    /* response line: written by the worker, done_seq last */
    alignas(PP_CACHE_LINE) _Atomic uint64_t done_seq;
    uint32_t status;
    uint32_t err_code;
    uint32_t err_len;
    uint32_t done_count; /* calls that completed Ok (a batch stops at the first error) */
    uint8_t out[PP_INLINE_OUT];
    uint32_t ret_len; /* bytes of the return area used (fixups) */
    uint32_t answers; /* answers written to this slot so far (wraps): lets the host spot a second one */
    /* wake-up line */
    alignas(PP_CACHE_LINE) _Atomic uint32_t host_waiting;
    char err_msg[PP_ERR_CAP];
    /* Calls back (worker/callback.h): while it serves this slot's call, the
     * worker may ask the host thread waiting here for something (a host
     * contract, another bundle) and waits for the answer in the same place.
     * cb_seq counts requests (worker), cb_done answers (host); cb_len is the
     * request's, then the reply's, length in cb[]. */
    alignas(PP_CACHE_LINE) _Atomic uint64_t cb_seq;
    _Atomic uint64_t cb_done;
    _Atomic uint32_t worker_waiting; /* futex word: the worker sleeps here for the answer */
    uint32_t cb_len;
    alignas(PP_CACHE_LINE) uint8_t cb[PP_CB_CAP];
} pp_slot;

_Static_assert(sizeof(pp_request) == PP_CACHE_LINE, "a request is one cache line");
_Static_assert(offsetof(pp_slot, host_waiting) == PP_CACHE_LINE, "the response is one cache line");

#define PP_HEADER_SIZE PP_ROUND_LINE(sizeof(pp_header))
#define PP_SLOT_HEADER_SIZE PP_ROUND_LINE(sizeof(pp_slot))

static inline size_t pp_slots_offset(uint32_t nslots)
{
    return PP_HEADER_SIZE + (size_t)nslots * sizeof(pp_request);
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

static inline pp_request *pp_ring(uint8_t *base) { return (pp_request *)(base + PP_HEADER_SIZE); }

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
