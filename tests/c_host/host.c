/*
 * A small C host: everything through the HostApi* that Runtime.host hands out.
 * Built and called by tests/test_polyplug_host_api.py; writes "name=value"
 * lines into the report.
 */
#include <stdio.h>
#include <string.h>

#include "polyplug_abi.h"

/* fnv1a64("guest_contract:test.add@1") */
#define TEST_ADD 0x40244DF59FCBECB6ull

static size_t used;

static void say(char *report, size_t cap, const char *name, long long value)
{
    int n = snprintf(report + used, cap - used, "%s=%lld\n", name, value);
    if (n > 0 && (size_t)n < cap - used)
        used += (size_t)n;
}

static void say_text(char *report, size_t cap, const char *name, const uint8_t *text, size_t len)
{
    int n = snprintf(report + used, cap - used, "%s=%.*s\n", name, (int)len, (const char *)text);
    if (n > 0 && (size_t)n < cap - used)
        used += (size_t)n;
}

int run(const HostApi *host, const char *bundle, const char *missing, char *report, size_t cap)
{
    AbiError err;
    uint8_t message[512];
    used = 0;
    report[0] = 0;

    const uint64_t *revision = host->revision_counter(host);
    uint64_t before = *revision;
    host->load_bundle(host, (const uint8_t *)missing, strlen(missing), &err);
    say(report, cap, "load_missing_code", err.code);
    size_t len = host->get_last_error(host, message, sizeof message);
    say(report, cap, "last_error_len", (long long)len);
    say(report, cap, "last_error_cleared", host->get_error_len(host) == 0);
    host->load_bundle(host, (const uint8_t *)bundle, strlen(bundle), &err);
    say(report, cap, "load_code", err.code);
    say(report, cap, "revision_changed", *revision != before);

    GuestContractHandle handle = host->find_guest_contract(host, TEST_ADD, 1);
    say(report, cap, "handle_index", handle.index);
    Array all = host->find_all_guest_contracts(host, TEST_ADD, 1);
    say(report, cap, "find_all_len", (long long)all.len);
    host->free(host, all.items, all.len * sizeof(GuestContractHandle), all.align);
    Array bundles = host->list_bundles(host);
    say(report, cap, "bundles", (long long)bundles.len);
    host->free(host, bundles.items, bundles.len * 8, bundles.align);

    const GuestContractInterface *iface = host->resolve_guest_contract(host, handle);
    say(report, cap, "function_count", iface ? iface->dispatch.native.function_count : -1);
    GuestContractInstance instance;
    host->create_guest_instance(host, iface, NULL, &instance);
    say(report, cap, "instance_contract_is_add", instance.contract_id == TEST_ADD);

    uint32_t args[2] = {40, 2}, sum = 0;
    NativeFn add_primitive = (NativeFn)iface->dispatch.native.functions[1];
    add_primitive(instance, args, &sum, &err);
    say(report, cap, "add_primitive_code", err.code);
    say(report, cap, "add_primitive", sum);
    StringView version = {NULL, 0};
    ((NativeFn)iface->dispatch.native.functions[2])(instance, NULL, &version, &err);
    say_text(report, cap, "version", version.ptr, version.len);
    host->destroy_guest_instance(host, iface, instance);

    uint8_t *block = host->alloc(host, 64, 16);
    say(report, cap, "alloc_aligned", block && ((uintptr_t)block % 16) == 0);
    host->free(host, block, 64, 16);
    StringView scope = {(const uint8_t *)"c-host", 6}, text = {(const uint8_t *)"hello from C", 12};
    host->log(host, 2, scope, text);

    host->unload_bundle(host, 2548453539782603331ull, &err); /* fnv1a64("adder") */
    say(report, cap, "unload_code", err.code);
    say(report, cap, "resolve_after_unload_is_null", host->resolve_guest_contract(host, handle) == NULL);
    add_primitive(instance, args, &sum, &err);
    say(report, cap, "call_after_unload_code", err.code);
    host->unload_bundle(host, 2548453539782603331ull, &err);
    say(report, cap, "unload_again_code", err.code);
    len = host->get_last_error(host, message, sizeof message);
    say_text(report, cap, "unload_again_error", message, len < 40 ? len : 40);
    return 0;
}
