/* The host-side data-plane API, as exposed to Python through cffi. */
#ifndef PP_CHANNEL_HOST_H
#define PP_CHANNEL_HOST_H

#include <stddef.h>
#include <stdint.h>

#include "channel.h" /* pp_fixup, PP_FIX_* */

#define PP_CONN_READY 0
#define PP_CONN_DRAINING 1
#define PP_CONN_DEAD 2

/* What a call returns. */
#define PP_CALL_OK 0
#define PP_CALL_PLUGIN_ERROR 1 /* the plugin answered with a non-Ok AbiError */
#define PP_CALL_UNAVAILABLE 2  /* the conn is draining or its worker is gone: nothing was sent */
#define PP_CALL_DEAD 3         /* the worker died during the call */
#define PP_CALL_TIMEOUT 4      /* no answer before the deadline */
#define PP_CALL_PROTOCOL 5     /* the worker wrote an impossible answer */
#define PP_CALL_TOO_LARGE 6    /* args + out fit neither a slot nor the arena */
#define PP_CALL_REFUSED 7      /* the worker rejected the request */
#define PP_CALL_PENDING 8      /* on its way: resume (pp_resume) or poll (pp_poll) for the outcome */
#define PP_CALL_LEASE_LOST 9   /* the lease is no longer the caller's: take another (nothing was sent) */
#define PP_CALL_REENTRANT 10   /* the worker waits on this thread (a call back): nothing was sent */
#define PP_CALL_ARENA_HELD 11  /* the caller's slot holds the arena (buffers()): a call needing it would
                                  wait for itself (nothing was sent) */

typedef struct pp_conn pp_conn;

/* Why the calling thread's last call failed. */
typedef struct pp_result {
    uint32_t err_code;
    uint32_t err_len;
    uint32_t done_count; /* calls of a batch that completed Ok */
    uint32_t ret_len;    /* pp_call_ex: bytes of the return area read back */
    char err_msg[1024];
} pp_result;



size_t pp_segment_bytes(uint32_t nslots, uint64_t payload_cap, uint64_t arena_cap);
pp_conn *pp_conn_create(int fd, uint32_t nslots, uint32_t max_threads, uint64_t payload_cap, uint64_t arena_cap,
                        int wait_mode, uint64_t spin_ns, uint32_t idle_retire_ms);
void pp_conn_destroy(pp_conn *c);
/* Calls back (worker/callback.h) from this conn's worker are answered by
 * pp_on_callback(owner, request, len, reply, cap) -> reply length (< 0: none),
 * implemented in Python (polyplug_isolated/_callbacks.py). */
void pp_conn_set_owner(pp_conn *c, uint64_t owner);
/* How deep calls back may nest on one host thread (default PP_CB_MAX_DEPTH);
 * sets it when 1..64, returns the previous value. */
int pp_callback_depth_limit(int limit);
int64_t pp_on_callback(uint64_t owner, uint8_t *request, uint32_t len, uint8_t *reply, uint32_t cap);
/* Asked first, without the GIL (polyplug_isolated/_cbroutes.c): the reply's
 * length, -1, or PP_CB_UNHANDLED to leave the request to pp_on_callback. */
#define PP_CB_UNHANDLED (-2)
typedef int64_t (*pp_cb_hook)(uint64_t owner, const uint8_t *request, uint32_t len, uint8_t *reply, uint32_t cap);
void pp_set_callback_hook(void *hook);
int64_t pp_conn_inflight(pp_conn *c);
uint64_t pp_conn_calls(pp_conn *c);
uint64_t pp_conn_failures(pp_conn *c);
void pp_conn_set_draining(pp_conn *c);
int pp_conn_wait_drained(pp_conn *c, double timeout_s);
void pp_conn_mark_dead(pp_conn *c);
pp_result *pp_last_result(void);

/* Leases: a slot (and with it a worker thread of its own) for one host
 * thread, or one async call. Past max_threads slots in use, takes an idle
 * slot over from its owner if `may_take_over` (host threads do; the async
 * pool waits for its own slots instead). Returns a lease > 0, or -PP_CALL_*. */
int64_t pp_lease_take(pp_conn *c, double timeout_s, int may_take_over);
/* Gives a lease back: the slot's worker thread retires. */
void pp_lease_release(pp_conn *c, int64_t lease);

/* Calls on a lease. Each returns PP_CALL_PENDING when the calling thread is
 * the process's main thread and slept INTERRUPT_SLICE_NS: Python runs its
 * signal handlers, then pp_resume (or pp_abandon on an exception). */

/* One call; out receives out_size bytes. */
int pp_call(pp_conn *c, int64_t lease, uint32_t contract, uint32_t function, const uint8_t *args, size_t args_len,
            uint8_t *out, size_t out_size, double timeout_s);
/* The hot path: one call on the calling thread's lease as pp_use_lease last
 * set it for this conn (PP_CALL_LEASE_LOST: none), with an out of at most
 * PP_FAST_OUT bytes, which *out points at on PP_CALL_OK (the thread's own
 * buffer, valid until its next call). After PENDING, pp_resume_fast (or
 * pp_abandon_fast on an exception); *out then holds the answer. */
#define PP_FAST_OUT 64
int pp_call_fast(pp_conn *c, uint32_t contract, uint32_t function, const uint8_t *args, size_t args_len,
                 size_t out_size, double timeout_s, const uint8_t **out);
/* pp_call_fast with pointer fixups (only ARG_POINTER: no return area). */
int pp_call_ex_fast(pp_conn *c, uint32_t contract, uint32_t function, const uint8_t *args, size_t args_len,
                    const pp_fixup *fixups, uint32_t nfixups, size_t out_size, double timeout_s,
                    const uint8_t **out);
int pp_resume_fast(pp_conn *c);
void pp_abandon_fast(pp_conn *c);
/* A batch (see pp_call_batch) on the thread's cached lease. */
int pp_call_batch_fast(pp_conn *c, uint32_t contract, uint32_t function, const uint8_t *args, size_t args_len,
                       size_t count, uint8_t *out, size_t out_size, double timeout_s);
/* pp_call_fast for outs of at most 7 bytes, as a little-endian integer, or
 * -PP_CALL_* (for cffi callers, which cannot take the out pointer cheaply). */
int64_t pp_call_small(pp_conn *c, uint32_t contract, uint32_t function, const uint8_t *args, size_t args_len,
                      size_t out_size, double timeout_s);
void pp_use_lease(pp_conn *c, int64_t lease);
/* `count` calls over packed args records, one hand-off; out receives
 * count * out_size bytes (the completed prefix on a plugin error). */
int pp_call_batch(pp_conn *c, int64_t lease, uint32_t contract, uint32_t function, const uint8_t *args,
                  size_t args_len, size_t count, uint8_t *out, size_t out_size, double timeout_s);
/* One call with an instance, pointer fixups (see PP_FIX_* in channel.h)
 * and a return area of up to ret_cap bytes copied into `ret`. */
int pp_call_ex(pp_conn *c, int64_t lease, uint32_t contract, uint32_t function, uint32_t instance,
               const uint8_t *args, size_t args_len, const pp_fixup *fixups, uint32_t nfixups, uint8_t *out,
               size_t out_size, uint8_t *ret, size_t ret_cap, double timeout_s);

/* Async: pp_submit hands the call over and returns PP_CALL_PENDING at once
 * (out and ret must stay alive until it settles); the worker rings the
 * header's bell when it answers; pp_poll settles it when the answer is there
 * (else PENDING). pp_bell_wait sleeps until the bell moves from `seen`. */
int pp_submit(pp_conn *c, int64_t lease, uint32_t contract, uint32_t function, uint32_t instance,
              const uint8_t *args, size_t args_len, const pp_fixup *fixups, uint32_t nfixups, uint8_t *out,
              size_t out_size, uint8_t *ret, size_t ret_cap, double timeout_s);
int pp_resume(pp_conn *c, int64_t lease);
int pp_poll(pp_conn *c, int64_t lease);
/* Gives up the call in flight on a lease (interrupted or cancelled): its
 * answer is dropped when it comes, and the slot then serves someone else. */
void pp_abandon(pp_conn *c, int64_t lease);
uint32_t pp_bell(pp_conn *c);
/* Moves the bell (the host side: a new call to look at). */
void pp_bell_ring(pp_conn *c);
void pp_bell_wait(pp_conn *c, uint32_t seen, double timeout_s);

/* Calls whose args and out live in the arena, written and read there by the
 * caller (zero copy). pp_arena_hold takes the arena for a lease's calls
 * until pp_arena_drop; pp_in_place_layout says where a call's args and out
 * lie in it; pp_call_in_place runs one call on them. */
int pp_in_place_layout(pp_conn *c, size_t args_len, size_t out_size, uint64_t *args_at, uint64_t *out_at);
uint8_t *pp_arena_base(pp_conn *c);
int pp_arena_hold(pp_conn *c, int64_t lease, size_t args_len, size_t out_size, double timeout_s);
void pp_arena_drop(pp_conn *c, int64_t lease);
int pp_call_in_place(pp_conn *c, int64_t lease, uint32_t contract, uint32_t function, size_t args_len,
                     size_t out_size, double timeout_s);

/* The hot-path functions, for the _fastcall extension: it calls them through
 * this table so that the one copy of the per-thread state (leases, results)
 * in this module is the one both use. */
typedef struct pp_fast_api {
    size_t size; /* sizeof(pp_fast_api): the extension checks it */
    int (*call)(pp_conn *, uint32_t, uint32_t, const uint8_t *, size_t, size_t, double, const uint8_t **);
    int (*call_ex)(pp_conn *, uint32_t, uint32_t, const uint8_t *, size_t, const pp_fixup *, uint32_t, size_t,
                   double, const uint8_t **);
    int (*resume)(pp_conn *);
    void (*abandon)(pp_conn *);
    int (*call_batch)(pp_conn *, uint32_t, uint32_t, const uint8_t *, size_t, size_t, uint8_t *, size_t, double);
    pp_result *(*last_result)(void);
} pp_fast_api;
const pp_fast_api *pp_fast_api_table(void);

#endif
