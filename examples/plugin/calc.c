/* calc: a complete polyplug plugin providing contract example.calc@1 (see api.toml). */
#include "polyplug_abi.h"

#define CALC_ID 0x1C2310712DA78B06ull /* guest_contract_id("example.calc", 1) */
#define TEXT(s) { (const uint8_t *)(s), sizeof(s) - 1 }

typedef struct { int32_t a, b; } Pair;                     /* several parameters: one struct */
static const AbiError OK = { ABI_OK, { 0, 0 } };
static const AbiError BY_ZERO = { 256, TEXT("calc: division by zero") }; /* 256+: your own codes */

static void add(GuestContractInstance self, const void *args, void *out, AbiError *err)
{
    const Pair *p = args;
    *(int32_t *)out = p->a + p->b;
    *err = OK;
}

static void divide(GuestContractInstance self, const void *args, void *out, AbiError *err)
{
    const Pair *p = args;
    if (p->b == 0) { *err = BY_ZERO; return; }
    *(int32_t *)out = p->a / p->b;
    *err = OK;
}

static void length(GuestContractInstance self, const void *args, void *out, AbiError *err)
{
    *(uint64_t *)out = ((const StringView *)args)->len; /* one parameter: a pointer to it */
    *err = OK;
}

static void create(VmLoaderData d, const HostApi *host, const void *args, GuestContractInstance *out)
{
    *out = (GuestContractInstance){ NULL, CALC_ID };        /* a stateless contract */
}

static void destroy(VmLoaderData d, const HostApi *host, GuestContractInstance instance) {}

static const void *const FUNCTIONS[] = { add, divide, length }; /* ids: api.toml's order */

#define EXPORT __attribute__((visibility("default")))

EXPORT uint32_t polyplug_abi_version(void) { return POLYPLUG_ABI_VERSION; }

EXPORT AbiError polyplug_init(const HostApi *host, const BundleInitContext *ctx)
{
    static const PluginDescriptor plugin = { TEXT("calc"), TEXT("example.calc"), { 1, 0, 0 } };
    static const GuestContractInterface calc = {
        .contract_id = CALC_ID, .contract_version = { 1, 0, 0 }, .dispatch_type = DISPATCH_NATIVE,
        .create_instance = create, .destroy_instance = destroy,
        .dispatch.native = { 3, FUNCTIONS },
    };
    AbiError err = OK;
    host->register_guest_contract(host, &plugin, &calc, &err);
    return err;
}
