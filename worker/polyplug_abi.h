/*
 * The polyplug native C ABI, version 1, as spoken by polyplug 0.1.3.
 *
 * Layouts are for 64-bit Linux (README.md, "Writing a plugin"). The worker uses it
 * to load bundles; the fixture plugins in fixtures/ use it to be bundles.
 * Every struct is plain C with natural alignment; _Static_asserts pin the
 * sizes the ABI promises so a drift fails the build, not a call.
 */
#ifndef POLYPLUG_ABI_H
#define POLYPLUG_ABI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define POLYPLUG_ABI_VERSION 1u

enum {
    ABI_OK = 0,
    ABI_GENERIC = 1,
    ABI_BUFFER_TOO_SMALL = 2,
    ABI_PANIC = 3,
    ABI_NOT_FOUND = 4,
    ABI_STALE_HANDLE = 5,
    ABI_FUNCTION_NOT_AVAILABLE = 6,
    ABI_DUPLICATE_PROVIDER = 7,
    ABI_INVALID_POINTER = 8,
    ABI_REENTRANT_CALL = 9,
    ABI_HOST_CONTRACT_NOT_FOUND = 100,
    ABI_HOST_CONTRACT_VERSION_MISMATCH = 101,
    ABI_HOST_CONTRACT_CALL_FAILED = 102,
};

enum { DISPATCH_NATIVE = 0, DISPATCH_VM = 1 };

typedef struct StringView { const uint8_t *ptr; size_t len; } StringView;
typedef struct Buffer { uint8_t *ptr; size_t len; size_t cap; } Buffer;
typedef struct Version { uint32_t major, minor, patch; } Version;
typedef struct AbiError { uint32_t code; StringView message; } AbiError;
typedef struct GuestContractHandle { uint32_t index; uint32_t generation; } GuestContractHandle;
typedef struct GuestContractInstance { void *data; uint64_t contract_id; } GuestContractInstance;
typedef struct HostContractInstance { void *data; } HostContractInstance;
typedef struct VmLoaderData { void *data; } VmLoaderData;
typedef struct Array { void *items; size_t len; size_t align; } Array;

typedef struct HostApi HostApi;
typedef struct CallArena CallArena;

typedef void (*NativeFn)(GuestContractInstance instance, const void *args,
                         void *out, AbiError *out_err);
typedef void (*VmCallFn)(VmLoaderData loader_data, GuestContractInstance instance,
                         uint32_t fn_id, const void *args, void *out,
                         CallArena *arena, AbiError *out_err);

typedef struct NativeDispatch { uint32_t function_count; const void *const *functions; } NativeDispatch;
typedef struct VmDispatch { VmCallFn call; VmLoaderData loader_data; } VmDispatch;
typedef union DispatchMechanisms { NativeDispatch native; VmDispatch vm; } DispatchMechanisms;

typedef struct GuestContractInterface {
    uint64_t contract_id;
    Version contract_version;
    uint32_t dispatch_type;
    void (*create_instance)(VmLoaderData loader_data, const HostApi *host,
                            const void *args, GuestContractInstance *out_instance);
    void (*destroy_instance)(VmLoaderData loader_data, const HostApi *host,
                             GuestContractInstance instance);
    DispatchMechanisms dispatch;
} GuestContractInterface;

typedef struct HostContractInterface HostContractInterface;

/* Host contracts (host -> guest services): functions[fn_id] take the
 * instance by value (8 bytes); min_version is packed major << 16 | minor. */
typedef void (*HostNativeFn)(HostContractInstance instance, const void *args, void *out, AbiError *out_err);
struct HostContractInterface {
    uint64_t contract_id;
    Version contract_version;
    bool singleton;
    uint32_t dispatch_type;
    void *runtime;
    void *user_data;
    void (*create_instance)(const HostContractInterface *self, const void *args,
                            HostContractInstance *out_instance);
    void (*destroy_instance)(const HostContractInterface *self, HostContractInstance instance);
    DispatchMechanisms dispatch;
};

/* What get_dependencies answers during init: one per [[dependency]]. */
typedef struct DependencyInfo { uint64_t contract_id; uint32_t min_version; uint64_t bundle_id; } DependencyInfo;

typedef struct PluginDescriptor { StringView name; StringView contract_name; Version version; } PluginDescriptor;
typedef struct BundleInitContext { uint64_t bundle_id; StringView bundle_path; } BundleInitContext;

struct HostApi {
    void *runtime;
    void (*register_guest_contract)(const HostApi *self, const PluginDescriptor *descriptor,
                                    const GuestContractInterface *iface, AbiError *out_err);
    uint8_t *(*alloc)(const HostApi *self, size_t size, size_t align);
    void (*free)(const HostApi *self, uint8_t *ptr, size_t size, size_t align);
    GuestContractHandle (*find_guest_contract)(const HostApi *self, uint64_t contract_id,
                                               uint32_t min_version);
    Array (*find_all_guest_contracts)(const HostApi *self, uint64_t contract_id,
                                      uint32_t min_version);
    const GuestContractInterface *(*resolve_guest_contract)(const HostApi *self,
                                                            GuestContractHandle handle);
    HostContractInstance (*get_host_contract)(const HostApi *self, uint64_t contract_id,
                                              uint32_t min_version);
    const HostContractInterface *(*resolve_host_contract_interface)(const HostApi *self,
                                                                    uint64_t contract_id,
                                                                    uint32_t min_version);
    Array (*list_bundles)(const HostApi *self);
    Array (*get_dependencies)(const HostApi *self);
    void (*load_bundle)(const HostApi *self, const uint8_t *path, size_t path_len, AbiError *out_err);
    void (*reload_bundle)(const HostApi *self, const uint8_t *path, size_t path_len, AbiError *out_err);
    void (*register_host_contract)(const HostApi *self, const HostContractInterface *iface,
                                   AbiError *out_err);
    void (*register_loader)(const HostApi *self, void *loader, AbiError *out_err);
    size_t (*get_last_error)(const HostApi *self, uint8_t *buf, size_t buf_len);
    size_t (*get_error_len)(const HostApi *self);
    void (*unload_bundle)(const HostApi *self, uint64_t bundle_id, AbiError *out_err);
    void (*log)(const HostApi *self, uint32_t level, StringView target, StringView message);
    void (*create_guest_instance)(const HostApi *self, const GuestContractInterface *iface,
                                  const void *args, GuestContractInstance *out_instance);
    void (*destroy_guest_instance)(const HostApi *self, const GuestContractInterface *iface,
                                   GuestContractInstance instance);
    const uint64_t *(*revision_counter)(const HostApi *self);
    const void *reserved;
};

typedef uint32_t (*PolyplugAbiVersionFn)(void);
typedef AbiError (*PolyplugInitFn)(const HostApi *host, const BundleInitContext *ctx);

_Static_assert(sizeof(StringView) == 16, "StringView is 16 bytes");
_Static_assert(sizeof(Buffer) == 24, "Buffer is 24 bytes");
_Static_assert(sizeof(Version) == 12, "Version is 12 bytes");
_Static_assert(sizeof(AbiError) == 24, "AbiError is 24 bytes");
_Static_assert(sizeof(GuestContractInstance) == 16, "GuestContractInstance is 16 bytes");
_Static_assert(sizeof(GuestContractHandle) == 8, "GuestContractHandle is 8 bytes");
_Static_assert(sizeof(GuestContractInterface) == 56, "GuestContractInterface is 56 bytes");
_Static_assert(offsetof(GuestContractInterface, dispatch) == 40, "dispatch at 40");
_Static_assert(sizeof(HostContractInterface) == 80, "HostContractInterface is 80 bytes");
_Static_assert(offsetof(HostContractInterface, dispatch) == 64, "host dispatch at 64");
_Static_assert(sizeof(DependencyInfo) == 24, "DependencyInfo is 24 bytes");
_Static_assert(sizeof(PluginDescriptor) == 48, "PluginDescriptor is 48 bytes");
_Static_assert(sizeof(BundleInitContext) == 24, "BundleInitContext is 24 bytes");
_Static_assert(sizeof(HostApi) == 184, "HostApi is 184 bytes");
_Static_assert(offsetof(HostApi, revision_counter) == 168, "revision_counter at 168");

#endif
