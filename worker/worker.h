/* The worker's C API, as exposed to the worker's Python control loop. */
#ifndef PPW_WORKER_H
#define PPW_WORKER_H

#include <stddef.h>
#include <stdint.h>

/* Outcome of ppw_load. */
#define PPW_LOAD_OK 0
#define PPW_LOAD_DLOPEN 1          /* dlopen failed; message = dlerror() */
#define PPW_LOAD_NO_ABI_VERSION 2  /* no polyplug_abi_version export */
#define PPW_LOAD_ABI_MISMATCH 3    /* found = what it returned */
#define PPW_LOAD_NO_INIT 4         /* no polyplug_init export */
#define PPW_LOAD_INIT_FAILED 5     /* code + message = what init returned */

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

/* host_api.c: the bundle */
void ppw_set_control_fd(int fd);
int ppw_send_frame(const uint8_t *payload, size_t len);
void ppw_load(const char *library, uint64_t bundle_id, const uint8_t *bundle_dir, size_t bundle_dir_len,
              ppw_load_result *result);
uint32_t ppw_registration_count(void);
int ppw_registration(uint32_t index, ppw_registration_info *info);
void ppw_unload(void);

/* host_api.c, for serve.c: runs functions[function] of a registered contract.
 * Returns NULL when the plugin ran (err holds its answer), or why the request
 * was refused. */
struct AbiError;
struct StringView;
const char *ppw_invoke(uint32_t contract, uint32_t function, const void *args, void *out,
                       struct AbiError *err);
/* The same on an instance: 0 is the contract's default one, else a handle
 * from ppw_create_instance. */
const char *ppw_invoke_on(uint32_t contract, uint32_t instance, uint32_t function, const void *args, void *out,
                          struct AbiError *err);
/* create_instance(args) on a contract; returns a handle > 0, or 0 with *why set. */
uint32_t ppw_create_instance(uint32_t contract, const void *args, const char **why);
const char *ppw_destroy_instance(uint32_t contract, uint32_t instance);
/* Frees a Buffer a plugin returned, as host->free(ptr, cap, 1). */
void ppw_free_buffer(uint8_t *ptr, size_t cap);

/* host_api.c, for the call-back path */
struct GuestContractInterface;
struct HostContractInterface;
struct HostContractInstance;
struct GuestContractHandle;
struct Array;
struct DependencyInfo;
int ppw_control_fd(void);
void ppw_set_last_error(const char *text, size_t len);
const struct GuestContractInterface *ppw_local_interface(uint32_t index);
int ppw_set_dependencies(const struct DependencyInfo *deps, size_t n);

/* cb_transport.c: how a call back reaches the host (see callback.h) */
/* serve.c: the room a call back has in this thread's slot (0: it serves
 * none), and the CALLBACK/REPLY round trip (NULL, or why it failed). */
uint64_t ppw_call_back_room(void);
const char *ppw_call_back(uint64_t target, uint32_t function, const void *args, uint32_t args_len, void *out,
                          uint32_t out_size, struct AbiError *err);
/* The next call backs of this thread run in another worker (a call between
 * bundles): wait for their REPLY yielding the CPU, which that worker needs. */
void ppw_call_back_yields(int on);
void ppw_cb_in_init(int on);
/* callback.c: where to write a request (NULL: the host cannot be asked from
 * this thread); then send it and get the reply's place and length (< 0: none). */
uint8_t *ppw_cb_begin(uint32_t *cap);
int64_t ppw_cb_roundtrip(uint32_t len, const uint8_t **reply);

/* callback.c: the HostApi functions that ask the host; the int ones return 0
 * when the host cannot be asked from this thread */
struct HostContractInstance ppw_get_host_contract(uint64_t id, uint32_t min_version);
const struct HostContractInterface *ppw_resolve_host_contract_interface(uint64_t id, uint32_t min_version);
int ppw_find_guest_contract(uint64_t id, uint32_t min_version, struct GuestContractHandle *found);
int ppw_find_all_guest_contracts(uint64_t id, uint32_t min_version, struct Array *found);
int ppw_list_bundles(struct Array *found);
int ppw_resolve_guest_contract(struct GuestContractHandle h, const struct GuestContractInterface **found);

/* crash.c: last words. The serve loop and ppw_load say what is running. */
#define PPW_BUSY_INIT (-2)
extern volatile int32_t ppw_busy_contract; /* polyplug_init's (PPW_BUSY_INIT) */
extern volatile int32_t ppw_busy_function;
/* serve.c: the call slot `slot`'s thread `tid` runs now, and its end. */
void ppw_busy_begin(uint32_t slot, int tid, uint32_t contract, uint32_t function);
void ppw_busy_end(uint32_t slot);
void ppw_mark_busy_thread(void);
int ppw_install_crash_handlers(void);
int ppw_thread_alt_stack(void);

/* faults.c: fault injection around the real plugin */
#define PPW_PHASE_CALL 0
#define PPW_PHASE_INIT 1
#define PPW_TRIGGER_ALWAYS 0
#define PPW_TRIGGER_NTH 1
#define PPW_TRIGGER_EVERY 2
#define PPW_TRIGGER_PROBABILITY 3
#define PPW_TRIGGER_AFTER 4
#define PPW_FAULT_CRASH 0   /* arg: signal */
#define PPW_FAULT_EXIT 1    /* arg: exit status */
#define PPW_FAULT_HANG 2
#define PPW_FAULT_DELAY 3   /* arg: ms */
#define PPW_FAULT_ERROR 4   /* arg: AbiError code; message */
#define PPW_FAULT_CORRUPT 5 /* the answer's out bytes are inverted */
#define PPW_FAULT_LEAK 6    /* arg: MiB allocated, touched and never freed */
/* What ppw_fault_before tells the serve loop. */
#define PPW_RUN 0
#define PPW_RUN_CORRUPT 1
#define PPW_SKIP 2 /* answer with the injected error, do not call the plugin */

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
    uint64_t max_fires; /* 0: unlimited */
    int64_t function;   /* -1: any */
    char contract[128]; /* "": any */
    char message[256];
} ppw_fault_spec;

int ppw_faults_install(const ppw_fault_spec *specs, uint32_t n, int append);
void ppw_faults_release(void);
int ppw_fault_before(int phase, uint32_t contract, uint32_t function, struct AbiError *err);
void ppw_fault_corrupt(uint8_t *out, uint64_t size);
/* host_api.c, for faults.c */
int64_t ppw_contract_index(const char *contract_name);
void ppw_send_fault_frame(uint32_t id, uint64_t call, int64_t contract, int64_t function);

/* serve.c: the data plane */
int ppw_attach(int fd);
int ppw_serve(int wait_mode, uint64_t spin_ns);
void ppw_stop(void);
int ppw_start_watchdog(int fd);

#endif
