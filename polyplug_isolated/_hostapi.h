/*
 * A real polyplug HostApi in the host process, for hosts written against
 * polyplug's C ABI (polyplugc's generated callers, ctypes, cffi, C).
 *
 * The table's lifecycle and lookup functions call into Python (cffi
 * extern "Python+C", defined in _host_bridge.py). resolve_guest_contract
 * hands out GuestContractInterface structs whose native dispatch tables hold
 * host-side trampolines: functions[i](instance, args, out, &err) runs the call
 * in the bundle's worker and copies out and the AbiError back.
 *
 * A C function pointer carries no data, so the trampolines are a fixed pool
 * of distinct functions, each knowing only its own number; Python maps a
 * number to (contract, function index) when it hands a range of them out.
 */
#ifndef PP_HOSTAPI_H
#define PP_HOSTAPI_H

#include "polyplug_abi.h"

#define PPH_FUNCTION_TRAMPOLINES 8192
#define PPH_INTERFACE_TRAMPOLINES 1024
#define PPH_MESSAGE_CAP 1024

typedef struct pph_runtime pph_runtime;

pph_runtime *pph_runtime_new(uint64_t key);
void pph_runtime_close(pph_runtime *rt);
const HostApi *pph_host_api(pph_runtime *rt);
void pph_set_last_error(pph_runtime *rt, const uint8_t *message, size_t len);
void pph_bump_revision(pph_runtime *rt);

GuestContractInterface *pph_interface_new(uint32_t slot, uint64_t contract_id, uint32_t major,
                                          uint32_t minor, uint32_t patch, uint32_t first_function,
                                          uint32_t function_count);
void pph_set_abi_error(AbiError *err, uint32_t code, const uint8_t *message, size_t len);
uint8_t *pph_alloc(size_t size, size_t align);
void pph_free(uint8_t *ptr);

/* Implemented in Python (extern "Python+C"). */
int pph_py_lifecycle(uint64_t key, int op, const uint8_t *path, size_t path_len, uint64_t bundle_id);
int pph_py_find(uint64_t key, uint64_t contract_id, uint32_t min_version, int all, Array *out,
                GuestContractHandle *found);
const GuestContractInterface *pph_py_resolve(uint64_t key, uint32_t index, uint32_t generation);
int pph_py_list_bundles(uint64_t key, Array *out);
int pph_py_register_loader(uint64_t key, void *loader);
void pph_py_log(uint64_t key, uint32_t level, const uint8_t *scope, size_t scope_len, const uint8_t *message,
                size_t message_len);
void pph_py_call(uint32_t trampoline, uintptr_t instance, const void *args, void *out, AbiError *err);
void pph_py_create(uint32_t slot, const void *args, GuestContractInstance *out_instance);
void pph_py_destroy(uint32_t slot, void *instance);

#define PPH_LOAD 0
#define PPH_RELOAD 1
#define PPH_UNLOAD 2

#endif
