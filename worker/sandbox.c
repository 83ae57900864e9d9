/*
 * Containment primitives: namespaces, a fresh /proc, capabilities,
 * no_new_privs, Landlock and seccomp-bpf. worker/_contain.py calls them in
 * order, once, before the plugin's first byte runs (see sandbox.h).
 *
 * The kernel's uapi headers on a build machine may predate the Landlock and
 * seccomp features used here, so their numbers are spelled out below; the
 * kernel tells at run time what it supports (ppw_sb_landlock_abi).
 */
#define _GNU_SOURCE
#include "sandbox.h"

#include <sys/auxv.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- namespaces ------------------------------------------------------------ */

static int write_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n = write(fd, text, strlen(text));
    int err = n < 0 ? -errno : 0;
    close(fd);
    return err;
}

/* Inside the new user namespace, root is the host's own user: the worker
 * keeps its files' ownership and gains nothing over anyone else's. */
static int map_ids(uid_t uid, gid_t gid)
{
    char line[64];
    snprintf(line, sizeof line, "0 %u 1\n", (unsigned)uid);
    int err = write_file("/proc/self/uid_map", line);
    if (err == 0)
        err = write_file("/proc/self/setgroups", "deny");
    if (err == 0) {
        snprintf(line, sizeof line, "0 %u 1\n", (unsigned)gid);
        err = write_file("/proc/self/gid_map", line);
    }
    return err;
}

/* Closes every fd above stderr but `keep` and `hold` (either may be -1). */
static void close_fds_except(int keep, int hold)
{
    int low = keep < hold ? keep : hold, high = keep < hold ? hold : keep;
    for (int fd = 3; fd < 4096 && fd <= high; fd++)
        if (fd != low && fd != high)
            close(fd);
    int from = high < 3 ? 3 : high + 1;
#ifdef SYS_close_range
    if (syscall(SYS_close_range, (unsigned)from, ~0U, 0) == 0)
        return;
#endif
    for (int fd = from; fd < 4096; fd++)
        close(fd);
}

enum shedding { KEEP, DROP_PAGES, UNMAP };

#define MAX_FILES 512

typedef struct file_id {
    unsigned long long dev, inode;
} file_id;

/* The libraries mapped here (files with an executable mapping), and the files
 * a stand-in or an init keeps: those that hold the code it still runs, found
 * at that code's addresses (`code`; `found` of them so far). */
typedef struct libraries {
    unsigned count, kept_count, code_count, found;
    file_id seen[MAX_FILES], kept[MAX_FILES];
    uintptr_t code[48];
} libraries;

typedef struct mapping {
    unsigned long long from, to, inode, dev;
    char perms[5];
    char path[512];
} mapping;

static int parse_mapping(const char *line, mapping *m)
{
    unsigned long long offset;
    unsigned major, minor;
    m->path[0] = 0;
    if (sscanf(line, "%llx-%llx %4s %llx %x:%x %llu %511s", &m->from, &m->to, m->perms, &offset, &major, &minor,
               &m->inode, m->path) < 7)
        return 0;
    m->dev = makedev(major, minor);
    return 1;
}

static int listed(const file_id *ids, unsigned count, const mapping *m)
{
    for (unsigned i = 0; i < count; i++)
        if (ids[i].inode == m->inode && ids[i].dev == m->dev)
            return 1;
    return 0;
}

static void add(file_id *ids, unsigned *count, const mapping *m)
{
    if (!listed(ids, *count, m) && *count < MAX_FILES)
        ids[(*count)++] = (file_id){m->dev, m->inode};
}

/* What to do with a mapping: DROP_PAGES for private anonymous memory that
 * holds neither `keep1` nor `keep2` (the interpreter's heap), UNMAP for the
 * mappings of a library that holds none of the code still to run, KEEP for
 * the rest (data files such as the locale's, which libc reads, among them). */
static enum shedding shedding_of(const mapping *m, uintptr_t keep1, uintptr_t keep2, const libraries *libs)
{
    if ((keep1 >= m->from && keep1 < m->to) || (keep2 >= m->from && keep2 < m->to))
        return KEEP;
    if (m->inode != 0)
        return listed(libs->seen, libs->count, m) && !listed(libs->kept, libs->kept_count, m) ? UNMAP : KEEP;
    if (m->perms[1] != 'w' || m->perms[3] != 'p' || (m->path[0] && strcmp(m->path, "[heap]") != 0))
        return KEEP;
    return DROP_PAGES;
}

/* Calls `each(m, context)` for every mapping in `fd` (a /proc/PID/maps), in address order. */
static void for_each_mapping(int fd, void (*each)(const mapping *, void *), void *context)
{
    if (lseek(fd, 0, SEEK_SET) != 0)
        return;
    char buffer[8192];
    size_t have = 0;
    for (;;) {
        ssize_t n = read(fd, buffer + have, sizeof buffer - 1 - have);
        if (n <= 0)
            break;
        have += (size_t)n;
        buffer[have] = 0;
        char *line = buffer, *newline;
        while ((newline = strchr(line, '\n')) != NULL) {
            *newline = 0;
            mapping m;
            if (parse_mapping(line, &m))
                each(&m, context);
            line = newline + 1;
        }
        have = strlen(line);
        memmove(buffer, line, have);
        if (have == sizeof buffer - 1)
            have = 0; /* no line is this long: drop it */
    }
}

/* Where the code a stand-in or an init runs after shedding lives: this
 * library, the dynamic loader, and every function it calls from here on
 * (taken by address, each resolves as its call does: libc's, or a
 * libpthread's or a preloaded library's that stands in for it). */
/* Where the code a stand-in or an init runs after shedding lives: this
 * library, the dynamic loader, and every function it calls from here on
 * (taken by address, each resolves as its call does: libc's, or a
 * libpthread's or a preloaded library's that stands in for it). */
static void note_code_still_run(libraries *libs)
{
    void *functions[] = {
        (void *)note_code_still_run, (void *)sigwaitinfo, (void *)sigfillset, (void *)sigemptyset,
        (void *)sigaddset, (void *)sigprocmask, (void *)waitpid, (void *)kill, (void *)raise,
        (void *)signal, (void *)setrlimit, (void *)_exit, (void *)read, (void *)write,
        (void *)open, (void *)close, (void *)lseek, (void *)syscall, (void *)snprintf,
        (void *)strtol, (void *)strchr, (void *)strlen, (void *)memmove, (void *)sscanf,
        (void *)strcmp, (void *)madvise, (void *)munmap, (void *)__errno_location, (void *)poll,
        (void *)signalfd,
    };
    _Static_assert(sizeof functions / sizeof *functions < sizeof libs->code / sizeof *libs->code,
                   "libraries.code holds every function listed here and the loader");
    for (unsigned i = 0; i < sizeof functions / sizeof *functions; i++)
        libs->code[libs->code_count++] = (uintptr_t)functions[i];
    uintptr_t loader = (uintptr_t)getauxval(AT_BASE);
    if (loader)
        libs->code[libs->code_count++] = loader;
}

static void note_library(const mapping *m, void *context)
{
    libraries *libs = context;
    if (m->inode == 0)
        return;
    if (m->perms[2] == 'x')
        add(libs->seen, &libs->count, m);
    for (unsigned i = 0; i < libs->code_count; i++)
        if (libs->code[i] >= m->from && libs->code[i] < m->to) {
            add(libs->kept, &libs->kept_count, m);
            libs->found++;
        }
}

typedef struct shedder {
    const libraries *libs;
    uintptr_t sp, tp;
} shedder;

static void shed_mapping(const mapping *m, void *context)
{
    const shedder *how = context;
    switch (shedding_of(m, how->sp, how->tp, how->libs)) {
    case DROP_PAGES:
        madvise((void *)(uintptr_t)m->from, m->to - m->from, MADV_DONTNEED);
        break;
    case UNMAP:
        munmap((void *)(uintptr_t)m->from, m->to - m->from);
        break;
    case KEEP:
        break;
    }
}

/* A stand-in or an init runs nothing but the C below from here on, yet it
 * is a fork of the zygote: its exit would have to tear down a copy of the
 * whole interpreter's memory, ~1.5 ms that the host waits for before it
 * learns of a worker's death. Dropping that memory now, while nothing
 * waits, makes the exit cheap: the interpreter's heap loses its pages, and
 * the libraries that hold none of the code still to run (the interpreter,
 * the extension modules) are unmapped. Kept: the stack and the thread's own
 * block (errno, the stack guard), the files that hold code still to run,
 * and every mapped file that is not a library. The files are told by the
 * map's own (device, inode), found at the addresses of that code, never by
 * name or stat(). What runs from here on must not allocate (the heap and
 * the libraries' zero-filled data are dropped) nor resolve a symbol (the
 * interpreter's module is dlopened with RTLD_NOW, as CPython does). */
static void shed_memory(int maps_fd)
{
    libraries libs = {.count = 0}; /* on the stack, which stays: this library's data may not */
    shedder how = {&libs, (uintptr_t)__builtin_frame_address(0), (uintptr_t)__builtin_thread_pointer()};
    if (maps_fd < 0)
        return;
    note_code_still_run(&libs);
    for_each_mapping(maps_fd, note_library, &libs);
    if (libs.found == libs.code_count) /* else some of that code is not told apart: keep everything */
        for_each_mapping(maps_fd, shed_mapping, &how);
    close(maps_fd);
}

/* This process's memory map, to shed from; -1 if it cannot be read. A stand-in
 * opens it before it splits off the namespace's init: once the worker mounts
 * its namespace's /proc (which the stand-in shares, not the pid namespace),
 * /proc/self names nobody for the stand-in. */
static int open_own_maps(void)
{
    return open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
}

/* The next signal for supervise(): read off `signals` (a signalfd, or -1 to
 * take it with sigwaitinfo). With `*host_fd` open, also watches it: the
 * worker's end of its control socket, which this process holds. When the
 * host's end closes (the host died: a live host closes it only after
 * reaping), returns SIGKILL, for `child`, and stops watching. Without a
 * signalfd (signalfd failed: no memory) nothing is watched. */
static int next_signal(int signals, int *host_fd)
{
    for (;;) {
        struct pollfd ready[2] = {{signals, POLLIN, 0}, {*host_fd, POLLRDHUP, 0}};
        if (signals < 0 || poll(ready, *host_fd >= 0 ? 2 : 1, -1) < 0) {
            /* No signalfd, or poll failed (no memory; EINTR cannot happen,
             * every signal is blocked): wait for the signal alone. */
            sigset_t all;
            sigfillset(&all);
            siginfo_t info;
            return sigwaitinfo(&all, &info);
        }
        if (*host_fd >= 0 && ready[1].revents) {
            *host_fd = -1;
            return SIGKILL;
        }
        struct signalfd_siginfo info;
        if (ready[0].revents && read(signals, &info, sizeof info) == sizeof info)
            return (int)info.ssi_signo;
    }
}

/* Waits for `child` with every signal blocked (they were blocked before the
 * fork, so none is lost): forwards the ones the host sends, reaps every
 * other child on the way (as init must), returns the child's wait status.
 * `host_fd` (or -1): see next_signal. A worker that cannot see its host go
 * (stopped by SIGSTOP, held by a debugger) is killed so, and with it all it
 * left: its namespace, or the orphans this process reaps. */
static int supervise(pid_t child, int host_fd)
{
    sigset_t all;
    sigfillset(&all);
    int signals = host_fd >= 0 ? signalfd(-1, &all, SFD_CLOEXEC) : -1;
    for (;;) {
        int sig = next_signal(signals, &host_fd);
        if (sig == SIGCHLD) {
            int status;
            pid_t pid;
            while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
                if (pid == child) {
                    if (signals >= 0)
                        close(signals);
                    return status;
                }
        } else if (sig != SIGINT && sig != SIGTSTP && sig != SIGTTIN && sig != SIGTTOU && sig != SIGWINCH) {
            /* Whatever the host (or a test) sends the worker's handle, SIGSEGV
             * and SIGABRT included, reaches the worker as sent. */
            kill(child, sig);
        }
        /* A terminal's signals to the host's process group (Ctrl-C, job
         * control) are the host's business: dropped. */
    }
}

/* Ends this process the way the worker ended, so that the host reads the
 * worker's own exit status. */
static _Noreturn void mirror(int status)
{
    if (WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);
        struct rlimit none = {0, 0};
        setrlimit(RLIMIT_CORE, &none); /* the worker already dumped whatever it dumps */
        signal(sig, SIG_DFL);
        sigset_t one;
        sigemptyset(&one);
        sigaddset(&one, sig);
        sigprocmask(SIG_UNBLOCK, &one, NULL);
        raise(sig);
    }
    _exit(WIFEXITED(status) ? WEXITSTATUS(status) : 1);
}

/* The namespace's init: when the worker ends, so does every process left in
 * the namespace (the kernel kills them as init exits). It writes the
 * worker's wait status to status_fd, for the stand-in outside to mirror. */
static _Noreturn void run_init(pid_t worker, int status_fd)
{
    close_fds_except(status_fd, -1);
    shed_memory(open_own_maps());
    int status = supervise(worker, -1);
    (void)!write(status_fd, &status, sizeof status);
    if (WIFSIGNALED(status))
        _exit(128 + WTERMSIG(status)); /* init cannot die of a signal it sends itself */
    _exit(WIFEXITED(status) ? WEXITSTATUS(status) : 1);
}

/* A subreaper's last duty: every process the worker left behind has been
 * reparented here; kill them, and those they leave in turn, until none is left. */
static void kill_orphans(void)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/self/task/%d/children", (int)getpid());
    for (int round = 0; round < 4096; round++) {
        char list[4096];
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        ssize_t n = fd >= 0 ? read(fd, list, sizeof list - 1) : -1;
        if (fd >= 0)
            close(fd);
        if (n <= 0)
            return;
        list[n] = 0;
        for (char *at = list; *at;) {
            char *end;
            long pid = strtol(at, &end, 10);
            if (end == at)
                break;
            kill((pid_t)pid, SIGKILL);
            waitpid((pid_t)pid, NULL, 0);
            at = end;
        }
    }
}

/* Without a pid namespace: this process stays outside as the worker's
 * stand-in and a subreaper, so that what the worker leaves behind is
 * reparented here and killed when the worker ends (not if this process is
 * SIGKILLed first: only a pid namespace covers that). */
static int split_as_subreaper(int hold_fd, int *outer_pid)
{
    sigset_t all, old;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, &old);
    pid_t worker = prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0 ? fork() : -1;
    if (worker < 0) {
        prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0);
        sigprocmask(SIG_SETMASK, &old, NULL);
        return 0;
    }
    if (worker > 0) {
        close_fds_except(-1, hold_fd);
        shed_memory(open_own_maps());
        int status = supervise(worker, hold_fd);
        kill_orphans();
        mirror(status);
    }
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    sigprocmask(SIG_SETMASK, &old, NULL);
    *outer_pid = getpid();
    return PPW_NS_REAPER;
}

static int outer_pid_of_self(void)
{
    char link[32] = {0};
    ssize_t n = readlink("/proc/self", link, sizeof link - 1);
    return n > 0 ? atoi(link) : getpid();
}

int ppw_sb_enter_namespaces(int hold_fd, int *error, int *outer_pid)
{
    uid_t uid = geteuid();
    gid_t gid = getegid();
    int ns = PPW_NS_USER | PPW_NS_PID | PPW_NS_MOUNT;
    *error = 0;
    *outer_pid = getpid();
    if (unshare(CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS) != 0) {
        *error = errno;
        /* A root host in a container that refuses user namespaces can still
         * have pid and mount namespaces: capabilities are dropped later. */
        ns = PPW_NS_PID | PPW_NS_MOUNT;
        if (unshare(CLONE_NEWPID | CLONE_NEWNS) != 0)
            return split_as_subreaper(hold_fd, outer_pid);
    } else {
        int err = map_ids(uid, gid);
        if (err != 0)
            *error = -err;
    }

    int status_pipe[2];
    sigset_t all, old;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, &old);
    if (pipe2(status_pipe, O_CLOEXEC) != 0) {
        *error = errno;
        sigprocmask(SIG_SETMASK, &old, NULL);
        return ns & ~PPW_NS_PID;
    }
    int own_maps = open_own_maps();
    pid_t init = fork();
    if (init < 0) {
        *error = errno;
        sigprocmask(SIG_SETMASK, &old, NULL);
        close(status_pipe[0]);
        close(status_pipe[1]);
        if (own_maps >= 0)
            close(own_maps);
        return ns & ~PPW_NS_PID;
    }
    if (init > 0) {
        /* The host's handle on the worker: it signals and reaps this process. */
        close(status_pipe[1]);
        shed_memory(own_maps);
        close_fds_except(status_pipe[0], hold_fd);
        int init_status = supervise(init, hold_fd);
        int worker_status;
        if (read(status_pipe[0], &worker_status, sizeof worker_status) == sizeof worker_status)
            mirror(worker_status);
        mirror(init_status);
    }
    /* pid 1: dies with the host's handle, whatever killed it. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    close(status_pipe[0]);
    if (own_maps >= 0)
        close(own_maps); /* the stand-in's */
    pid_t worker = fork();
    if (worker < 0)
        _exit(127);
    if (worker > 0)
        run_init(worker, status_pipe[1]);
    /* pid 2: the worker. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    close(status_pipe[1]);
    sigprocmask(SIG_SETMASK, &old, NULL);
    *outer_pid = outer_pid_of_self(); /* /proc is still the host's: it names us as the host does */
    return ns;
}

int ppw_sb_mount_proc(void)
{
    /* Private first: a mount made here must never propagate to the host. */
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
        return -errno;
    if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0)
        return -errno;
    return 0;
}

/* ---- capabilities, no_new_privs ------------------------------------------- */

#define SECBITS_LOCKED_NOROOT 0x2f /* NOROOT, NO_SETUID_FIXUP, each locked; KEEP_CAPS off and locked */

struct cap_header {
    uint32_t version;
    int pid;
};
struct cap_data {
    uint32_t effective, permitted, inheritable;
};

int ppw_sb_drop_capabilities(void)
{
    /* Without CAP_SETPCAP (an unprivileged host with no user namespace) the
     * bounding set and securebits stay: there is nothing in them to regain
     * once no_new_privs is set and the permitted set is empty. */
    for (int cap = 0; cap < 64; cap++)
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno == EINVAL)
            break;
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    prctl(PR_SET_SECUREBITS, SECBITS_LOCKED_NOROOT, 0, 0, 0);
    struct cap_header header = {0x20080522 /* _LINUX_CAPABILITY_VERSION_3 */, 0};
    struct cap_data data[2];
    memset(data, 0, sizeof data);
    return syscall(SYS_capset, &header, data) == 0 ? 0 : -errno;
}

int ppw_sb_no_new_privs(void)
{
    return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 ? 0 : -errno;
}

/* ---- Landlock ------------------------------------------------------------ */

#define LL_CREATE_RULESET_VERSION 1u
#define LL_RULE_PATH_BENEATH 1
#define LL_FS_EXECUTE (1ull << 0)
#define LL_FS_WRITE_FILE (1ull << 1)
#define LL_FS_READ_FILE (1ull << 2)
#define LL_FS_READ_DIR (1ull << 3)
#define LL_FS_ABI1 ((1ull << 13) - 1) /* EXECUTE .. MAKE_SYM */
#define LL_FS_REFER (1ull << 13)      /* ABI 2 */
#define LL_FS_TRUNCATE (1ull << 14)   /* ABI 3 */
#define LL_FS_IOCTL_DEV (1ull << 15)  /* ABI 5 */
#define LL_FS_FILE_ONLY (LL_FS_EXECUTE | LL_FS_WRITE_FILE | LL_FS_READ_FILE | LL_FS_TRUNCATE | LL_FS_IOCTL_DEV)
#define LL_NET_BIND_TCP (1ull << 0)   /* ABI 4 */
#define LL_NET_CONNECT_TCP (1ull << 1)
#define LL_SCOPE_ABSTRACT_UNIX_SOCKET (1ull << 0) /* ABI 6 */
#define LL_SCOPE_SIGNAL (1ull << 1)

#ifndef SYS_landlock_create_ruleset
#define SYS_landlock_create_ruleset 444
#define SYS_landlock_add_rule 445
#define SYS_landlock_restrict_self 446
#endif

struct ll_ruleset_attr {
    uint64_t handled_access_fs;
    uint64_t handled_access_net;
    uint64_t scoped;
};

struct ll_path_beneath_attr {
    uint64_t allowed_access;
    int32_t parent_fd;
} __attribute__((packed));

int ppw_sb_landlock_abi(void)
{
    long abi = syscall(SYS_landlock_create_ruleset, NULL, 0, LL_CREATE_RULESET_VERSION);
    return abi < 0 ? -errno : (int)abi;
}

static uint64_t fs_rights(int abi)
{
    uint64_t rights = LL_FS_ABI1;
    if (abi >= 2)
        rights |= LL_FS_REFER;
    if (abi >= 3)
        rights |= LL_FS_TRUNCATE;
    if (abi >= 5)
        rights |= LL_FS_IOCTL_DEV;
    return rights;
}

static int allow_path(int ruleset, const char *path, uint64_t rights)
{
    int fd = open(path, O_PATH | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : -errno;
    struct stat st;
    int err = fstat(fd, &st) == 0 ? 0 : -errno;
    if (err == 0) {
        struct ll_path_beneath_attr rule = {S_ISDIR(st.st_mode) ? rights : rights & LL_FS_FILE_ONLY, fd};
        if (syscall(SYS_landlock_add_rule, ruleset, LL_RULE_PATH_BENEATH, &rule, 0) != 0)
            err = -errno;
    }
    close(fd);
    return err;
}

int ppw_sb_landlock(int scopes, int restrict_files, const char *const *read_only, uint32_t n_read_only,
                    const char *const *writable, uint32_t n_writable, int no_tcp)
{
    int abi = ppw_sb_landlock_abi();
    if (abi < 0)
        return abi;
    uint64_t all_fs = fs_rights(abi);
    struct ll_ruleset_attr attr = {0, 0, 0};
    if (scopes && abi >= 6)
        attr.scoped = LL_SCOPE_SIGNAL | LL_SCOPE_ABSTRACT_UNIX_SOCKET;
    if (no_tcp && abi >= 4)
        attr.handled_access_net = LL_NET_BIND_TCP | LL_NET_CONNECT_TCP;
    /* A domain also walls off ptrace (and /proc/<pid>/mem) of everyone outside
     * it; with nothing else to handle, handle the filesystem and allow it all. */
    int open_files = !restrict_files && attr.scoped == 0 && attr.handled_access_net == 0;
    if (restrict_files || open_files)
        attr.handled_access_fs = all_fs;
    int ruleset = (int)syscall(SYS_landlock_create_ruleset, &attr, sizeof attr, 0);
    if (ruleset < 0)
        return -errno;
    int err = 0;
    if (open_files)
        err = allow_path(ruleset, "/", all_fs);
    uint64_t reading = LL_FS_EXECUTE | LL_FS_READ_FILE | LL_FS_READ_DIR | (all_fs & LL_FS_IOCTL_DEV);
    for (uint32_t i = 0; restrict_files && err == 0 && i < n_read_only; i++)
        err = allow_path(ruleset, read_only[i], reading);
    for (uint32_t i = 0; restrict_files && err == 0 && i < n_writable; i++)
        err = allow_path(ruleset, writable[i], all_fs);
    if (err == 0 && syscall(SYS_landlock_restrict_self, ruleset, 0) != 0)
        err = -errno;
    close(ruleset);
    return err == 0 ? abi : err;
}

/* ---- seccomp-bpf ------------------------------------------------------------ */

#if defined(__x86_64__)
#define PPW_AUDIT_ARCH AUDIT_ARCH_X86_64
#define PPW_X32_BIT 0x40000000u
#elif defined(__aarch64__)
#define PPW_AUDIT_ARCH AUDIT_ARCH_AARCH64
#endif

#define MAX_FILTER 160
#define RET_DENY (SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA))
#define RET_NOSYS (SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA))
#define ARG0_LOW offsetof(struct seccomp_data, args[0]) /* little-endian: the low 32 bits */
#define NAMESPACE_FLAGS                                                                                   \
    (CLONE_NEWNS | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWCGROUP)

/* Calls that reach into other processes, the kernel or the mount table. */
static const int DENIED[] = {
    SYS_ptrace, SYS_process_vm_readv, SYS_process_vm_writev, SYS_kcmp,
#ifdef SYS_pidfd_getfd
    SYS_pidfd_getfd,
#endif
#ifdef SYS_process_madvise
    SYS_process_madvise,
#endif
    SYS_mount, SYS_umount2, SYS_pivot_root, SYS_chroot,
#ifdef SYS_move_mount
    SYS_move_mount, SYS_open_tree, SYS_fsopen, SYS_fsconfig, SYS_fsmount, SYS_fspick,
#endif
#ifdef SYS_mount_setattr
    SYS_mount_setattr,
#endif
    SYS_unshare, SYS_setns, SYS_bpf, SYS_perf_event_open, SYS_userfaultfd, SYS_kexec_load,
#ifdef SYS_kexec_file_load
    SYS_kexec_file_load,
#endif
    SYS_init_module, SYS_finit_module, SYS_delete_module, SYS_reboot, SYS_swapon, SYS_swapoff, SYS_acct,
    SYS_keyctl, SYS_add_key, SYS_request_key, SYS_open_by_handle_at, SYS_syslog, SYS_quotactl,
#ifdef SYS_iopl
    SYS_iopl, SYS_ioperm,
#endif
};

static const int SPAWNING[] = {
    SYS_execve, SYS_execveat,
#ifdef SYS_fork
    SYS_fork, SYS_vfork,
#endif
};

static const int NETWORKING[] = {
#ifdef SYS_io_uring_setup
    SYS_io_uring_setup, /* its requests (sockets among them) bypass seccomp */
#endif
};

typedef struct {
    struct sock_filter code[MAX_FILTER];
    unsigned short n;
} program;

static void emit(program *p, struct sock_filter insn)
{
    if (p->n < MAX_FILTER)
        p->code[p->n] = insn;
    p->n++;
}

static void deny_all(program *p, const int *numbers, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        emit(p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)numbers[i], 0, 1));
        emit(p, (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, RET_DENY));
    }
}

int ppw_sb_seccomp(int no_network, int no_spawn)
{
#ifndef PPW_AUDIT_ARCH
    (void)no_network, (void)no_spawn;
    return -EOPNOTSUPP;
#else
    program p = {.n = 0};
    /* A system call of another ABI (i386's int 0x80) would dodge the numbers below. */
    emit(&p, (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)));
    emit(&p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, PPW_AUDIT_ARCH, 1, 0));
    emit(&p, (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS));
    emit(&p, (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)));
#ifdef PPW_X32_BIT
    emit(&p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, PPW_X32_BIT, 0, 1));
    emit(&p, (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, RET_DENY));
#endif
    deny_all(&p, DENIED, sizeof DENIED / sizeof DENIED[0]);
    if (no_spawn)
        deny_all(&p, SPAWNING, sizeof SPAWNING / sizeof SPAWNING[0]);
    if (no_network)
        deny_all(&p, NETWORKING, sizeof NETWORKING / sizeof NETWORKING[0]);
    /* clone3's flags sit behind a pointer BPF cannot follow: glibc falls back
     * to clone on ENOSYS, whose flags are checked here. */
    emit(&p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_clone3, 0, 1));
    emit(&p, (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, RET_NOSYS));
    /* clone: no new namespaces; with no_spawn, threads only. */
    emit(&p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_clone, 0, no_spawn ? 5 : 4));
    emit(&p, (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG0_LOW));
    emit(&p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, NAMESPACE_FLAGS, no_spawn ? 2 : 1, 0));
    if (no_spawn)
        emit(&p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, CLONE_THREAD, 0, 1));
    emit(&p, (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
    emit(&p, (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, RET_DENY));
    if (no_network) {
        /* socket: unix domain only (the worker's own control socket is one). */
        emit(&p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_socket, 0, 4));
        emit(&p, (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG0_LOW));
        emit(&p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AF_UNIX, 1, 0));
        emit(&p, (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, RET_DENY));
        emit(&p, (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
    }
    emit(&p, (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
    if (p.n > MAX_FILTER)
        return -E2BIG;
    struct sock_fprog prog = {p.n, p.code};
    /* TSYNC: every thread of the worker, not only this one. */
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog) != 0)
        return -errno;
    return 0;
#endif
}
