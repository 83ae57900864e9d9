/*
 * How a call back reaches the host (worker/callback.h has the wire format).
 *
 * While a worker thread serves a call, the host thread that made the call is
 * waiting on the call's slot: the request goes into the slot's cb[] area, the
 * host thread answers in the same place, and the worker thread continues the
 * plugin's call (the thread that called the plugin is the one that runs the
 * host contract, as in-process). While polyplug_init runs no slot is in use:
 * the request travels as a "cb" control frame and the host thread running the
 * load answers with a "cb_reply" frame, read here (the control loop only starts
 * reading the socket once the load is over).
 */
#define _GNU_SOURCE
#include "channel.h"
#include "worker.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static _Thread_local pp_slot *t_slot;  /* the slot of the call this thread serves */
static _Thread_local int t_in_init;    /* this thread runs polyplug_init */
static uint64_t g_cb_spin_ns = 50000;  /* how long a worker spins for an answer before sleeping */
static uint8_t g_init_area[PP_CB_CAP]; /* requests made during init (one init at a time) */

void ppw_cb_serving(void *slot) { t_slot = slot; }

void ppw_cb_in_init(int on) { t_in_init = on; }

void ppw_cb_spin(uint64_t spin_ns) { g_cb_spin_ns = spin_ns; }

uint8_t *ppw_cb_begin(uint32_t *cap)
{
    *cap = PP_CB_CAP;
    if (t_slot)
        return t_slot->cb;
    return t_in_init ? g_init_area : NULL;
}

static int64_t slot_roundtrip(pp_slot *s, uint32_t len)
{
    s->cb_len = len;
    uint64_t seq = atomic_load_explicit(&s->cb_seq, memory_order_relaxed) + 1;
    atomic_store_explicit(&s->cb_seq, seq, memory_order_release);
    /* Dekker with the host's "set host_waiting, re-check": as for an answer. */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&s->host_waiting, memory_order_relaxed) && atomic_exchange(&s->host_waiting, 0))
        pp_futex_wake(&s->host_waiting, 1);
    uint64_t spin_until = pp_now_ns() + g_cb_spin_ns;
    for (unsigned i = 1;; i++) {
        if (atomic_load_explicit(&s->cb_done, memory_order_acquire) == seq)
            goto answered;
        if ((i & 127) == 0 && pp_now_ns() >= spin_until)
            break;
        pp_spin_step(i);
    }
    for (;;) {
        atomic_store(&s->worker_waiting, 1);
        if (atomic_load(&s->cb_done) == seq) {
            atomic_store(&s->worker_waiting, 0);
            break;
        }
        /* The host answers, or kills this worker (its call timed out, or it died). */
        pp_futex_wait_until(&s->worker_waiting, 1, UINT64_MAX);
    }
answered:;
    uint32_t reply = *(volatile uint32_t *)&s->cb_len;
    return reply <= PP_CB_CAP ? (int64_t)reply : -1;
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

/* {"t": "cb", "data": bin32} out; {"t": "cb_reply", "data": bin} back. */
static int64_t frame_roundtrip(uint32_t len)
{
    static const uint8_t head[] = {0x82, 0xa1, 't', 0xa2, 'c', 'b', 0xa4, 'd', 'a', 't', 'a', 0xc6};
    uint8_t *frame = malloc(sizeof head + 4 + len);
    if (!frame)
        return -1;
    memcpy(frame, head, sizeof head);
    uint8_t *p = frame + sizeof head;
    for (int shift = 24; shift >= 0; shift -= 8)
        *p++ = (uint8_t)(len >> shift);
    memcpy(p, g_init_area, len);
    int sent = ppw_send_frame(frame, sizeof head + 4 + len);
    free(frame);
    if (sent != 0)
        return -1;
    int fd = ppw_control_fd();
    uint8_t prefix[4];
    if (read_all(fd, prefix, 4) != 0)
        return -1;
    uint32_t size = (uint32_t)prefix[0] << 24 | (uint32_t)prefix[1] << 16 | (uint32_t)prefix[2] << 8 | prefix[3];
    if (size > PP_CB_CAP + 64)
        return -1;
    uint8_t *body = malloc(size ? size : 1);
    if (!body || read_all(fd, body, size) != 0) {
        free(body);
        return -1;
    }
    /* The host packs {"t": "cb_reply", "data": bin 8/16/32}: the data ends the frame. */
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
        if ((uint64_t)start + n == size && n <= PP_CB_CAP) {
            memcpy(g_init_area, body + start, n);
            result = n;
        }
        break;
    }
    free(body);
    return result;
}

int64_t ppw_cb_roundtrip(uint32_t len)
{
    if (len > PP_CB_CAP)
        return -1;
    if (t_slot)
        return slot_roundtrip(t_slot, len);
    return t_in_init ? frame_roundtrip(len) : -1;
}
