/*
 * The worker's side of the polyplug ABI: it dlopens one bundle, hands its
 * polyplug_init a complete HostApi, keeps what the bundle registers, and runs
 * the registered functions for the serve loop.
 *
 * One bundle per process, so the state here is process-global. Host
 * contracts, other bundles' contracts and the list of bundles come from the
 * host (callback.c). Callbacks an isolated bundle cannot honour (loading
 * bundles, registering host contracts or loaders) answer FunctionNotAvailable:
 * every HostApi field is non-NULL, as polyplug's ABI requires.
 */
#define _GNU_SOURCE
#include "polyplug_abi.h"
#include "worker.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct registration {
    GuestContractInterface iface; /* our copy: the plugin's may be a stack local */
    GuestContractInstance instance; /* what raw calls pass, made at load (see ppw_load) */
    char *contract_name;
    size_t contract_name_len;
    char *plugin_name;
    size_t plugin_name_len;
    Version plugin_version;
} registration;

typedef struct instance_entry {
    uint32_t contract;
    int live;
    GuestContractInstance instance;
} instance_entry;

static void *g_library;
static instance_entry *g_instances; /* handle h is g_instances[h - 1] */
static uint32_t g_ninstances;
static registration *g_regs;
static uint32_t g_nregs;
static uint64_t g_bundle_id;
static uint64_t g_revision;
static char g_last_error[512];
static size_t g_last_error_len;

/* ---- control frames --------------------------------------------------- */

static int g_control_fd = -1;
static pthread_mutex_t g_send_lock = PTHREAD_MUTEX_INITIALIZER;

void ppw_set_control_fd(int fd) { g_control_fd = fd; }

int ppw_control_fd(void) { return g_control_fd; }

static int write_all(const uint8_t *p, size_t n)
{
    while (n) {
        ssize_t w = write(g_control_fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Frames are a 4-byte big-endian length, then msgpack. Python's frames and
 * the plugin's log records share the socket, hence one lock for both. */
int ppw_send_frame(const uint8_t *payload, size_t len)
{
    uint8_t prefix[4] = {(uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8), (uint8_t)len};
    pthread_mutex_lock(&g_send_lock);
    int rc = write_all(prefix, 4) || write_all(payload, len) ? -1 : 0;
    pthread_mutex_unlock(&g_send_lock);
    return rc;
}

/* A log record as the msgpack map {"t": "log", "level": u32, "target": bin,
 * "message": bin}; bin because a plugin's bytes need not be UTF-8. */
#define LOG_TEXT_CAP 8192

static uint8_t *put_str(uint8_t *p, const char *s)
{
    size_t n = strlen(s); /* keys and tags only: short literals */
    *p++ = (uint8_t)(0xa0 | n);
    memcpy(p, s, n);
    return p + n;
}

static uint8_t *put_bin(uint8_t *p, StringView v)
{
    size_t n = v.ptr ? (v.len < LOG_TEXT_CAP ? v.len : LOG_TEXT_CAP) : 0;
    *p++ = 0xc5; /* bin 16 */
    *p++ = (uint8_t)(n >> 8);
    *p++ = (uint8_t)n;
    if (n)
        memcpy(p, v.ptr, n);
    return p + n;
}

static void send_log(uint32_t level, StringView target, StringView message)
{
    static _Thread_local uint8_t frame[2 * LOG_TEXT_CAP + 64];
    uint8_t *p = frame;
    *p++ = 0x84; /* fixmap, 4 entries */
    p = put_str(p, "t");
    p = put_str(p, "log");
    p = put_str(p, "level");
    *p++ = 0xce; /* uint 32 */
    for (int shift = 24; shift >= 0; shift -= 8)
        *p++ = (uint8_t)(level >> shift);
    p = put_str(p, "target");
    p = put_bin(p, target);
    p = put_str(p, "message");
    p = put_bin(p, message);
    ppw_send_frame(frame, (size_t)(p - frame));
}

/* {"t": "fault", "id": u32, "call": u64, "contract": i64, "function": i64} */
void ppw_send_fault_frame(uint32_t id, uint64_t call, int64_t contract, int64_t function)
{
    uint8_t frame[96];
    uint8_t *p = frame;
    *p++ = 0x85; /* fixmap, 5 entries */
    p = put_str(p, "t");
    p = put_str(p, "fault");
    const char *keys[] = {"id", "call", "contract", "function"};
    int64_t values[] = {id, (int64_t)call, contract, function};
    for (int i = 0; i < 4; i++) {
        p = put_str(p, keys[i]);
        *p++ = 0xd3; /* int 64 */
        for (int shift = 56; shift >= 0; shift -= 8)
            *p++ = (uint8_t)((uint64_t)values[i] >> shift);
    }
    ppw_send_frame(frame, (size_t)(p - frame));
}

/* ---- HostApi callbacks ------------------------------------------------ */

static void set_err(AbiError *err, uint32_t code, const char *message)
{
    if (!err)
        return;
    err->code = code;
    err->message.ptr = (const uint8_t *)message;
    err->message.len = message ? strlen(message) : 0;
}

void ppw_set_last_error(const char *text, size_t len)
{
    g_last_error_len = len < sizeof g_last_error ? len : sizeof g_last_error - 1;
    memcpy(g_last_error, text, g_last_error_len);
}

static void set_last_error(const char *text) { ppw_set_last_error(text, strlen(text)); }

static char *copy_view(StringView v, size_t *len)
{
    char *s = malloc(v.len + 1);
    if (!s)
        return NULL;
    if (v.len)
        memcpy(s, v.ptr, v.len);
    s[v.len] = 0;
    *len = v.len;
    return s;
}

static void cb_register_guest_contract(const HostApi *self, const PluginDescriptor *desc,
                                       const GuestContractInterface *iface, AbiError *err)
{
    (void)self;
    if (!desc)
        return set_err(err, ABI_INVALID_POINTER, "register_guest_contract: descriptor pointer is null");
    if (!iface)
        return set_err(err, ABI_INVALID_POINTER, "register_guest_contract: interface pointer is null");
    if (!iface->create_instance)
        return set_err(err, ABI_INVALID_POINTER, "register_guest_contract: create_instance is null");
    if (!iface->destroy_instance)
        return set_err(err, ABI_INVALID_POINTER, "register_guest_contract: destroy_instance is null");
    if (iface->dispatch_type != DISPATCH_NATIVE)
        return set_err(err, ABI_GENERIC,
                       "register_guest_contract: only native dispatch can be served by an isolated worker");
    const NativeDispatch *nd = &iface->dispatch.native;
    if (nd->function_count && !nd->functions)
        return set_err(err, ABI_INVALID_POINTER, "register_guest_contract: dispatch.native.functions is null");
    for (uint32_t i = 0; i < nd->function_count; i++)
        if (!nd->functions[i])
            return set_err(err, ABI_INVALID_POINTER, "register_guest_contract: a function slot is null");
    if (!desc->contract_name.ptr || desc->contract_name.len == 0)
        return set_err(err, ABI_GENERIC, "PluginDescriptor.contract_name is null or empty");
    for (uint32_t i = 0; i < g_nregs; i++)
        if (g_regs[i].iface.contract_id == iface->contract_id)
            return set_err(err, ABI_DUPLICATE_PROVIDER, "duplicate provider for this contract in this bundle");
    registration *grown = realloc(g_regs, (g_nregs + 1) * sizeof *g_regs);
    if (!grown)
        return set_err(err, ABI_GENERIC, "out of memory");
    g_regs = grown;
    registration *r = &g_regs[g_nregs];
    r->iface = *iface;
    r->instance = (GuestContractInstance){NULL, iface->contract_id};
    r->contract_name = copy_view(desc->contract_name, &r->contract_name_len);
    StringView no_name = {NULL, 0};
    r->plugin_name = copy_view(desc->name.ptr ? desc->name : no_name, &r->plugin_name_len);
    r->plugin_version = desc->version;
    if (!r->contract_name || !r->plugin_name) {
        free(r->contract_name);
        free(r->plugin_name);
        return set_err(err, ABI_GENERIC, "out of memory");
    }
    g_nregs++;
    g_revision++;
    set_err(err, ABI_OK, NULL);
}

static uint8_t *cb_alloc(const HostApi *self, size_t size, size_t align)
{
    (void)self;
    if (size == 0 || align == 0 || (align & (align - 1)))
        return NULL;
    if (align < sizeof(void *))
        align = sizeof(void *);
    void *p = NULL;
    return posix_memalign(&p, align, size) == 0 ? p : NULL;
}

static void cb_free(const HostApi *self, uint8_t *ptr, size_t size, size_t align)
{
    (void)self, (void)size, (void)align;
    free(ptr);
}

static int matches(const registration *r, uint64_t contract_id, uint32_t min_version)
{
    return r->iface.contract_id == contract_id && r->iface.contract_version.major >= min_version;
}

/* This bundle's own registrations, for when the host cannot be asked (a
 * thread of the plugin's own, serving no call). */
static GuestContractHandle find_local(uint64_t contract_id, uint32_t min_version)
{
    for (uint32_t i = 0; i < g_nregs; i++)
        if (matches(&g_regs[i], contract_id, min_version))
            return (GuestContractHandle){i, 0};
    return (GuestContractHandle){0xFFFFFFFFu, 0};
}

/* Lookups see every bundle of the runtime, in the host registry's order
 * (callback.c asks the host); handles are the host's. */
static GuestContractHandle cb_find_guest_contract(const HostApi *self, uint64_t contract_id, uint32_t min_version)
{
    (void)self;
    GuestContractHandle found;
    return ppw_find_guest_contract(contract_id, min_version, &found) ? found : find_local(contract_id, min_version);
}

static Array empty_array(size_t align) { return (Array){NULL, 0, align}; }

static Array cb_find_all_guest_contracts(const HostApi *self, uint64_t contract_id, uint32_t min_version)
{
    (void)self;
    Array found;
    if (ppw_find_all_guest_contracts(contract_id, min_version, &found))
        return found;
    GuestContractHandle *items = g_nregs ? calloc(g_nregs, sizeof *items) : NULL;
    size_t n = 0;
    for (uint32_t i = 0; items && i < g_nregs; i++)
        if (matches(&g_regs[i], contract_id, min_version))
            items[n++] = (GuestContractHandle){i, 0};
    if (n == 0) {
        free(items);
        return empty_array(_Alignof(GuestContractHandle));
    }
    return (Array){items, n, _Alignof(GuestContractHandle)};
}

static const GuestContractInterface *cb_resolve_guest_contract(const HostApi *self, GuestContractHandle h)
{
    (void)self;
    const GuestContractInterface *found;
    if (h.index != 0xFFFFFFFFu && ppw_resolve_guest_contract(h, &found))
        return found;
    return h.index < g_nregs && h.generation == 0 ? &g_regs[h.index].iface : NULL;
}

const GuestContractInterface *ppw_local_interface(uint32_t index)
{
    return index < g_nregs ? &g_regs[index].iface : NULL;
}

static HostContractInstance cb_get_host_contract(const HostApi *self, uint64_t id, uint32_t min_version)
{
    (void)self;
    return ppw_get_host_contract(id, min_version);
}

static const HostContractInterface *cb_resolve_host_contract_interface(const HostApi *self, uint64_t id,
                                                                       uint32_t min_version)
{
    (void)self;
    return ppw_resolve_host_contract_interface(id, min_version);
}

static Array cb_list_bundles(const HostApi *self)
{
    (void)self;
    Array found;
    if (ppw_list_bundles(&found))
        return found;
    uint64_t *ids = malloc(sizeof *ids);
    if (!ids)
        return empty_array(_Alignof(uint64_t));
    ids[0] = g_bundle_id;
    return (Array){ids, 1, _Alignof(uint64_t)};
}

/* The bundle's [[dependency]] entries, as the host validated them; shown
 * while its polyplug_init runs, as in polyplug. */
static DependencyInfo *g_deps;
static size_t g_ndeps;
static _Thread_local int t_initialising;

int ppw_set_dependencies(const DependencyInfo *deps, size_t n)
{
    free(g_deps);
    g_deps = n ? malloc(n * sizeof *deps) : NULL;
    if (n && !g_deps)
        return -1;
    if (n)
        memcpy(g_deps, deps, n * sizeof *deps);
    g_ndeps = n;
    return 0;
}

static Array cb_get_dependencies(const HostApi *self)
{
    (void)self;
    if (!t_initialising || g_ndeps == 0)
        return empty_array(_Alignof(DependencyInfo));
    DependencyInfo *items = malloc(g_ndeps * sizeof *items);
    if (!items)
        return empty_array(_Alignof(DependencyInfo));
    memcpy(items, g_deps, g_ndeps * sizeof *items);
    return (Array){items, g_ndeps, _Alignof(DependencyInfo)};
}

static const char NOT_IN_WORKER[] = "not available to a bundle running in a polyplug_isolated worker";

static void unavailable(AbiError *err)
{
    set_last_error(NOT_IN_WORKER);
    set_err(err, ABI_FUNCTION_NOT_AVAILABLE, NOT_IN_WORKER);
}

static void cb_load_bundle(const HostApi *self, const uint8_t *path, size_t len, AbiError *err)
{
    (void)self, (void)path, (void)len;
    unavailable(err);
}

static void cb_reload_bundle(const HostApi *self, const uint8_t *path, size_t len, AbiError *err)
{
    (void)self, (void)path, (void)len;
    unavailable(err);
}

static void cb_register_host_contract(const HostApi *self, const HostContractInterface *iface, AbiError *err)
{
    (void)self, (void)iface;
    unavailable(err);
}

static void cb_register_loader(const HostApi *self, void *loader, AbiError *err)
{
    (void)self, (void)loader;
    unavailable(err);
}

static void cb_unload_bundle(const HostApi *self, uint64_t bundle_id, AbiError *err)
{
    (void)self, (void)bundle_id;
    unavailable(err);
}

/* Copies min(len, buf_len) bytes and clears the error, as polyplug does. */
static size_t cb_get_last_error(const HostApi *self, uint8_t *buf, size_t buf_len)
{
    (void)self;
    size_t n = g_last_error_len < buf_len ? g_last_error_len : buf_len;
    if (buf && n)
        memcpy(buf, g_last_error, n);
    g_last_error_len = 0;
    return n;
}

static size_t cb_get_error_len(const HostApi *self)
{
    (void)self;
    return g_last_error_len;
}

static void cb_log(const HostApi *self, uint32_t level, StringView target, StringView message)
{
    (void)self;
    send_log(level, target, message);
}

static void cb_create_guest_instance(const HostApi *self, const GuestContractInterface *iface, const void *args,
                                     GuestContractInstance *out)
{
    if (!iface || !out)
        return;
    iface->create_instance((VmLoaderData){NULL}, self, args, out);
}

static void cb_destroy_guest_instance(const HostApi *self, const GuestContractInterface *iface,
                                      GuestContractInstance instance)
{
    if (iface)
        iface->destroy_instance((VmLoaderData){NULL}, self, instance);
}

static const uint64_t *cb_revision_counter(const HostApi *self)
{
    (void)self;
    return &g_revision;
}

static const HostApi g_host_api = {
    .runtime = &g_regs,
    .register_guest_contract = cb_register_guest_contract,
    .alloc = cb_alloc,
    .free = cb_free,
    .find_guest_contract = cb_find_guest_contract,
    .find_all_guest_contracts = cb_find_all_guest_contracts,
    .resolve_guest_contract = cb_resolve_guest_contract,
    .get_host_contract = cb_get_host_contract,
    .resolve_host_contract_interface = cb_resolve_host_contract_interface,
    .list_bundles = cb_list_bundles,
    .get_dependencies = cb_get_dependencies,
    .load_bundle = cb_load_bundle,
    .reload_bundle = cb_reload_bundle,
    .register_host_contract = cb_register_host_contract,
    .register_loader = cb_register_loader,
    .get_last_error = cb_get_last_error,
    .get_error_len = cb_get_error_len,
    .unload_bundle = cb_unload_bundle,
    .log = cb_log,
    .create_guest_instance = cb_create_guest_instance,
    .destroy_guest_instance = cb_destroy_guest_instance,
    .revision_counter = cb_revision_counter,
    .reserved = NULL,
};

/* ---- load, invoke, unload --------------------------------------------- */

static void set_message(ppw_load_result *r, const char *text, size_t len)
{
    if (!text)
        len = 0;
    if (len > sizeof r->message)
        len = sizeof r->message;
    if (len)
        memcpy(r->message, text, len);
    r->message_len = (uint32_t)len;
}

void ppw_load(const char *library, uint64_t bundle_id, const uint8_t *bundle_dir, size_t bundle_dir_len,
              ppw_load_result *result)
{
    memset(result, 0, sizeof *result);
    g_bundle_id = bundle_id;
    g_library = dlopen(library, RTLD_NOW | RTLD_LOCAL);
    if (!g_library) {
        const char *why = dlerror();
        result->kind = PPW_LOAD_DLOPEN;
        return set_message(result, why, why ? strlen(why) : 0);
    }
    PolyplugAbiVersionFn abi_version;
    *(void **)&abi_version = dlsym(g_library, "polyplug_abi_version");
    if (!abi_version) {
        result->kind = PPW_LOAD_NO_ABI_VERSION;
        return;
    }
    result->found = abi_version();
    if (result->found != POLYPLUG_ABI_VERSION) {
        result->kind = PPW_LOAD_ABI_MISMATCH;
        return;
    }
    PolyplugInitFn init;
    *(void **)&init = dlsym(g_library, "polyplug_init");
    if (!init) {
        result->kind = PPW_LOAD_NO_INIT;
        return;
    }
    BundleInitContext ctx = {bundle_id, {bundle_dir, bundle_dir_len}};
    ppw_mark_busy_thread();
    ppw_busy_function = PPW_BUSY_INIT;
    AbiError err = {ABI_OK, {NULL, 0}};
    t_initialising = 1;
    ppw_cb_in_init(1);
    if (ppw_fault_before(PPW_PHASE_INIT, 0, 0, &err) != PPW_SKIP)
        err = init(&g_host_api, &ctx);
    ppw_cb_in_init(0);
    t_initialising = 0;
    ppw_busy_function = -1;
    if (err.code != ABI_OK) {
        result->kind = PPW_LOAD_INIT_FAILED;
        result->code = err.code;
        set_message(result, (const char *)err.message.ptr, err.message.len);
        return;
    }
    /* Raw calls go through one instance per contract, created the way a
     * polyplug generated caller creates its own (create_guest_instance with
     * NULL args): stateless guests hand back {NULL, id}, stateful ones get
     * the state their functions expect. Destroyed before dlclose. */
    for (uint32_t i = 0; i < g_nregs; i++)
        cb_create_guest_instance(&g_host_api, &g_regs[i].iface, NULL, &g_regs[i].instance);
}

uint32_t ppw_registration_count(void) { return g_nregs; }

int64_t ppw_contract_index(const char *contract_name)
{
    for (uint32_t i = 0; i < g_nregs; i++)
        if (strcmp(g_regs[i].contract_name, contract_name) == 0)
            return i;
    return -1;
}

int ppw_registration(uint32_t index, ppw_registration_info *info)
{
    if (index >= g_nregs)
        return -1;
    const registration *r = &g_regs[index];
    *info = (ppw_registration_info){
        .contract_id = r->iface.contract_id,
        .major = r->iface.contract_version.major,
        .minor = r->iface.contract_version.minor,
        .patch = r->iface.contract_version.patch,
        .function_count = r->iface.dispatch.native.function_count,
        .contract_name = r->contract_name,
        .contract_name_len = r->contract_name_len,
        .plugin_name = r->plugin_name,
        .plugin_name_len = r->plugin_name_len,
        .plugin_major = r->plugin_version.major,
        .plugin_minor = r->plugin_version.minor,
        .plugin_patch = r->plugin_version.patch,
    };
    return 0;
}

const char *ppw_invoke(uint32_t contract, uint32_t function, const void *args, void *out, AbiError *err)
{
    return ppw_invoke_on(contract, 0, function, args, out, err);
}

static const GuestContractInstance *instance_of(uint32_t contract, uint32_t instance)
{
    if (instance == 0)
        return &g_regs[contract].instance;
    if (instance > g_ninstances)
        return NULL;
    const instance_entry *e = &g_instances[instance - 1];
    return e->live && e->contract == contract ? &e->instance : NULL;
}

const char *ppw_invoke_on(uint32_t contract, uint32_t instance, uint32_t function, const void *args, void *out,
                          AbiError *err)
{
    if (contract >= g_nregs)
        return "no such contract in this worker";
    const GuestContractInstance *inst = instance_of(contract, instance);
    if (!inst)
        return "no such live instance of this contract";
    const GuestContractInterface *iface = &g_regs[contract].iface;
    if (function >= iface->dispatch.native.function_count) {
        set_err(err, ABI_FUNCTION_NOT_AVAILABLE, "function index is out of range for this contract");
        return NULL;
    }
    NativeFn fn;
    *(const void **)&fn = iface->dispatch.native.functions[function];
    fn(*inst, args, out, err);
    return NULL;
}

uint32_t ppw_create_instance(uint32_t contract, const void *args, const char **why)
{
    if (contract >= g_nregs) {
        *why = "no such contract in this worker";
        return 0;
    }
    instance_entry *grown = realloc(g_instances, (g_ninstances + 1) * sizeof *g_instances);
    if (!grown) {
        *why = "out of memory";
        return 0;
    }
    g_instances = grown;
    instance_entry *e = &g_instances[g_ninstances];
    e->contract = contract;
    e->instance = (GuestContractInstance){NULL, g_regs[contract].iface.contract_id};
    cb_create_guest_instance(&g_host_api, &g_regs[contract].iface, args, &e->instance);
    e->live = 1;
    return ++g_ninstances;
}

const char *ppw_destroy_instance(uint32_t contract, uint32_t instance)
{
    if (instance == 0 || !instance_of(contract, instance))
        return "no such live instance of this contract";
    instance_entry *e = &g_instances[instance - 1];
    e->live = 0;
    cb_destroy_guest_instance(&g_host_api, &g_regs[contract].iface, e->instance);
    return NULL;
}

void ppw_free_buffer(uint8_t *ptr, size_t cap) { g_host_api.free(&g_host_api, ptr, cap, 1); }

/* No calls are in flight (the host drained them): destroy the instances,
 * then unmap the plugin. */
void ppw_unload(void)
{
    for (uint32_t h = 1; h <= g_ninstances; h++)
        if (g_instances[h - 1].live)
            ppw_destroy_instance(g_instances[h - 1].contract, h);
    for (uint32_t i = 0; i < g_nregs; i++)
        cb_destroy_guest_instance(&g_host_api, &g_regs[i].iface, g_regs[i].instance);
    g_nregs = 0;
    ppw_faults_release();
    if (g_library)
        dlclose(g_library);
    g_library = NULL;
}
