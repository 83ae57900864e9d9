/*
 * The host's HostApi and its trampolines (see _hostapi.h for the design).
 *
 * Everything here is thin: argument checks a C caller could get wrong, the
 * per-runtime last-error slot, the revision counter and the allocator. What a
 * function means is decided in Python, which holds the runtime.
 */
#define _GNU_SOURCE
#include "_hostapi.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct pph_runtime {
    HostApi api; /* first: a HostApi* is the pph_runtime* */
    uint64_t key; /* the Python runtime's key; 0 once closed (atomic builtins) */
    uint64_t revision;
    pthread_mutex_t lock;
    uint8_t *error;
    size_t error_len;
};

static _Thread_local uint8_t tl_message[PPH_MESSAGE_CAP];

static pph_runtime *rt_of(const HostApi *self) { return (pph_runtime *)self; }

static uint64_t key_of(const HostApi *self)
{
    return self ? __atomic_load_n(&rt_of(self)->key, __ATOMIC_ACQUIRE) : 0;
}

void pph_set_last_error(pph_runtime *rt, const uint8_t *message, size_t len)
{
    uint8_t *copy = len ? malloc(len) : NULL;
    if (copy)
        memcpy(copy, message, len);
    pthread_mutex_lock(&rt->lock);
    free(rt->error);
    rt->error = copy;
    rt->error_len = copy ? len : 0;
    pthread_mutex_unlock(&rt->lock);
}

static void last_error(const HostApi *self, const char *message)
{
    pph_set_last_error(rt_of(self), (const uint8_t *)message, strlen(message));
}

void pph_set_abi_error(AbiError *err, uint32_t code, const uint8_t *message, size_t len)
{
    if (!err)
        return;
    if (len > PPH_MESSAGE_CAP)
        len = PPH_MESSAGE_CAP;
    if (len)
        memcpy(tl_message, message, len);
    err->code = code;
    err->message = (StringView){len ? tl_message : NULL, len};
}

static void static_error(AbiError *err, uint32_t code, const char *message)
{
    if (err) {
        err->code = code;
        err->message = (StringView){(const uint8_t *)message, message ? strlen(message) : 0};
    }
}

static int closed(const HostApi *self, AbiError *err)
{
    if (key_of(self))
        return 0;
    if (self)
        last_error(self, "this polyplug_isolated runtime is closed; create a new Runtime");
    static_error(err, ABI_GENERIC, NULL);
    return 1;
}

uint8_t *pph_alloc(size_t size, size_t align)
{
    void *ptr = NULL;
    if (size == 0 || align == 0 || (align & (align - 1)))
        return NULL;
    if (align < sizeof(void *))
        align = sizeof(void *);
    return posix_memalign(&ptr, align, size) == 0 ? ptr : NULL;
}

void pph_free(uint8_t *ptr) { free(ptr); }

/* ---- the HostApi table ------------------------------------------------------- */

static void h_register_guest_contract(const HostApi *self, const PluginDescriptor *descriptor,
                                      const GuestContractInterface *iface, AbiError *out_err)
{
    if (self)
        last_error(self, "register_guest_contract: bundles register their contracts inside their own "
                         "worker process; the host process cannot provide guest contracts");
    static_error(out_err, ABI_GENERIC, NULL);
}

static uint8_t *h_alloc(const HostApi *self, size_t size, size_t align) { return pph_alloc(size, align); }

static void h_free(const HostApi *self, uint8_t *ptr, size_t size, size_t align) { free(ptr); }

static GuestContractHandle h_find(const HostApi *self, uint64_t contract_id, uint32_t min_version)
{
    GuestContractHandle found = {UINT32_MAX, 0};
    uint64_t key = key_of(self);
    if (key)
        pph_py_find(key, contract_id, min_version, 0, NULL, &found);
    return found;
}

static Array h_find_all(const HostApi *self, uint64_t contract_id, uint32_t min_version)
{
    Array out = {NULL, 0, _Alignof(GuestContractHandle)};
    uint64_t key = key_of(self);
    if (key)
        pph_py_find(key, contract_id, min_version, 1, &out, NULL);
    return out;
}

static const GuestContractInterface *h_resolve(const HostApi *self, GuestContractHandle handle)
{
    uint64_t key = key_of(self);
    return key ? pph_py_resolve(key, handle.index, handle.generation) : NULL;
}

static HostContractInstance h_get_host_contract(const HostApi *self, uint64_t contract_id, uint32_t min_version)
{
    char message[128];
    snprintf(message, sizeof message, "host contract not found: id=0x%016llX, min_version=%u",
             (unsigned long long)contract_id, min_version);
    if (self)
        last_error(self, message);
    return (HostContractInstance){NULL};
}

static const HostContractInterface *h_resolve_host_contract_interface(const HostApi *self, uint64_t contract_id,
                                                                      uint32_t min_version)
{
    char message[128];
    snprintf(message, sizeof message, "host contract interface not found: id=0x%016llX",
             (unsigned long long)contract_id);
    if (self)
        last_error(self, message);
    return NULL;
}

static Array h_list_bundles(const HostApi *self)
{
    Array out = {NULL, 0, _Alignof(uint64_t)};
    uint64_t key = key_of(self);
    if (key)
        pph_py_list_bundles(key, &out);
    return out;
}

/* Only meaningful while a bundle's init runs, which happens in its worker. */
static Array h_get_dependencies(const HostApi *self) { return (Array){NULL, 0, 8}; }

static void lifecycle(const HostApi *self, int op, const uint8_t *path, size_t path_len, uint64_t bundle_id,
                      AbiError *out_err)
{
    if (closed(self, out_err))
        return;
    if (op != PPH_UNLOAD && !path) {
        static_error(out_err, ABI_INVALID_POINTER,
                     op == PPH_LOAD ? "null path pointer in load_bundle" : "null path pointer in reload_bundle");
        return;
    }
    int failed = pph_py_lifecycle(key_of(self), op, path, path_len, bundle_id);
    static_error(out_err, failed ? ABI_GENERIC : ABI_OK, NULL);
}

static void h_load(const HostApi *self, const uint8_t *path, size_t len, AbiError *out_err)
{
    lifecycle(self, PPH_LOAD, path, len, 0, out_err);
}

static void h_reload(const HostApi *self, const uint8_t *path, size_t len, AbiError *out_err)
{
    lifecycle(self, PPH_RELOAD, path, len, 0, out_err);
}

static void h_unload(const HostApi *self, uint64_t bundle_id, AbiError *out_err)
{
    lifecycle(self, PPH_UNLOAD, NULL, 0, bundle_id, out_err);
}

static void h_register_host_contract(const HostApi *self, const HostContractInterface *iface, AbiError *out_err)
{
    if (closed(self, out_err))
        return;
    last_error(self, "register_host_contract: host contracts are not available through polyplug_isolated "
                     "yet; guests cannot call back into this host");
    static_error(out_err, ABI_GENERIC, NULL);
}

static void h_register_loader(const HostApi *self, void *loader, AbiError *out_err)
{
    if (closed(self, out_err))
        return;
    if (!loader) {
        static_error(out_err, ABI_INVALID_POINTER, "null pointer in register_loader");
        return;
    }
    static_error(out_err, pph_py_register_loader(key_of(self), loader) ? ABI_GENERIC : ABI_OK, NULL);
}

static size_t h_get_last_error(const HostApi *self, uint8_t *buf, size_t buf_len)
{
    if (!self)
        return 0;
    pph_runtime *rt = rt_of(self);
    pthread_mutex_lock(&rt->lock);
    size_t n = rt->error_len < buf_len ? rt->error_len : buf_len;
    if (buf && n)
        memcpy(buf, rt->error, n);
    free(rt->error);
    rt->error = NULL;
    rt->error_len = 0;
    pthread_mutex_unlock(&rt->lock);
    return buf ? n : 0;
}

static size_t h_get_error_len(const HostApi *self)
{
    if (!self)
        return 0;
    pph_runtime *rt = rt_of(self);
    pthread_mutex_lock(&rt->lock);
    size_t n = rt->error_len;
    pthread_mutex_unlock(&rt->lock);
    return n;
}

static void h_log(const HostApi *self, uint32_t level, StringView scope, StringView message)
{
    uint64_t key = key_of(self);
    if (key)
        pph_py_log(key, level, scope.ptr, scope.ptr ? scope.len : 0, message.ptr,
                   message.ptr ? message.len : 0);
}

static void h_create_guest_instance(const HostApi *self, const GuestContractInterface *iface, const void *args,
                                    GuestContractInstance *out_instance)
{
    if (!out_instance)
        return;
    *out_instance = (GuestContractInstance){NULL, 0};
    if (iface && iface->create_instance)
        iface->create_instance((VmLoaderData){NULL}, self, args, out_instance);
}

static void h_destroy_guest_instance(const HostApi *self, const GuestContractInterface *iface,
                                     GuestContractInstance instance)
{
    if (iface && iface->destroy_instance)
        iface->destroy_instance((VmLoaderData){NULL}, self, instance);
}

static const uint64_t *h_revision_counter(const HostApi *self) { return self ? &rt_of(self)->revision : NULL; }

pph_runtime *pph_runtime_new(uint64_t key)
{
    pph_runtime *rt = calloc(1, sizeof *rt);
    if (!rt)
        return NULL;
    pthread_mutex_init(&rt->lock, NULL);
    rt->key = key;
    rt->api = (HostApi){
        .runtime = rt,
        .register_guest_contract = h_register_guest_contract,
        .alloc = h_alloc,
        .free = h_free,
        .find_guest_contract = h_find,
        .find_all_guest_contracts = h_find_all,
        .resolve_guest_contract = h_resolve,
        .get_host_contract = h_get_host_contract,
        .resolve_host_contract_interface = h_resolve_host_contract_interface,
        .list_bundles = h_list_bundles,
        .get_dependencies = h_get_dependencies,
        .load_bundle = h_load,
        .reload_bundle = h_reload,
        .register_host_contract = h_register_host_contract,
        .register_loader = h_register_loader,
        .get_last_error = h_get_last_error,
        .get_error_len = h_get_error_len,
        .unload_bundle = h_unload,
        .log = h_log,
        .create_guest_instance = h_create_guest_instance,
        .destroy_guest_instance = h_destroy_guest_instance,
        .revision_counter = h_revision_counter,
        .reserved = NULL,
    };
    return rt;
}

/* A host may still hold the pointer: the table stays, and answers "closed". */
void pph_runtime_close(pph_runtime *rt) { __atomic_store_n(&rt->key, 0, __ATOMIC_RELEASE); }

const HostApi *pph_host_api(pph_runtime *rt) { return &rt->api; }

void pph_bump_revision(pph_runtime *rt) { __atomic_fetch_add(&rt->revision, 1, __ATOMIC_RELEASE); }

/* ---- trampolines ---------------------------------------------------------------- */

#define PPH_HEX(M, p) \
    M(p##0) M(p##1) M(p##2) M(p##3) M(p##4) M(p##5) M(p##6) M(p##7) \
    M(p##8) M(p##9) M(p##A) M(p##B) M(p##C) M(p##D) M(p##E) M(p##F)
#define PPH_HEX2(M, p) \
    PPH_HEX(M, p##0) PPH_HEX(M, p##1) PPH_HEX(M, p##2) PPH_HEX(M, p##3) \
    PPH_HEX(M, p##4) PPH_HEX(M, p##5) PPH_HEX(M, p##6) PPH_HEX(M, p##7) \
    PPH_HEX(M, p##8) PPH_HEX(M, p##9) PPH_HEX(M, p##A) PPH_HEX(M, p##B) \
    PPH_HEX(M, p##C) PPH_HEX(M, p##D) PPH_HEX(M, p##E) PPH_HEX(M, p##F)
#define PPH_HEX3(M, p) \
    PPH_HEX2(M, p##0) PPH_HEX2(M, p##1) PPH_HEX2(M, p##2) PPH_HEX2(M, p##3) \
    PPH_HEX2(M, p##4) PPH_HEX2(M, p##5) PPH_HEX2(M, p##6) PPH_HEX2(M, p##7) \
    PPH_HEX2(M, p##8) PPH_HEX2(M, p##9) PPH_HEX2(M, p##A) PPH_HEX2(M, p##B) \
    PPH_HEX2(M, p##C) PPH_HEX2(M, p##D) PPH_HEX2(M, p##E) PPH_HEX2(M, p##F)

/* Shared by every function trampoline (kept out of line: 4096 copies stay small). */
__attribute__((noinline)) static void dispatch(uint32_t n, void *instance, const void *args, void *out,
                                               AbiError *err)
{
    AbiError ignored;
    err = err ? err : &ignored;
    *err = (AbiError){ABI_OK, {NULL, 0}}; /* Python writes it only when the call fails */
    pph_py_call(n, (uintptr_t)instance, args, out, err);
}

#define PPH_FUNCTION(n)                                                                                \
    static void pph_fn_##n(GuestContractInstance instance, const void *args, void *out, AbiError *err) \
    {                                                                                                  \
        dispatch(n, instance.data, args, out, err);                                                    \
    }
#define PPH_CREATE(n)                                                                                   \
    static void pph_create_##n(VmLoaderData loader, const HostApi *host, const void *args,             \
                               GuestContractInstance *out)                                              \
    {                                                                                                   \
        if (out)                                                                                        \
            pph_py_create(n, args, out);                                                                \
    }                                                                                                   \
    static void pph_destroy_##n(VmLoaderData loader, const HostApi *host, GuestContractInstance instance) \
    {                                                                                                   \
        pph_py_destroy(n, instance.data);                                                               \
    }
#define PPH_FUNCTION_ENTRY(n) (const void *)pph_fn_##n,
#define PPH_CREATE_ENTRY(n) pph_create_##n,
#define PPH_DESTROY_ENTRY(n) pph_destroy_##n,

PPH_HEX3(PPH_FUNCTION, 0x0) PPH_HEX3(PPH_FUNCTION, 0x1)
PPH_HEX2(PPH_CREATE, 0x0) PPH_HEX2(PPH_CREATE, 0x1) PPH_HEX2(PPH_CREATE, 0x2) PPH_HEX2(PPH_CREATE, 0x3)

static const void *const g_functions[PPH_FUNCTION_TRAMPOLINES] = {
    PPH_HEX3(PPH_FUNCTION_ENTRY, 0x0) PPH_HEX3(PPH_FUNCTION_ENTRY, 0x1)};
static void (*const g_creates[PPH_INTERFACE_TRAMPOLINES])(VmLoaderData, const HostApi *, const void *,
                                                          GuestContractInstance *) = {
    PPH_HEX2(PPH_CREATE_ENTRY, 0x0) PPH_HEX2(PPH_CREATE_ENTRY, 0x1) PPH_HEX2(PPH_CREATE_ENTRY, 0x2)
        PPH_HEX2(PPH_CREATE_ENTRY, 0x3)};
static void (*const g_destroys[PPH_INTERFACE_TRAMPOLINES])(VmLoaderData, const HostApi *,
                                                           GuestContractInstance) = {
    PPH_HEX2(PPH_DESTROY_ENTRY, 0x0) PPH_HEX2(PPH_DESTROY_ENTRY, 0x1) PPH_HEX2(PPH_DESTROY_ENTRY, 0x2)
        PPH_HEX2(PPH_DESTROY_ENTRY, 0x3)};

/* One interface: its struct, then its function table, in one allocation.
 * Never freed while the process lives: a host may keep the pointer (the
 * trampolines then answer StaleHandle rather than touch freed memory). */
GuestContractInterface *pph_interface_new(uint32_t slot, uint64_t contract_id, uint32_t major, uint32_t minor,
                                          uint32_t patch, uint32_t first_function, uint32_t function_count)
{
    if (slot >= PPH_INTERFACE_TRAMPOLINES || first_function > PPH_FUNCTION_TRAMPOLINES ||
        function_count > PPH_FUNCTION_TRAMPOLINES - first_function)
        return NULL;
    GuestContractInterface *iface = calloc(1, sizeof *iface + (function_count + 1) * sizeof(void *));
    if (!iface)
        return NULL;
    const void **table = (const void **)(iface + 1);
    for (uint32_t i = 0; i < function_count; i++)
        table[i] = g_functions[first_function + i];
    iface->contract_id = contract_id;
    iface->contract_version = (Version){major, minor, patch};
    iface->dispatch_type = DISPATCH_NATIVE;
    iface->create_instance = g_creates[slot];
    iface->destroy_instance = g_destroys[slot];
    iface->dispatch.native = (NativeDispatch){function_count, (const void *const *)table};
    return iface;
}
