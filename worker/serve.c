/*
 * The worker's serve loop: takes calls from the shared-memory ring in order
 * of arrival and runs them, without touching Python (the loop is entered
 * through cffi with the GIL released and only returns on ppw_stop).
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
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static uint8_t *g_base;
static uint32_t g_nslots;
static uint64_t g_payload_cap;
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
        pp_segment_size(h->nslots, h->payload_cap) != (size_t)st.st_size) {
        munmap(base, (size_t)st.st_size);
        return 1;
    }
    g_base = base;
    g_nslots = h->nslots;
    g_payload_cap = h->payload_cap;
    return 0;
}

static void answer(pp_slot *s, uint64_t seq, uint32_t status, const AbiError *err)
{
    size_t len = err->message.ptr ? err->message.len : 0;
    if (len > PP_ERR_CAP)
        len = PP_ERR_CAP;
    if (len)
        memcpy(s->err_msg, err->message.ptr, len);
    s->status = status;
    s->err_code = err->code;
    s->err_len = (uint32_t)len;
    /* Publishes the fields above, then the Dekker half that pairs with the
     * host's "set host_waiting, re-check done_seq". */
    atomic_store_explicit(&s->done_seq, seq, memory_order_release);
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&s->host_waiting, memory_order_relaxed) && atomic_exchange(&s->host_waiting, 0))
        sem_post(&s->response_sem);
}

static void serve_one(pp_slot *s)
{
    uint64_t seq = atomic_load_explicit(&s->req_seq, memory_order_acquire);
    uint64_t args_len = s->args_len, out_size = s->out_size;
    AbiError err = {ABI_OK, {NULL, 0}};
    if (args_len > g_payload_cap || out_size > g_payload_cap || PP_ALIGN8(args_len) + out_size > g_payload_cap) {
        err.message.ptr = (const uint8_t *)"request does not fit the slot";
        err.message.len = strlen((const char *)err.message.ptr);
        return answer(s, seq, PP_STATUS_BAD_REQUEST, &err);
    }
    uint8_t *payload = pp_payload(s);
    void *out = out_size ? payload + PP_ALIGN8(args_len) : NULL;
    if (out)
        memset(out, 0, out_size);
    const char *refused = ppw_invoke(s->contract, s->function, args_len ? payload : NULL, out, &err);
    if (refused) {
        AbiError why = {ABI_GENERIC, {(const uint8_t *)refused, strlen(refused)}};
        return answer(s, seq, PP_STATUS_BAD_REQUEST, &why);
    }
    answer(s, seq, PP_STATUS_OK, &err);
}

/* Waits until the ring entry for `ticket` is published. Returns 0 when it
 * is, 1 when asked to stop. */
static int await_request(pp_header *h, pp_ring_entry *e, uint64_t ticket, int wait_mode, uint64_t spin_ns)
{
    uint64_t spin_until = wait_mode == PP_WAIT_SPIN ? UINT64_MAX
                          : wait_mode == PP_WAIT_BLOCK ? 0
                                                            : pp_now_ns() + spin_ns;
    for (unsigned i = 1;; i++) {
        if (atomic_load_explicit(&e->seq, memory_order_acquire) == ticket + 1)
            return 0;
        if (atomic_load_explicit(&g_stop, memory_order_relaxed))
            return 1;
        if ((i & 127) == 0 && pp_now_ns() >= spin_until)
            break;
        pp_spin_step(i);
    }
    for (;;) {
        atomic_store(&h->worker_sleeping, 1);
        if (atomic_load(&e->seq) == ticket + 1) {
            atomic_store(&h->worker_sleeping, 0);
            return 0;
        }
        if (atomic_load(&g_stop))
            return 1;
        sem_wait(&h->request_sem);
    }
}

int ppw_serve(int wait_mode, uint64_t spin_ns)
{
    pp_header *h = (pp_header *)g_base;
    pp_ring_entry *ring = pp_ring(g_base);
    for (uint64_t ticket = 0;; ticket++) {
        pp_ring_entry *e = &ring[ticket % g_nslots];
        if (await_request(h, e, ticket, wait_mode, spin_ns))
            return 0;
        uint32_t slot = e->slot;
        if (slot < g_nslots)
            serve_one(pp_slot_at(g_base, g_nslots, g_payload_cap, slot));
    }
}

void ppw_stop(void)
{
    atomic_store(&g_stop, 1);
    sem_post(&((pp_header *)g_base)->request_sem);
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
