/*
 * The HostApi functions that need the host: host contracts, other bundles'
 * contracts, the list of bundles. Each becomes one call back (callback.h)
 * over cb_transport.c.
 *
 * What a plugin resolves here looks like what it would get in-process: a
 * HostContractInterface or GuestContractInterface whose function slots are
 * trampolines of this worker. A trampoline copies the arguments (the record
 * and what its StringViews/Buffers point at, as the api.toml the host found
 * describes them), has the host run the function where it lives (the host
 * process, or the providing bundle's worker), and copies the answer back:
 * out, with returned StringViews pointing at bytes kept until this thread's
 * next call back, returned Buffers freshly allocated (free them with
 * host->free), and the AbiError.
 *
 * Function pointers carry no context, so each interface has its own row of
 * trampolines: PPW_REMOTES interfaces of up to PPW_REMOTE_FUNCTIONS functions
 * per worker, both generated below by the preprocessor.
 */
#define _GNU_SOURCE
#include "callback.h"
#include "channel.h"
#include "polyplug_abi.h"
#include "worker.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define PPW_REMOTES 32
#define PPW_REMOTE_FUNCTIONS 64

typedef struct remote {
    int host;            /* a host contract, else another bundle's guest contract */
    uint64_t key;        /* host: contract id; guest: handle (index | generation << 32) */
    uint64_t contract_id;
    uint32_t function_count;
    pp_cb_function *functions;
    pp_cb_view *views;
    uint32_t *first_view; /* per function: where its view entries start */
    HostContractInterface host_iface;
    GuestContractInterface guest_iface;
} remote;

static remote g_remotes[PPW_REMOTES];
static uint32_t g_nremotes;
static pthread_mutex_t g_remotes_lock = PTHREAD_MUTEX_INITIALIZER;

/* Bytes this thread's last call back answered with (messages, returned views);
 * freed when the thread exits (g_kept's destructor). */
static _Thread_local uint8_t *t_kept;
static pthread_key_t g_kept;
static pthread_once_t g_kept_once = PTHREAD_ONCE_INIT;

static void make_kept_key(void) { pthread_key_create(&g_kept, free); }

static void fail(AbiError *err, uint32_t code, const char *message)
{
    err->code = code;
    err->message.ptr = (const uint8_t *)message;
    err->message.len = strlen(message);
}

/* ---- one exchange ------------------------------------------------------------ */

typedef struct reply {
    uint32_t code;
    uint64_t value;
    const uint8_t *msg; /* in t_kept */
    uint32_t msg_len;
    const uint8_t *out; /* in the transport's area */
    uint32_t out_len;
    uint8_t *tail; /* in t_kept */
    uint32_t tail_len;
} reply;

static uint8_t *begin(pp_cb_request *q, uint32_t op, uint32_t *room)
{
    memset(q, 0, sizeof *q);
    q->op = op;
    uint32_t cap;
    uint8_t *area = ppw_cb_begin(&cap);
    *room = area ? cap - (uint32_t)sizeof *q : 0;
    return area;
}

/* Sends the request (header q, then args_len bytes already at area + 48) and
 * parses the reply; -1 when the host could not be asked or answered nonsense.
 * The message and the tail are kept (t_kept) until this thread's next call back. */
static int exchange(uint8_t *area, const pp_cb_request *q, reply *r)
{
    memcpy(area, q, sizeof *q);
    const uint8_t *at;
    int64_t n = ppw_cb_roundtrip((uint32_t)sizeof *q + q->args_len, &at);
    if (n < (int64_t)sizeof(pp_cb_reply))
        return -1;
    pp_cb_reply h;
    memcpy(&h, at, sizeof h);
    uint64_t out_at = PP_ALIGN8(sizeof h + (uint64_t)h.msg_len);
    uint64_t tail_at = PP_ALIGN8(out_at + h.out_len);
    if (h.msg_len > (uint64_t)n || h.out_len > (uint64_t)n || h.tail_len > (uint64_t)n ||
        tail_at + h.tail_len > (uint64_t)n)
        return -1;
    uint8_t *kept = realloc(t_kept, (size_t)h.msg_len + h.tail_len + 1);
    if (!kept)
        return -1;
    if (kept != t_kept) {
        pthread_once(&g_kept_once, make_kept_key);
        pthread_setspecific(g_kept, kept);
    }
    t_kept = kept;
    memcpy(kept, at + sizeof h, h.msg_len);
    memcpy(kept + h.msg_len, at + tail_at, h.tail_len);
    *r = (reply){h.code, h.value, kept, h.msg_len, at + out_at, h.out_len, kept + h.msg_len, h.tail_len};
    return 0;
}

static void answer_error(const reply *r, AbiError *err)
{
    err->code = r->code;
    err->message.ptr = r->msg_len ? r->msg : NULL;
    err->message.len = r->msg_len;
}

static const char NO_TRANSPORT[] =
    "polyplug_isolated: a plugin reaches the host and other bundles only from a thread that serves a call "
    "(or runs polyplug_init)";
static const char NO_ANSWER[] = "polyplug_isolated: the host did not answer the call back";
static const char TOO_LARGE[] =
    "polyplug_isolated: the arguments (with the bytes their StringViews and Buffers point at) exceed the room "
    "a call back has in the slot's payload; raise Runtime(payload_capacity=...)";
static const char UNDESCRIBED[] =
    "polyplug_isolated: no api.toml describes this function, so its arguments cannot be copied to where it "
    "runs; put the contract's api.toml beside the provider's manifest.toml (or pass api= to "
    "register_host_contract)";

/* Copies args (record + the bytes of its views) after the request header. */
static int pack_args(uint8_t *a, uint32_t room, const pp_cb_function *fn, const pp_cb_view *views,
                     const void *args, uint32_t *len)
{
    uint64_t used = fn->args_size;
    if (used > room)
        return -1;
    memcpy(a, args, fn->args_size);
    used = PP_ALIGN8(used);
    for (uint32_t i = 0; i < fn->arg_views; i++) {
        uint32_t at = views[i].offset;
        const uint8_t *ptr;
        uint64_t n;
        memcpy(&ptr, a + at, sizeof ptr);
        memcpy(&n, a + at + 8, 8);
        uint64_t where = PP_NULL_OFFSET;
        if (ptr) {
            if (used > room || n > room - used)
                return -1;
            memcpy(a + used, ptr, n);
            where = used;
            used = PP_ALIGN8(used + n);
        }
        memcpy(a + at, &where, 8);
    }
    *len = (uint32_t)used;
    return 0;
}

/* Turns out's returned views (offsets into the tail) into pointers. */
static int unpack_out(uint8_t *out, const pp_cb_function *fn, const pp_cb_view *views, const reply *r)
{
    for (uint32_t i = 0; i < fn->out_views; i++) {
        const pp_cb_view *v = &views[fn->arg_views + i];
        uint8_t *field = out + v->offset;
        uint64_t where, n;
        memcpy(&where, field, 8);
        memcpy(&n, field + 8, 8);
        uint8_t *ptr = NULL;
        if (where != PP_NULL_OFFSET) {
            if (where > r->tail_len || n > r->tail_len - where)
                return -1;
            ptr = r->tail + where;
            if (v->kind == PP_CB_VIEW_BUFFER) { /* owned by the caller: its own copy */
                uint8_t *copy = malloc(n ? n : 1);
                if (!copy)
                    return -1;
                memcpy(copy, ptr, n);
                ptr = copy;
                memcpy(field + 16, &n, 8);
            }
        }
        memcpy(field, &ptr, sizeof ptr);
    }
    return 0;
}

static void remote_call(remote *rm, uint32_t op, uint64_t instance, uint32_t f, const void *args, void *out,
                        AbiError *err)
{
    if (f >= rm->function_count)
        return fail(err, ABI_FUNCTION_NOT_AVAILABLE, "function index is out of range for this contract");
    const pp_cb_function *fn = &rm->functions[f];
    const pp_cb_view *views = rm->views + rm->first_view[f];
    if (fn->args_size == PP_CB_UNKNOWN)
        return fail(err, ABI_GENERIC, UNDESCRIBED);
    pp_cb_request q;
    uint32_t room;
    uint8_t *area = begin(&q, op, &room);
    if (!area)
        return fail(err, ABI_GENERIC, NO_TRANSPORT);
    q.function = f;
    q.id = rm->contract_id;
    q.handle = rm->key;
    q.instance = instance;
    q.out_size = fn->out_size;
    q.flags = (args ? 0 : PP_CB_ARGS_NULL) | (out ? 0 : PP_CB_OUT_NULL);
    if (args && pack_args(area + sizeof q, room, fn, views, args, &q.args_len) != 0)
        return fail(err, ABI_BUFFER_TOO_SMALL, TOO_LARGE);
    reply r;
    /* Another bundle's function runs in its worker, which may need this CPU meanwhile. */
    ppw_call_back_yields(op == PP_CB_GUEST_CALL);
    int answered = exchange(area, &q, &r) == 0;
    ppw_call_back_yields(0);
    if (!answered)
        return fail(err, ABI_GENERIC, NO_ANSWER);
    if (out && fn->out_size && r.out_len == fn->out_size) {
        memcpy(out, r.out, fn->out_size);
        if (r.code == ABI_OK && unpack_out(out, fn, views, &r) != 0)
            return fail(err, ABI_GENERIC, NO_ANSWER);
    }
    answer_error(&r, err);
}

/* ---- the trampolines ------------------------------------------------------------ */

static void host_call(uint32_t at, uint32_t f, HostContractInstance inst, const void *args, void *out, AbiError *err)
{
    remote_call(&g_remotes[at], PP_CB_HOST_CALL, (uint64_t)(uintptr_t)inst.data, f, args, out, err);
}

static void guest_call(uint32_t at, uint32_t f, GuestContractInstance inst, const void *args, void *out,
                       AbiError *err)
{
    remote_call(&g_remotes[at], PP_CB_GUEST_CALL, (uint64_t)(uintptr_t)inst.data, f, args, out, err);
}

static void guest_create(uint32_t at, const void *args, GuestContractInstance *out)
{
    (void)args; /* creation arguments have no described layout: they do not cross */
    remote *rm = &g_remotes[at];
    pp_cb_request q;
    uint32_t room;
    uint8_t *area = begin(&q, PP_CB_GUEST_CREATE, &room);
    reply r;
    *out = (GuestContractInstance){NULL, rm->contract_id};
    q.id = rm->contract_id;
    q.handle = rm->key;
    q.flags = PP_CB_ARGS_NULL;
    if (area && exchange(area, &q, &r) == 0 && r.code == ABI_OK)
        out->data = (void *)(uintptr_t)r.value;
}

static void guest_destroy(uint32_t at, GuestContractInstance inst)
{
    remote *rm = &g_remotes[at];
    pp_cb_request q;
    uint32_t room;
    uint8_t *area = begin(&q, PP_CB_GUEST_DESTROY, &room);
    reply r;
    q.id = rm->contract_id;
    q.handle = rm->key;
    q.instance = (uint64_t)(uintptr_t)inst.data;
    if (area && inst.data)
        exchange(area, &q, &r);
}

#define PPW_FUNCTIONS(M, R) M(R, 0) M(R, 1) M(R, 2) M(R, 3) M(R, 4) M(R, 5) M(R, 6) M(R, 7) M(R, 8) M(R, 9) M(R, 10) M(R, 11) M(R, 12) M(R, 13) M(R, 14) M(R, 15) M(R, 16) M(R, 17) M(R, 18) M(R, 19) M(R, 20) M(R, 21) M(R, 22) M(R, 23) M(R, 24) M(R, 25) M(R, 26) M(R, 27) M(R, 28) M(R, 29) M(R, 30) M(R, 31) M(R, 32) M(R, 33) M(R, 34) M(R, 35) M(R, 36) M(R, 37) M(R, 38) M(R, 39) M(R, 40) M(R, 41) M(R, 42) M(R, 43) M(R, 44) M(R, 45) M(R, 46) M(R, 47) M(R, 48) M(R, 49) M(R, 50) M(R, 51) M(R, 52) M(R, 53) M(R, 54) M(R, 55) M(R, 56) M(R, 57) M(R, 58) M(R, 59) M(R, 60) M(R, 61) M(R, 62) M(R, 63)
#define PPW_EVERY_FUNCTION(M) PPW_FUNCTIONS(M, 0) PPW_FUNCTIONS(M, 1) PPW_FUNCTIONS(M, 2) PPW_FUNCTIONS(M, 3) PPW_FUNCTIONS(M, 4) PPW_FUNCTIONS(M, 5) PPW_FUNCTIONS(M, 6) PPW_FUNCTIONS(M, 7) PPW_FUNCTIONS(M, 8) PPW_FUNCTIONS(M, 9) PPW_FUNCTIONS(M, 10) PPW_FUNCTIONS(M, 11) PPW_FUNCTIONS(M, 12) PPW_FUNCTIONS(M, 13) PPW_FUNCTIONS(M, 14) PPW_FUNCTIONS(M, 15) PPW_FUNCTIONS(M, 16) PPW_FUNCTIONS(M, 17) PPW_FUNCTIONS(M, 18) PPW_FUNCTIONS(M, 19) PPW_FUNCTIONS(M, 20) PPW_FUNCTIONS(M, 21) PPW_FUNCTIONS(M, 22) PPW_FUNCTIONS(M, 23) PPW_FUNCTIONS(M, 24) PPW_FUNCTIONS(M, 25) PPW_FUNCTIONS(M, 26) PPW_FUNCTIONS(M, 27) PPW_FUNCTIONS(M, 28) PPW_FUNCTIONS(M, 29) PPW_FUNCTIONS(M, 30) PPW_FUNCTIONS(M, 31)
#define PPW_EVERY_REMOTE(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7) M(8) M(9) M(10) M(11) M(12) M(13) M(14) M(15) M(16) M(17) M(18) M(19) M(20) M(21) M(22) M(23) M(24) M(25) M(26) M(27) M(28) M(29) M(30) M(31)

#define PPW_HOST_T(R, F) \
    static void h_##R##_##F(HostContractInstance i, const void *a, void *o, AbiError *e) { host_call(R, F, i, a, o, e); }
#define PPW_GUEST_T(R, F) \
    static void g_##R##_##F(GuestContractInstance i, const void *a, void *o, AbiError *e) { guest_call(R, F, i, a, o, e); }
#define PPW_HOST_ENTRY(R, F) [R][F] = (const void *)h_##R##_##F,
#define PPW_GUEST_ENTRY(R, F) [R][F] = (const void *)g_##R##_##F,
#define PPW_LIFE_T(R) \
    static void c_##R(VmLoaderData d, const HostApi *h, const void *a, GuestContractInstance *o) { guest_create(R, a, o); } \
    static void d_##R(VmLoaderData d, const HostApi *h, GuestContractInstance i) { guest_destroy(R, i); }
#define PPW_CREATE_ENTRY(R) [R] = c_##R,
#define PPW_DESTROY_ENTRY(R) [R] = d_##R,

PPW_EVERY_FUNCTION(PPW_HOST_T)
PPW_EVERY_FUNCTION(PPW_GUEST_T)
PPW_EVERY_REMOTE(PPW_LIFE_T)

static const void *const g_host_fns[PPW_REMOTES][PPW_REMOTE_FUNCTIONS] = {PPW_EVERY_FUNCTION(PPW_HOST_ENTRY)};
static const void *const g_guest_fns[PPW_REMOTES][PPW_REMOTE_FUNCTIONS] = {PPW_EVERY_FUNCTION(PPW_GUEST_ENTRY)};
static void (*const g_creates[PPW_REMOTES])(VmLoaderData, const HostApi *, const void *, GuestContractInstance *) = {
    PPW_EVERY_REMOTE(PPW_CREATE_ENTRY)};
static void (*const g_destroys[PPW_REMOTES])(VmLoaderData, const HostApi *, GuestContractInstance) = {
    PPW_EVERY_REMOTE(PPW_DESTROY_ENTRY)};

/* ---- interfaces ------------------------------------------------------------------- */

static void host_iface_create(const HostContractInterface *self, const void *args, HostContractInstance *out);
static void host_iface_destroy(const HostContractInterface *self, HostContractInstance instance);

/* The interface an iface description names: the one made for it before, or a new one. */
static remote *adopt(int host, uint64_t key, const reply *r, const char **why)
{
    pp_cb_iface d;
    *why = "polyplug_isolated: the host described the interface wrongly";
    if (r->out_len < sizeof d)
        return NULL;
    memcpy(&d, r->out, sizeof d);
    uint64_t need = sizeof d + (uint64_t)d.function_count * sizeof(pp_cb_function) + (uint64_t)d.view_count * sizeof(pp_cb_view);
    if (need > r->out_len)
        return NULL;
    pthread_mutex_lock(&g_remotes_lock);
    remote *rm = NULL;
    for (uint32_t i = 0; i < g_nremotes; i++)
        if (g_remotes[i].host == host && g_remotes[i].key == key)
            rm = &g_remotes[i];
    if (rm)
        goto done;
    if (d.function_count > PPW_REMOTE_FUNCTIONS) {
        *why = "polyplug_isolated: a contract of more than 64 functions cannot be called across workers";
        goto done;
    }
    if (g_nremotes == PPW_REMOTES) {
        *why = "polyplug_isolated: a worker reaches at most 32 host contracts and other bundles' contracts";
        goto done;
    }
    pp_cb_function *functions = malloc(sizeof *functions * (d.function_count + 1));
    pp_cb_view *views = malloc(sizeof *views * (d.view_count + 1));
    uint32_t *first = malloc(sizeof *first * (d.function_count + 1));
    if (!functions || !views || !first) {
        free(functions), free(views), free(first);
        *why = "out of memory";
        goto done;
    }
    memcpy(functions, r->out + sizeof d, sizeof *functions * d.function_count);
    memcpy(views, r->out + sizeof d + sizeof *functions * d.function_count, sizeof *views * d.view_count);
    uint32_t seen = 0;
    for (uint32_t f = 0; f < d.function_count; f++) {
        first[f] = seen;
        seen += (uint32_t)functions[f].arg_views + functions[f].out_views;
    }
    if (seen != d.view_count) {
        free(functions), free(views), free(first);
        goto done;
    }
    uint32_t at = g_nremotes;
    rm = &g_remotes[at];
    *rm = (remote){.host = host,
                   .key = key,
                   .contract_id = d.contract_id,
                   .function_count = d.function_count,
                   .functions = functions,
                   .views = views,
                   .first_view = first};
    Version version = {d.major, d.minor, d.patch};
    NativeDispatch native = {d.function_count, host ? g_host_fns[at] : g_guest_fns[at]};
    rm->host_iface = (HostContractInterface){d.contract_id, version, d.singleton != 0, DISPATCH_NATIVE, NULL, NULL,
                                             host_iface_create, host_iface_destroy, {.native = native}};
    rm->guest_iface = (GuestContractInterface){d.contract_id, version, DISPATCH_NATIVE, g_creates[at], g_destroys[at],
                                               {.native = native}};
    g_nremotes++;
done:
    pthread_mutex_unlock(&g_remotes_lock);
    return rm;
}

static remote *remote_of_host(const HostContractInterface *iface)
{
    for (uint32_t i = 0; i < PPW_REMOTES; i++)
        if (iface == &g_remotes[i].host_iface)
            return &g_remotes[i];
    return NULL;
}

static remote *remote_of_guest(const GuestContractInterface *iface)
{
    for (uint32_t i = 0; i < PPW_REMOTES; i++)
        if (iface == &g_remotes[i].guest_iface)
            return &g_remotes[i];
    return NULL;
}

/* create_instance of a host contract interface called directly: a new instance. */
static void host_iface_create(const HostContractInterface *self, const void *args, HostContractInstance *out)
{
    (void)args;
    remote *rm = remote_of_host(self);
    pp_cb_request q;
    uint32_t room;
    uint8_t *area = begin(&q, PP_CB_HOST_CREATE, &room);
    reply r;
    out->data = NULL;
    q.id = rm ? rm->contract_id : 0;
    q.flags = PP_CB_ARGS_NULL;
    if (rm && area && exchange(area, &q, &r) == 0 && r.code == ABI_OK)
        out->data = (void *)(uintptr_t)r.value;
}

static void host_iface_destroy(const HostContractInterface *self, HostContractInstance instance)
{
    remote *rm = remote_of_host(self);
    pp_cb_request q;
    uint32_t room;
    uint8_t *area = begin(&q, PP_CB_HOST_DESTROY, &room);
    reply r;
    q.id = rm ? rm->contract_id : 0;
    q.instance = (uint64_t)(uintptr_t)instance.data;
    if (rm && area && instance.data)
        exchange(area, &q, &r);
}

/* ---- the HostApi functions ------------------------------------------------------ */

static void last_error_of(const reply *r, const char *otherwise)
{
    if (r && r->msg_len)
        ppw_set_last_error((const char *)r->msg, r->msg_len);
    else
        ppw_set_last_error(otherwise, strlen(otherwise));
}

/* HOST_GET or HOST_IFACE: the interface (and with HOST_GET an instance). */
static remote *host_contract(uint32_t op, uint64_t id, uint32_t min_version, uint64_t *instance)
{
    pp_cb_request q;
    uint32_t room;
    uint8_t *area = begin(&q, op, &room);
    reply r;
    if (!area) {
        last_error_of(NULL, NO_TRANSPORT);
        return NULL;
    }
    q.id = id;
    q.min_version = min_version;
    q.flags = PP_CB_ARGS_NULL;
    if (exchange(area, &q, &r) != 0) {
        last_error_of(NULL, NO_ANSWER);
        return NULL;
    }
    if (r.code != ABI_OK) {
        last_error_of(&r, "host contract not found");
        return NULL;
    }
    const char *why;
    uint64_t token = r.value;
    remote *rm = adopt(1, id, &r, &why);
    if (!rm)
        last_error_of(NULL, why);
    else if (instance)
        *instance = token;
    return rm;
}

HostContractInstance ppw_get_host_contract(uint64_t id, uint32_t min_version)
{
    uint64_t token = 0;
    return host_contract(PP_CB_HOST_GET, id, min_version, &token) ? (HostContractInstance){(void *)(uintptr_t)token}
                                                                  : (HostContractInstance){NULL};
}

const HostContractInterface *ppw_resolve_host_contract_interface(uint64_t id, uint32_t min_version)
{
    remote *rm = host_contract(PP_CB_HOST_IFACE, id, min_version, NULL);
    return rm ? &rm->host_iface : NULL;
}

/* FIND, FIND_ALL, LIST_BUNDLES: returns 0 when the host cannot be asked (the
 * caller answers from this worker alone). */
static int ask(uint32_t op, uint64_t id, uint32_t min_version, reply *r)
{
    pp_cb_request q;
    uint32_t room;
    uint8_t *area = begin(&q, op, &room);
    if (!area)
        return 0;
    q.id = id;
    q.min_version = min_version;
    q.flags = PP_CB_ARGS_NULL;
    if (exchange(area, &q, r) != 0)
        *r = (reply){.code = ABI_GENERIC};
    return 1;
}

int ppw_find_guest_contract(uint64_t id, uint32_t min_version, GuestContractHandle *found)
{
    reply r;
    if (!ask(PP_CB_FIND, id, min_version, &r))
        return 0;
    *found = r.code == ABI_OK ? (GuestContractHandle){(uint32_t)r.value, (uint32_t)(r.value >> 32)}
                              : (GuestContractHandle){0xFFFFFFFFu, 0};
    return 1;
}

/* Copies n u64 of out into a host-allocated Array of `width`-byte items. */
static Array array_of(const reply *r, size_t width, size_t align)
{
    size_t n = r->code == ABI_OK ? r->out_len / 8 : 0;
    uint8_t *items = n ? malloc(n * width) : NULL;
    if (!items)
        return (Array){NULL, 0, align};
    for (size_t i = 0; i < n; i++) {
        uint64_t v;
        memcpy(&v, r->out + 8 * i, 8);
        if (width == 8)
            memcpy(items + 8 * i, &v, 8);
        else {
            GuestContractHandle h = {(uint32_t)v, (uint32_t)(v >> 32)};
            memcpy(items + width * i, &h, sizeof h);
        }
    }
    return (Array){items, n, align};
}

int ppw_find_all_guest_contracts(uint64_t id, uint32_t min_version, Array *found)
{
    reply r;
    if (!ask(PP_CB_FIND_ALL, id, min_version, &r))
        return 0;
    *found = array_of(&r, sizeof(GuestContractHandle), _Alignof(GuestContractHandle));
    return 1;
}

int ppw_list_bundles(Array *found)
{
    reply r;
    if (!ask(PP_CB_LIST_BUNDLES, 0, 0, &r))
        return 0;
    *found = array_of(&r, 8, _Alignof(uint64_t));
    return 1;
}

int ppw_resolve_guest_contract(GuestContractHandle h, const GuestContractInterface **found)
{
    uint64_t key = (uint64_t)h.generation << 32 | h.index;
    pthread_mutex_lock(&g_remotes_lock);
    for (uint32_t i = 0; i < g_nremotes; i++)
        if (!g_remotes[i].host && g_remotes[i].key == key) {
            *found = &g_remotes[i].guest_iface;
            pthread_mutex_unlock(&g_remotes_lock);
            return 1;
        }
    pthread_mutex_unlock(&g_remotes_lock);
    pp_cb_request q;
    uint32_t room;
    uint8_t *area = begin(&q, PP_CB_RESOLVE, &room);
    if (!area)
        return 0;
    q.handle = key;
    q.flags = PP_CB_ARGS_NULL;
    reply r;
    *found = NULL;
    if (exchange(area, &q, &r) != 0 || r.code != ABI_OK)
        return 1;
    if (r.value) { /* one of this bundle's own */
        *found = ppw_local_interface((uint32_t)(r.value - 1));
        return 1;
    }
    const char *why;
    remote *rm = adopt(0, key, &r, &why);
    if (!rm)
        last_error_of(NULL, why);
    *found = rm ? &rm->guest_iface : NULL;
    return 1;
}

int ppw_is_remote_interface(const GuestContractInterface *iface) { return remote_of_guest(iface) != NULL; }
