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
    g_payload_cap = h->payload_cap;
    g_arena_cap = h->arena_cap;
    return 0;
}

static void answer(pp_slot *s, uint64_t seq, uint32_t status, uint32_t done, const AbiError *err)
{
    size_t len = err->message.ptr ? err->message.len : 0;
    if (len > PP_ERR_CAP)
        len = PP_ERR_CAP;
    if (len)
        memcpy(s->err_msg, err->message.ptr, len);
    s->status = status;
    s->err_code = err->code;
    s->err_len = (uint32_t)len;
    s->done_count = done;
    /* Publishes the fields above, then the Dekker half that pairs with the
     * host's "set host_waiting, re-check done_seq". */
    atomic_store_explicit(&s->done_seq, seq, memory_order_release);
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&s->host_waiting, memory_order_relaxed) && atomic_exchange(&s->host_waiting, 0))
        sem_post(&s->response_sem);
}

static void refuse(pp_slot *s, uint64_t seq, const char *why)
{
    AbiError err = {ABI_GENERIC, {(const uint8_t *)why, strlen(why)}};
    answer(s, seq, PP_STATUS_BAD_REQUEST, 0, &err);
}

static void serve_one(pp_request *r, uint64_t seq)
{
    uint32_t slot_index = r->slot, count = r->count, spill = r->spill;
    uint64_t args_len = r->args_len, out_size = r->out_size;
    if (slot_index >= g_nslots)
        return; /* nowhere to answer: the host's deadline or the monitor ends the call */
    pp_slot *s = pp_slot_at(g_base, g_nslots, g_payload_cap, slot_index);
    pp_layout layout = pp_layout_of(count, args_len, out_size);
    uint64_t region_cap = spill == PP_IN_ARENA ? g_arena_cap : g_payload_cap;
    if (count == 0 || spill > PP_IN_ARENA || layout.spill_bytes > region_cap)
        return refuse(s, seq, "request does not fit its region");
    uint8_t *region = spill == PP_IN_ARENA ? g_base + pp_arena_offset(g_nslots, g_payload_cap) : pp_payload(s);
    const uint8_t *args = args_len == 0 ? NULL : layout.args_inline ? r->args : region;
    uint8_t *out = out_size == 0 ? NULL : layout.out_inline ? s->out : region + layout.out_offset;
    if (out)
        memset(out, 0, (size_t)(count * out_size));
    AbiError err = {ABI_OK, {NULL, 0}};
    uint32_t done = 0;
    for (; done < count; done++) {
        const char *refused = ppw_invoke(r->contract, r->function, args ? args + done * args_len : NULL,
                                         out ? out + done * out_size : NULL, &err);
        if (refused)
            return refuse(s, seq, refused);
        if (err.code != ABI_OK)
            break;
    }
    answer(s, seq, PP_STATUS_OK, done, &err);
}

/* Waits until ring entry `r` carries ticket `seq - 1`. Returns 0 when it
 * does, 1 when asked to stop. */
static int await_request(pp_header *h, pp_request *r, uint64_t seq, int wait_mode, uint64_t spin_ns)
{
    uint64_t spin_until = wait_mode == PP_WAIT_SPIN    ? UINT64_MAX
                          : wait_mode == PP_WAIT_BLOCK ? 0
                                                       : pp_now_ns() + spin_ns;
    for (unsigned i = 1;; i++) {
        if (atomic_load_explicit(&r->seq, memory_order_acquire) == seq)
            return 0;
        if (atomic_load_explicit(&g_stop, memory_order_relaxed))
            return 1;
        if ((i & 127) == 0 && pp_now_ns() >= spin_until)
            break;
        pp_spin_step(i);
    }
    for (;;) {
        atomic_store(&h->worker_sleeping, 1);
        if (atomic_load(&r->seq) == seq) {
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
    pp_request *ring = pp_ring(g_base);
    for (uint64_t ticket = 0;; ticket++) {
        pp_request *r = &ring[ticket % g_nslots];
        if (await_request(h, r, ticket + 1, wait_mode, spin_ns))
            return 0;
        serve_one(r, ticket + 1);
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
