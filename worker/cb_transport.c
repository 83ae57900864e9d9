/*
 * How a call back reaches the host (worker/callback.h has what it carries).
 *
 * While a worker thread W(T) serves a call, host thread T waits on the call's
 * slot: W(T) writes the request into the slot's payload past the call's own
 * bytes and sends a CALLBACK frame (worker/channel.h); T runs it and sends a
 * REPLY frame with the reply written right after the request; W(T) continues
 * the plugin's call. So a host contract runs on the thread that called the
 * plugin, as in-process. While polyplug_init runs no slot is in use: the
 * request travels as a "cb" control frame, and the host thread running the
 * load answers with a "cb_reply" frame, read here (the worker's control loop
 * only reads the socket once the load is over).
 */
#define _GNU_SOURCE
#include "channel.h"
#include "worker.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PPW_INIT_AREA 65536 /* bytes of a request plus its reply during init */

static _Thread_local pp_slot *t_slot;  /* the slot of the call this thread serves */
static _Thread_local uint64_t t_seq;   /* the last frame it got on that slot */
static _Thread_local uint64_t t_free;  /* payload offset past the call's own bytes */
static _Thread_local int t_in_init;    /* this thread runs polyplug_init */
static uint64_t g_cb_spin_ns = 50000;  /* how long a worker spins for a reply before sleeping */
static uint64_t g_payload_cap;
static uint8_t g_init_area[PPW_INIT_AREA];

void ppw_cb_serving(void *slot, uint64_t seq, uint64_t free_from)
{
    t_slot = slot;
    t_seq = seq;
    t_free = PP_ALIGN8(free_from);
}

uint64_t ppw_cb_served(void)
{
    t_slot = NULL;
    return t_seq;
}

void ppw_cb_in_init(int on) { t_in_init = on; }

void ppw_cb_spin(uint64_t spin_ns) { g_cb_spin_ns = spin_ns; }

void ppw_cb_geometry(uint64_t payload_cap) { g_payload_cap = payload_cap; }

uint8_t *ppw_cb_begin(uint32_t *cap)
{
    if (t_slot) {
        uint64_t room = g_payload_cap > t_free ? g_payload_cap - t_free : 0;
        *cap = (uint32_t)(room > UINT32_MAX ? UINT32_MAX : room);
        return room ? pp_payload(t_slot) + t_free : NULL;
    }
    *cap = PPW_INIT_AREA;
    return t_in_init ? g_init_area : NULL;
}

/* Sends the CALLBACK frame for the request at the slot's payload + t_free and
 * waits for the REPLY (only the host writes down_seq; it can only be a REPLY,
 * as this host never sends a nested CALL: it refuses calls into a worker that
 * waits on the calling thread). */
static int64_t slot_roundtrip(pp_slot *s, uint32_t len, const uint8_t **reply)
{
    uint64_t room = g_payload_cap - t_free, reply_at = PP_ALIGN8(len);
    if (reply_at >= room)
        return -1;
    s->cb_offset = (uint32_t)t_free;
    s->cb_args_len = len;
    s->cb_out_size = (uint32_t)(room - reply_at);
    s->cb_depth = 1;
    s->up_kind = PP_UP_CALLBACK;
    atomic_store_explicit(&s->up_seq, t_seq, memory_order_release);
    /* Dekker with the host's "set host_waiting, re-check up_seq", as for an answer. */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&s->host_waiting, memory_order_relaxed) && atomic_exchange(&s->host_waiting, 0))
        pp_futex_wake(&s->host_waiting, 1);
    uint64_t spin_until = pp_now_ns() + g_cb_spin_ns;
    for (unsigned i = 1;; i++) {
        if (atomic_load_explicit(&s->down_seq, memory_order_acquire) != t_seq)
            goto replied;
        if ((i & 127) == 0 && pp_now_ns() >= spin_until)
            break;
        pp_spin_step(i);
    }
    for (;;) {
        atomic_store(&s->worker_waiting, 1);
        if (atomic_load(&s->down_seq) != t_seq) {
            atomic_store(&s->worker_waiting, 0);
            break;
        }
        /* The host replies, or kills this worker (the call timed out, or it is gone). */
        pp_futex_wait_until(&s->worker_waiting, 1, UINT64_MAX);
    }
replied:
    t_seq = atomic_load_explicit(&s->down_seq, memory_order_acquire);
    if (*(volatile uint16_t *)&s->kind != PP_DOWN_REPLY || *(volatile uint32_t *)&s->count != PP_STATUS_OK)
        return -1;
    uint32_t n = *(volatile uint32_t *)&s->out_size;
    if (n > room - reply_at)
        return -1;
    *reply = pp_payload(s) + t_free + reply_at;
    return n;
}

/* ---- during init: control frames ---------------------------------------- */

static int read_all(int fd, uint8_t *p, size_t n)
{
    while (n) {
        ssize_t r = read(fd, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* {"t": "cb", "data": bin 32} out; {"t": "cb_reply", "data": bin 8/16/32} back,
 * whose data ends the frame. */
static int64_t frame_roundtrip(uint32_t len, const uint8_t **reply)
{
    static const uint8_t head[] = {0x82, 0xa1, 't', 0xa2, 'c', 'b', 0xa4, 'd', 'a', 't', 'a', 0xc6};
    uint8_t *frame = malloc(sizeof head + 4 + (size_t)len);
    if (!frame)
        return -1;
    memcpy(frame, head, sizeof head);
    uint8_t *p = frame + sizeof head;
    for (int shift = 24; shift >= 0; shift -= 8)
        *p++ = (uint8_t)(len >> shift);
    memcpy(p, g_init_area, len);
    int sent = ppw_send_frame(frame, sizeof head + 4 + (size_t)len);
    free(frame);
    if (sent != 0)
        return -1;
    int fd = ppw_control_fd();
    uint8_t prefix[4];
    if (read_all(fd, prefix, 4) != 0)
        return -1;
    uint32_t size = (uint32_t)prefix[0] << 24 | (uint32_t)prefix[1] << 16 | (uint32_t)prefix[2] << 8 | prefix[3];
    if (size > PPW_INIT_AREA + 64)
        return -1;
    uint8_t *body = malloc(size ? size : 1);
    if (!body || read_all(fd, body, size) != 0) {
        free(body);
        return -1;
    }
    int64_t result = -1;
    for (uint32_t at = 0; at + 6 <= size; at++) {
        if (memcmp(body + at, "\xa4" "data", 5) != 0)
            continue;
        uint32_t tag = body[at + 5], width = tag == 0xc4 ? 1 : tag == 0xc5 ? 2 : tag == 0xc6 ? 4 : 0;
        uint32_t start = at + 6 + width, n = 0;
        if (!width || start > size)
            break;
        for (uint32_t i = 0; i < width; i++)
            n = n << 8 | body[at + 6 + i];
        if ((uint64_t)start + n == size && n <= PPW_INIT_AREA) {
            memcpy(g_init_area, body + start, n);
            *reply = g_init_area;
            result = n;
        }
        break;
    }
    free(body);
    return result;
}

int64_t ppw_cb_roundtrip(uint32_t len, const uint8_t **reply)
{
    if (t_slot)
        return slot_roundtrip(t_slot, len, reply);
    return t_in_init && len <= PPW_INIT_AREA ? frame_roundtrip(len, reply) : -1;
}
