/*
 * The shared-memory data plane between a host and one worker.
 *
 * One segment per worker, created by the host (mode 0600, random name,
 * unlinked before the worker starts: the worker inherits the fd), laid out as
 *
 *   +-----------------+  offset 0
 *   | pp_header       |  magic, protocol, geometry, ring tail, sleep flag,
 *   |                 |  request semaphore (worker sleeps on it)
 *   +-----------------+  PP_HEADER_SIZE
 *   | ring[nslots]    |  submission queue: slot numbers in arrival order
 *   +-----------------+
 *   | slot 0          |  pp_slot control block (request | response lines),
 *   |   payload       |  then payload_cap bytes: args at 0, out at
 *   +-----------------+  PP_ALIGN8(args_len)
 *   | slot 1 ...      |
 *
 * A call: the host takes a free slot (host-private free list), writes the
 * request and bumps the slot's req_seq (release), then publishes the slot
 * number in the ring (multi-producer, Vyukov-style per-entry sequence). The
 * worker takes ring entries in order, runs the call, writes the response and
 * stores done_seq = req_seq (release). Either side spins for a bounded window
 * and then sleeps on a process-shared semaphore, announcing the sleep with a
 * flag; the other side posts only when it sees the flag (Dekker pattern, so
 * both the flag store and the re-check are sequentially consistent).
 *
 * Trust: the host never follows a pointer from the segment and takes every
 * length it reads back from the worker as untrusted (see channel_host.c). No
 * mutex lives here: a dying worker could leave it locked.
 */
#ifndef PP_CHANNEL_H
#define PP_CHANNEL_H

#include <sched.h>
#include <semaphore.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define PP_PROTOCOL_VERSION 1u
#define PP_MAGIC 0x70706c67u /* "pplg" */
#define PP_CACHE_LINE 64
#define PP_ERR_CAP 1024      /* bytes of an AbiError message carried back */
#define PP_ALIGN8(n) (((n) + 7u) & ~(size_t)7u)

/* How a side waits for the other: spin for a window then sleep, only spin,
 * or only sleep. */
#define PP_WAIT_AUTO 0
#define PP_WAIT_SPIN 1
#define PP_WAIT_BLOCK 2

/* Slot status, written by the worker. */
enum {
    PP_STATUS_OK = 0,          /* the plugin ran; err_code is its AbiError code */
    PP_STATUS_BAD_REQUEST = 1, /* the worker refused the request (err_* say why) */
};

typedef struct pp_header {
    uint32_t magic;
    uint32_t protocol_version;
    uint32_t nslots;
    uint32_t reserved;
    uint64_t payload_cap;
    uint64_t slot_stride;
    alignas(PP_CACHE_LINE) _Atomic uint64_t ring_tail;  /* host: next ticket */
    alignas(PP_CACHE_LINE) _Atomic uint32_t worker_sleeping;
    sem_t request_sem;
} pp_header;

typedef struct pp_ring_entry {
    _Atomic uint64_t seq; /* ticket + 1 once the entry for `ticket` is published */
    uint32_t slot;
    uint32_t reserved;
} pp_ring_entry;

typedef struct pp_slot {
    /* request line: written by the host before req_seq */
    _Atomic uint64_t req_seq;
    uint32_t contract;   /* index of the interface in the worker's registry */
    uint32_t function;
    uint64_t instance;   /* 0: the null instance */
    uint64_t args_len;
    uint64_t out_size;
    /* response line: written by the worker before done_seq */
    alignas(PP_CACHE_LINE) _Atomic uint64_t done_seq;
    uint32_t status;
    uint32_t err_code;
    uint32_t err_len;
    _Atomic uint32_t host_waiting;
    sem_t response_sem;
    char err_msg[PP_ERR_CAP];
} pp_slot;

#define PP_ROUND_LINE(n) ((((size_t)(n)) + PP_CACHE_LINE - 1) / PP_CACHE_LINE * PP_CACHE_LINE)
#define PP_HEADER_SIZE PP_ROUND_LINE(sizeof(pp_header))
#define PP_SLOT_HEADER_SIZE PP_ROUND_LINE(sizeof(pp_slot))

static inline size_t pp_ring_offset(void) { return PP_HEADER_SIZE; }

static inline size_t pp_slots_offset(uint32_t nslots)
{
    return PP_HEADER_SIZE + PP_ROUND_LINE((size_t)nslots * sizeof(pp_ring_entry));
}

static inline size_t pp_slot_stride(uint64_t payload_cap)
{
    return PP_SLOT_HEADER_SIZE + PP_ROUND_LINE(payload_cap);
}

static inline size_t pp_segment_size(uint32_t nslots, uint64_t payload_cap)
{
    return pp_slots_offset(nslots) + (size_t)nslots * pp_slot_stride(payload_cap);
}

static inline pp_ring_entry *pp_ring(uint8_t *base) { return (pp_ring_entry *)(base + pp_ring_offset()); }

static inline pp_slot *pp_slot_at(uint8_t *base, uint32_t nslots, uint64_t payload_cap, uint32_t i)
{
    return (pp_slot *)(base + pp_slots_offset(nslots) + (size_t)i * pp_slot_stride(payload_cap));
}

static inline uint8_t *pp_payload(pp_slot *slot) { return (uint8_t *)slot + PP_SLOT_HEADER_SIZE; }

static inline uint64_t pp_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Sleeps on `sem` until it is posted (returns 1) or the monotonic clock
 * passes deadline_ns (returns 0). EINTR counts as a wake-up: callers loop. */
static inline int pp_sem_wait_until(sem_t *sem, uint64_t deadline_ns)
{
    struct timespec ts = {(time_t)(deadline_ns / 1000000000u), (long)(deadline_ns % 1000000000u)};
    return sem_clockwait(sem, CLOCK_MONOTONIC, &ts) == 0;
}

/* One step of a busy wait. The first PP_PAUSE_SPINS steps only hint the
 * CPU (the peer is running on another core and answers within ~1 us); after
 * that each step yields the core, because when the scheduler has put both
 * processes on one core, spinning only delays the peer we wait for. */
#define PP_PAUSE_SPINS 512u

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
