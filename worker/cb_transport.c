/*
 * How a call back reaches the host (worker/callback.h has what it carries).
 *
 * While a worker thread W(T) serves a call, host thread T waits on the call's
 * slot: the request goes to the host as the args of a CALLBACK frame, T runs
 * it and sends a REPLY frame whose out is the reply (serve.c's call_back, see
 * CALL BACKS in worker/channel.h), and W(T) continues the plugin's call. So a
 * host contract runs on the thread that called the plugin, as in-process.
 * While polyplug_init runs no slot is in use: the request travels as a "cb"
 * control frame, and the host thread running the load answers with a
 * "cb_reply" frame, read here (the worker's control loop only reads the
 * socket once the load is over).
 */
#define _GNU_SOURCE
#include "channel.h"
#include "polyplug_abi.h"
#include "worker.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PPW_AREA 65536 /* bytes of a request, and of its reply */

static _Thread_local int t_in_init;      /* this thread runs polyplug_init */
static _Thread_local uint8_t *t_request; /* PPW_AREA bytes for the request, then PPW_AREA for the reply */
static _Thread_local uint8_t *t_reply;
static uint8_t g_init_area[PPW_AREA];
static pthread_key_t g_areas;            /* frees a thread's areas when it exits (idle threads retire) */
static pthread_once_t g_areas_once = PTHREAD_ONCE_INIT;

static void make_key(void) { pthread_key_create(&g_areas, free); }

void ppw_cb_in_init(int on) { t_in_init = on; }

uint8_t *ppw_cb_begin(uint32_t *cap)
{
    *cap = PPW_AREA;
    if (ppw_call_back_room()) {
        if (!t_request) {
            pthread_once(&g_areas_once, make_key);
            if (!(t_request = malloc(2 * PPW_AREA)))
                return NULL;
            t_reply = t_request + PPW_AREA;
            pthread_setspecific(g_areas, t_request);
        }
        return t_request;
    }
    return t_in_init ? g_init_area : NULL;
}

/* The request goes as the CALLBACK's args, the reply comes back as its out:
 * together they take the room the call leaves in the slot's payload. */
static int64_t slot_roundtrip(uint32_t len, const uint8_t **reply)
{
    uint64_t room = ppw_call_back_room();
    if (len > room)
        return -1;
    uint64_t cap = room - len < PPW_AREA ? room - len : PPW_AREA;
    memset(t_reply, 0, sizeof(uint64_t) * 3); /* no stale reply header */
    AbiError err = {ABI_OK, {NULL, 0}};
    if (ppw_call_back(0, 0, t_request, len, t_reply, (uint32_t)cap, &err) || err.code != ABI_OK)
        return -1;
    *reply = t_reply;
    return (int64_t)cap; /* the reply's own header says how much of it there is */
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
    if (size > PPW_AREA + 64)
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
        if ((uint64_t)start + n == size && n <= PPW_AREA) {
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
    if (ppw_call_back_room())
        return slot_roundtrip(len, reply);
    return t_in_init && len <= PPW_AREA ? frame_roundtrip(len, reply) : -1;
}
