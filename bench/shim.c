/*
 * The in-process baseline's C half, for `python -m bench`: the same contract
 * as the isolated hot path's pp_call_small (polyplug_isolated/_channel.c),
 * with the worker's dispatch called directly instead of through a slot.
 *
 *   int64_t shim_call_small(conn, contract, function, args, args_len, out_size, timeout_s)
 *
 * takes the same arguments as pp_call_small (conn and timeout_s unused), calls
 * ppw_invoke (the worker's own dispatch, loaded in this process by
 * _serve_ffi) with an 8-byte zeroed out buffer, checks the refusal and the
 * AbiError in C and returns the out bytes decoded as a little-endian integer,
 * or minus a PP_CALL_* status: error check and result decode happen in C on
 * both sides of the ratio.
 *
 * Built by bench/_shim.py (cffi API mode) into a temporary directory; the
 * address of ppw_invoke is handed over once with shim_set_invoke.
 */
#include <stddef.h>
#include <stdint.h>

typedef struct { const uint8_t *ptr; size_t len; } StringView;
typedef struct { uint32_t code; StringView message; } AbiError;
typedef const char *(*invoke_fn)(uint32_t contract, uint32_t function, const void *args, void *out,
                                 AbiError *err);

/* The PP_CALL_* statuses of polyplug_isolated/_channel.h this shim can answer. */
enum { SHIM_PLUGIN_ERROR = 1, SHIM_TOO_LARGE = 6, SHIM_REFUSED = 7 };

static invoke_fn g_invoke;

void shim_set_invoke(uintptr_t address)
{
    g_invoke = (invoke_fn)address;
}

int64_t shim_call_small(void *conn, uint32_t contract, uint32_t function, const uint8_t *args, size_t args_len,
                        size_t out_size, double timeout_s)
{
    (void)conn;
    (void)timeout_s;
    uint8_t out[8] = {0};
    AbiError err = {0, {NULL, 0}};
    if (out_size > 7)
        return -SHIM_TOO_LARGE;
    if (g_invoke(contract, function, args_len ? args : NULL, out, &err) != NULL)
        return -SHIM_REFUSED;
    if (err.code != 0)
        return -SHIM_PLUGIN_ERROR;
    uint64_t value = 0;
    for (size_t i = out_size; i-- > 0;)
        value = value << 8 | out[i];
    return (int64_t)value;
}
