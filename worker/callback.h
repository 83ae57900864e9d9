/*
 * Calls back from a worker to its host: the wire format of one request and
 * its reply, as they lie in a slot's cb[] area (worker/channel.h) or travel
 * in a "cb" control frame while polyplug_init runs.
 *
 * A plugin that calls a host contract, looks up or calls another bundle's
 * contract, or lists the bundles, does so through the HostApi the worker gave
 * it; the worker turns that into one request, the host thread waiting on the
 * plugin's call answers it (polyplug_isolated/_callbacks.py), and the worker
 * turns the reply back into what the HostApi function returns.
 *
 *   request:  pp_cb_request, then args_len bytes of args: the argument record
 *             followed by the bytes its StringViews/Buffers point at, each
 *             view's pointer replaced by the offset of its bytes in the args
 *             (PP_NULL_OFFSET for NULL)
 *   reply:    pp_cb_reply, then msg_len bytes of the AbiError message, padded
 *             to 8; out_len bytes of out (its views as offsets into the tail),
 *             padded to 8; tail_len bytes of tail
 *
 * Interface descriptions (the out of HOST_GET, HOST_IFACE and RESOLVE):
 * pp_cb_iface, then function_count pp_cb_function, then every function's
 * view entries (pp_cb_view: its args' views, then its out's), in order.
 * args_size == PP_CB_UNKNOWN: no api.toml describes the function, so the
 * worker cannot know what to copy, and calling it fails with a message.
 */
#ifndef PP_CALLBACK_H
#define PP_CALLBACK_H

#include <stdint.h>

#define PP_CB_HOST_GET 1      /* id, min_version -> value: instance token; out: iface */
#define PP_CB_HOST_IFACE 2    /* id, min_version -> out: iface */
#define PP_CB_HOST_CALL 3     /* id, instance, function, args -> AbiError, out */
#define PP_CB_HOST_CREATE 4   /* id, args -> value: a new instance token */
#define PP_CB_HOST_DESTROY 5  /* id, instance */
#define PP_CB_FIND 6          /* id, min_version -> value: handle (index | generation << 32) */
#define PP_CB_FIND_ALL 7      /* id, min_version -> out: u64 handles */
#define PP_CB_RESOLVE 8       /* handle -> value: 1 + the contract's index here if it is this bundle's; out: iface */
#define PP_CB_GUEST_CALL 9    /* handle, instance, function, args -> AbiError, out */
#define PP_CB_GUEST_CREATE 10 /* handle, args -> value: instance handle in the provider's worker */
#define PP_CB_GUEST_DESTROY 11 /* handle, instance */
#define PP_CB_LIST_BUNDLES 12 /* -> out: u64 bundle ids */

#define PP_CB_MAX_DEPTH 8       /* calls back nested on one host thread (host-side limit) */
#define ABI_REENTRANT_CALL_CODE 9 /* what a call back past the limit answers */

#define PP_CB_ARGS_NULL 1u /* flags: the plugin passed args == NULL */
#define PP_CB_OUT_NULL 2u  /* flags: the plugin passed out == NULL */
#define PP_CB_UNKNOWN 0xFFFFFFFFu
#define PP_CB_VIEW_STRING 0u
#define PP_CB_VIEW_BUFFER 1u

typedef struct pp_cb_request {
    uint32_t op;
    uint32_t function;
    uint64_t id;       /* a contract id */
    uint64_t handle;   /* a guest contract handle */
    uint64_t instance; /* a host contract instance token, or a guest instance handle (0: default) */
    uint32_t min_version;
    uint32_t args_len;
    uint32_t out_size;
    uint32_t flags;
} pp_cb_request;

typedef struct pp_cb_reply {
    uint32_t code; /* AbiError code */
    uint32_t msg_len;
    uint32_t out_len;
    uint32_t tail_len;
    uint64_t value;
} pp_cb_reply;

typedef struct pp_cb_iface {
    uint64_t contract_id;
    uint32_t major, minor, patch;
    uint32_t singleton;
    uint32_t function_count;
    uint32_t view_count; /* pp_cb_view entries after the functions */
} pp_cb_iface;

typedef struct pp_cb_function {
    uint32_t args_size; /* PP_CB_UNKNOWN: not described */
    uint32_t out_size;
    uint16_t arg_views;
    uint16_t out_views;
} pp_cb_function;

typedef struct pp_cb_view {
    uint32_t offset;
    uint32_t kind; /* PP_CB_VIEW_* */
} pp_cb_view;

_Static_assert(sizeof(pp_cb_request) == 48, "pp_cb_request is 48 bytes");
_Static_assert(sizeof(pp_cb_reply) == 24, "pp_cb_reply is 24 bytes");
_Static_assert(sizeof(pp_cb_iface) == 32, "pp_cb_iface is 32 bytes");
_Static_assert(sizeof(pp_cb_function) == 12, "pp_cb_function is 12 bytes");

#endif
