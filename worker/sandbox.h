/* The worker's containment primitives (sandbox.c), driven by worker/_contain.py.
 *
 * Each function does one thing and returns 0 or -errno, so that the caller
 * can report exactly which mechanism the kernel refused and why. */
#ifndef PPW_SANDBOX_H
#define PPW_SANDBOX_H

#include <stdint.h>

/* ppw_sb_enter_namespaces: what it managed to unshare. */
#define PPW_NS_USER 1
#define PPW_NS_PID 2
#define PPW_NS_MOUNT 4
#define PPW_NS_REAPER 8 /* no pid namespace: a subreaper outside kills what the worker leaves */

/* Unshares user (when needed), pid and mount namespaces and splits into
 * three processes: this one stays outside as the host's handle on the worker
 * (forwards the host's signals, mirrors the worker's exit status), its child
 * is the namespace's init (reaps, and takes every process left in the
 * namespace with it when it exits), and the grandchild returns from here as
 * the worker, pid 2 of the new namespace. Only call it single-threaded.
 * Returns the PPW_NS_* set in force (PPW_NS_REAPER alone when no namespace
 * could be unshared: then this process stays outside as a subreaper instead
 * of an init; 0 if even that failed, and nothing was split off), with *error
 * the first refusal (an errno) and
 * *outer_pid the worker's pid as the host sees it.
 * The outside process keeps hold_fd (the control socket) open, closing the
 * rest: the host sees the socket close only when it can also reap the
 * worker's exit status, never before. */
int ppw_sb_enter_namespaces(int hold_fd, int *error, int *outer_pid);

/* Makes every mount private, then mounts a procfs of the worker's own pid
 * namespace over /proc: the host's (and other workers') entries are gone. */
int ppw_sb_mount_proc(void);

/* Empties every capability set (effective, permitted, inheritable, ambient,
 * bounding) and locks the securebits, so that neither a root host nor an
 * exec hands them back. */
int ppw_sb_drop_capabilities(void);

int ppw_sb_no_new_privs(void);

/* Landlock. ABI version, or -errno when Landlock is unavailable. */
int ppw_sb_landlock_abi(void);

/* One Landlock domain for this process: scopes (signals and abstract unix
 * sockets stay inside the domain, ABI >= 6), and when restrict_files is set,
 * a filesystem view of exactly the listed paths (read_only: read and execute;
 * writable: everything). no_tcp forbids TCP bind/connect (ABI >= 4).
 * Paths that do not exist are skipped. Must run before any thread starts:
 * Landlock binds the calling thread and those it creates. */
int ppw_sb_landlock(int scopes, int restrict_files, const char *const *read_only, uint32_t n_read_only,
                    const char *const *writable, uint32_t n_writable, int no_tcp);

/* A seccomp-bpf filter for every thread (TSYNC): the default denylist
 * (ptrace, process_vm_*, mount, namespaces, bpf, perf, modules, keyrings...),
 * plus, on request, sockets other than AF_UNIX (and io_uring) and process
 * creation (fork, exec). A denied call fails with EPERM. */
int ppw_sb_seccomp(int no_network, int no_spawn);

#endif
