"""cffi API-mode builders for the two halves of the C hot path.

Run by setuptools at install time (``cffi_modules`` in setup.py). The cdefs
take every constant from the C headers (``#define X ...``), so the protocol
numbers are written down once, in C.
"""

from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parent.parent
HOST_DIR = ROOT / "polyplug_isolated"
WORKER_DIR = ROOT / "worker"
CFLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter"]


def _relative(path: Path) -> str:
    # setuptools wants source paths relative to setup.py.
    return str(path.relative_to(ROOT))


host_ffi = FFI()
host_ffi.cdef(
    """
    #define PP_PROTOCOL_VERSION ...
    #define PP_ERR_CAP ...
    #define PP_MAX_SLOTS ...
    #define PP_WAIT_AUTO ...
    #define PP_WAIT_SPIN ...
    #define PP_WAIT_BLOCK ...
    #define PP_NEAR_BYTES ...
    #define PP_CONN_READY ...
    #define PP_CONN_DRAINING ...
    #define PP_CONN_DEAD ...
    #define PP_CALL_OK ...
    #define PP_CALL_PLUGIN_ERROR ...
    #define PP_CALL_UNAVAILABLE ...
    #define PP_CALL_DEAD ...
    #define PP_CALL_TIMEOUT ...
    #define PP_CALL_PROTOCOL ...
    #define PP_CALL_TOO_LARGE ...
    #define PP_CALL_REFUSED ...
    #define PP_CALL_PENDING ...
    #define PP_CALL_LEASE_LOST ...
    #define PP_CALL_REENTRANT ...
    #define PP_CALL_ARENA_HELD ...

    typedef struct pp_conn pp_conn;
    #define PP_FN_CREATE_INSTANCE ...
    #define PP_FN_DESTROY_INSTANCE ...
    #define PP_FN_CALL_BACK_PROBE ...
    #define PP_FIX_ARG_POINTER ...
    #define PP_FIX_OUT_VIEW ...
    #define PP_FIX_OUT_BUFFER ...
    #define PP_INLINE_ARGS ...
    #define PP_INLINE_OUT ...

    typedef struct pp_result {
        uint32_t err_code;
        uint32_t err_len;
        uint32_t done_count;
        uint32_t ret_len;
        char err_msg[1024];
    } pp_result;
    typedef struct pp_fixup {
        uint32_t offset;
        uint32_t kind;
    } pp_fixup;

    size_t pp_segment_bytes(uint32_t nslots, uint64_t payload_cap, uint64_t arena_cap);
    pp_conn *pp_conn_create(int fd, uint32_t nslots, uint32_t max_threads, uint64_t payload_cap,
                            uint64_t arena_cap, int wait_mode, uint64_t spin_ns, uint32_t idle_retire_ms);
    void pp_conn_destroy(pp_conn *c);
    void pp_conn_set_owner(pp_conn *c, uint64_t owner);
    int pp_callback_depth_limit(int limit);
    void pp_set_callback_hook(void *hook);
    #define PP_CB_MAX_DEPTH ...
    extern "Python+C" int64_t pp_on_callback(uint64_t owner, uint8_t *request, uint32_t len, uint8_t *reply,
                                              uint32_t cap);
    #define PP_CB_HOST_GET ...
    #define PP_CB_HOST_IFACE ...
    #define PP_CB_HOST_CALL ...
    #define PP_CB_HOST_CREATE ...
    #define PP_CB_HOST_DESTROY ...
    #define PP_CB_FIND ...
    #define PP_CB_FIND_ALL ...
    #define PP_CB_RESOLVE ...
    #define PP_CB_GUEST_CALL ...
    #define PP_CB_GUEST_CREATE ...
    #define PP_CB_GUEST_DESTROY ...
    #define PP_CB_LIST_BUNDLES ...
    #define PP_CB_ARGS_NULL ...
    #define PP_CB_OUT_NULL ...
    #define PP_CB_UNKNOWN ...
    int64_t pp_conn_inflight(pp_conn *c);
    uint64_t pp_conn_calls(pp_conn *c);
    uint64_t pp_conn_failures(pp_conn *c);
    void pp_conn_set_draining(pp_conn *c);
    int pp_conn_wait_drained(pp_conn *c, double timeout_s);
    void pp_conn_mark_dead(pp_conn *c);
    pp_result *pp_last_result(void);
    int64_t pp_lease_take(pp_conn *c, double timeout_s, int may_take_over);
    void pp_lease_release(pp_conn *c, int64_t lease);
    int pp_call(pp_conn *c, int64_t lease, uint32_t contract, uint32_t function, const uint8_t *args,
                size_t args_len, uint8_t *out, size_t out_size, double timeout_s);
    int64_t pp_call_small(pp_conn *c, uint32_t contract, uint32_t function, const uint8_t *args,
                          size_t args_len, size_t out_size, double timeout_s);
    void pp_use_lease(pp_conn *c, int64_t lease);
    #define PP_FAST_OUT ...
    int pp_call_fast(pp_conn *c, uint32_t contract, uint32_t function, const uint8_t *args, size_t args_len,
                     size_t out_size, double timeout_s, const uint8_t **out);
    int pp_in_place_layout(pp_conn *c, size_t args_len, size_t out_size, uint64_t *args_at, uint64_t *out_at);
    uint8_t *pp_arena_base(pp_conn *c);
    int pp_arena_hold(pp_conn *c, int64_t lease, size_t args_len, size_t out_size, double timeout_s);
    void pp_arena_drop(pp_conn *c, int64_t lease);
    int pp_call_in_place(pp_conn *c, int64_t lease, uint32_t contract, uint32_t function, size_t args_len,
                         size_t out_size, double timeout_s);
    typedef struct pp_fast_api pp_fast_api;
    const pp_fast_api *pp_fast_api_table(void);
    int pp_call_batch(pp_conn *c, int64_t lease, uint32_t contract, uint32_t function, const uint8_t *args,
                      size_t args_len, size_t count, uint8_t *out, size_t out_size, double timeout_s);
    int pp_call_ex(pp_conn *c, int64_t lease, uint32_t contract, uint32_t function, uint32_t instance,
                   const uint8_t *args, size_t args_len, const pp_fixup *fixups, uint32_t nfixups,
                   uint8_t *out, size_t out_size, uint8_t *ret, size_t ret_cap, double timeout_s);
    int pp_submit(pp_conn *c, int64_t lease, uint32_t contract, uint32_t function, uint32_t instance,
                  const uint8_t *args, size_t args_len, const pp_fixup *fixups, uint32_t nfixups,
                  uint8_t *out, size_t out_size, uint8_t *ret, size_t ret_cap, double timeout_s);
    int pp_resume(pp_conn *c, int64_t lease);
    int pp_poll(pp_conn *c, int64_t lease);
    void pp_abandon(pp_conn *c, int64_t lease);
    uint32_t pp_bell(pp_conn *c);
    void pp_bell_ring(pp_conn *c);
    void pp_bell_wait(pp_conn *c, uint32_t seen, double timeout_s);
    """
)
host_ffi.cdef((HOST_DIR / "_hostapi.cdef").read_text())  # the host's HostApi (_hostapi.h)
host_ffi.set_source(
    "polyplug_isolated._channel_ffi",
    '#include "channel.h"\n#include "callback.h"\n#include "_channel.h"\n#include "_hostapi.h"\n',
    sources=[_relative(HOST_DIR / name) for name in ("_channel.c", "_leases.c", "_hostapi.c")],
    include_dirs=[_relative(HOST_DIR), _relative(WORKER_DIR)],
    extra_compile_args=CFLAGS,
    libraries=["pthread"],
)

worker_ffi = FFI()
worker_ffi.cdef(
    """
    #define PPW_LOAD_OK ...
    #define PPW_LOAD_DLOPEN ...
    #define PPW_LOAD_NO_ABI_VERSION ...
    #define PPW_LOAD_ABI_MISMATCH ...
    #define PPW_LOAD_NO_INIT ...
    #define PPW_LOAD_INIT_FAILED ...
    #define PP_PROTOCOL_VERSION ...

    typedef struct ppw_load_result {
        int kind;
        uint32_t found;
        uint32_t code;
        uint32_t message_len;
        char message[1024];
    } ppw_load_result;

    typedef struct ppw_registration_info {
        uint64_t contract_id;
        uint32_t major, minor, patch;
        uint32_t function_count;
        const char *contract_name;
        size_t contract_name_len;
        const char *plugin_name;
        size_t plugin_name_len;
        uint32_t plugin_major, plugin_minor, plugin_patch;
    } ppw_registration_info;

    void ppw_set_control_fd(int fd);
    int ppw_send_frame(const uint8_t *payload, size_t len);
    void ppw_load(const char *library, uint64_t bundle_id, const uint8_t *bundle_dir, size_t bundle_dir_len,
                  ppw_load_result *result);
    uint32_t ppw_registration_count(void);
    int ppw_registration(uint32_t index, ppw_registration_info *info);
    void ppw_unload(void);
    typedef struct { const uint8_t *ptr; size_t len; } StringView;
    typedef struct { uint32_t code; StringView message; } AbiError;
    const char *ppw_invoke(uint32_t contract, uint32_t function, const void *args, void *out, AbiError *err);
    int ppw_attach(int fd);
    int ppw_serve(int wait_mode, uint64_t spin_ns);
    void ppw_stop(void);
    int ppw_start_watchdog(int fd);
    int ppw_install_crash_handlers(void);

    #define PPW_PHASE_CALL ...
    #define PPW_PHASE_INIT ...
    #define PPW_TRIGGER_ALWAYS ...
    #define PPW_TRIGGER_NTH ...
    #define PPW_TRIGGER_EVERY ...
    #define PPW_TRIGGER_PROBABILITY ...
    #define PPW_TRIGGER_AFTER ...
    #define PPW_FAULT_CRASH ...
    #define PPW_FAULT_EXIT ...
    #define PPW_FAULT_HANG ...
    #define PPW_FAULT_DELAY ...
    #define PPW_FAULT_ERROR ...
    #define PPW_FAULT_CORRUPT ...
    #define PPW_FAULT_LEAK ...
    typedef struct ppw_fault_spec {
        uint32_t id;
        uint32_t phase;
        uint32_t action;
        uint32_t trigger;
        int64_t arg;
        uint64_t n;
        double probability;
        uint64_t seed;
        double after_s;
        uint64_t max_fires;
        int64_t function;
        char contract[128];
        char message[256];
    } ppw_fault_spec;
    int ppw_faults_install(const ppw_fault_spec *specs, uint32_t n, int append);
    typedef struct { uint64_t contract_id; uint32_t min_version; uint64_t bundle_id; } DependencyInfo;
    int ppw_set_dependencies(const DependencyInfo *deps, size_t n);

    #define PPW_NS_USER ...
    #define PPW_NS_PID ...
    #define PPW_NS_MOUNT ...
    #define PPW_NS_REAPER ...
    int ppw_sb_enter_namespaces(int hold_fd, int *error, int *outer_pid);
    int ppw_sb_mount_proc(void);
    int ppw_sb_drop_capabilities(void);
    int ppw_sb_no_new_privs(void);
    int ppw_sb_landlock_abi(void);
    int ppw_sb_landlock(int scopes, int restrict_files, const char *const *read_only, uint32_t n_read_only,
                        const char *const *writable, uint32_t n_writable, int no_tcp);
    int ppw_sb_seccomp(int no_network, int no_spawn);
    """
)
worker_ffi.set_source(
    "polyplug_isolated.worker._serve_ffi",
    '#include "channel.h"\n#include "polyplug_abi.h"\n#include "worker.h"\n#include "sandbox.h"\n',
    sources=[
        _relative(WORKER_DIR / name)
        for name in (
            "serve.c",
            "host_api.c",
            "crash.c",
            "faults.c",
            "callback.c",
            "cb_transport.c",
            "sandbox.c",
        )
    ],
    include_dirs=[_relative(WORKER_DIR)],
    extra_compile_args=CFLAGS,
    libraries=["dl", "pthread"],
)
