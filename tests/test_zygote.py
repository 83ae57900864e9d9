"""Workers forked from the runtime's zygote: who they are, what they get, and what happens
when the zygote dies, hangs or cannot fork. Plus many bundles in one runtime."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import psutil
import pytest
from conftest import ADD, CRASH, as_u32, pair, settled, wait_until
from polyplug_isolated.bench._scale import copies  # the bench's own copies of a fixture

from polyplug_isolated import (
    BundleState,
    InitFailed,
    ResourceLimits,
    RestartPolicy,
    Runtime,
    Sandbox,
    WorkerCrashed,
    WorkerStartFailed,
    guest_contract_id,
)
from polyplug_isolated._sandbox import worker_policy
from polyplug_isolated._zygote import Zygote

ENV = guest_contract_id("test.env", 1)
PIDS_CGROUP = Path("/sys/fs/cgroup/pids")
ROOT = Path(__file__).resolve().parent.parent


def getenv(env_contract, key: str) -> str:
    out = env_contract.call(0, key.encode().ljust(64, b"\0"), 1024)
    return out.split(b"\0", 1)[0].decode()


def forked(pid: int) -> bool:
    """A worker running in its zygote's fork (not a fresh worker program the fork exec'd)."""
    return "--zygote-fd" in psutil.Process(pid).cmdline()


def zygote_of(rt: Runtime) -> psutil.Process:
    return psutil.Process(rt._zygote.pid)


# ---- who the workers are ------------------------------------------------------------------


def test_workers_are_forked_children_of_the_host_and_the_zygote_is_one_thread(rt, bundle_dir):
    bundle = rt.load_bundle(bundle_dir("adder"))
    first = bundle.pid
    rt.reload_bundle(bundle_dir("adder"))
    zygote = zygote_of(rt)
    for pid in (bundle.pid, zygote.pid):
        assert psutil.Process(pid).ppid() == os.getpid()
    assert bundle.pid != first and forked(bundle.pid)
    assert zygote.num_threads() == 1
    assert psutil.Process(bundle.worker_pid).num_threads() > 1  # its threads started after the fork


def test_a_crashed_worker_is_reaped_by_the_host_with_its_exit_status(rt, bundle_dir):
    rt.load_bundle(bundle_dir("crasher"))
    crasher = rt.resolve_guest_contract(rt.find_guest_contract(CRASH, 1))
    with pytest.raises(WorkerCrashed) as caught:
        crasher.call(0, b"", 0)
    assert caught.value.signal == signal.SIGSEGV


# ---- per-bundle options after the fork -------------------------------------------------------

# options -> (still a fork?, {variable: value the plugin sees})
OPTION_CASES = {
    "env": ({"env": {"PLUGIN_MODE": "forked"}}, True, {"PLUGIN_MODE": "forked"}),
    "inherit_env=False": (
        {"inherit_env": False, "env": {"ONLY": "this"}},
        True,
        {"ONLY": "this", "HOST_SECRET": "", "HOME": ""},
    ),
    "library_path (exec'd)": ({"library_path": ["/opt/deps"]}, False, {"HOST_SECRET": "do-not-leak"}),
    "LD_ variable (exec'd)": ({"env": {"LD_BIND_NOW": "1"}}, False, {"LD_BIND_NOW": "1"}),
}


def spare_worker(rt: Runtime) -> int:
    """The PID of the worker a runtime keeps forked ahead (``spare_worker``, the default), once it runs."""
    known = {rt._zygote.pid} | {b.pid for b in rt.bundles}
    others: set[int] = set()

    def spare_appeared() -> bool:
        others.update(c.pid for c in psutil.Process().children() if c.pid not in known)
        return len(others) == 1

    wait_until(spare_appeared)
    return others.pop()


@pytest.mark.parametrize("case", sorted(OPTION_CASES))
def test_environment_options_apply_after_the_fork(bundle_dir, monkeypatch, case):
    options, still_forked, expected = OPTION_CASES[case]
    with Runtime(prestart=True) as rt:
        rt.load_bundle(bundle_dir("adder"))
        spare = spare_worker(rt)
        # Set after the zygote and the spare started: the worker still gets the host's environment of now.
        monkeypatch.setenv("HOST_SECRET", "do-not-leak")
        rt.load_bundle(bundle_dir("environ"), **options)
        env = rt.resolve_guest_contract(rt.find_guest_contract(ENV, 1))
        assert (env.bundle.pid == spare) is still_forked  # an exec'd worker leaves the spare waiting
        assert forked(env.bundle.pid) is still_forked
        for key, value in expected.items():
            assert getenv(env, key) == value
        if "library_path" in options:
            assert getenv(env, "LD_LIBRARY_PATH").split(os.pathsep)[0] == "/opt/deps"
        assert "PLUGIN_MODE" not in os.environ and "ONLY" not in os.environ


def test_cwd_and_limits_apply_in_the_fork_and_not_in_the_zygote(rt, bundle_dir, tmp_path):
    env_bundle = rt.load_bundle(bundle_dir("environ"), cwd=tmp_path, limits=ResourceLimits(open_files=64))
    env = rt.resolve_guest_contract(rt.find_guest_contract(ENV, 1))
    assert forked(env_bundle.pid)
    assert env.call(1, b"", 1024).split(b"\0", 1)[0].decode() == str(tmp_path)
    assert as_u32(env.call(2, b"", 4)) < 64
    zygote = zygote_of(rt)
    assert zygote.cwd() != str(tmp_path)
    assert zygote.rlimit(psutil.RLIMIT_NOFILE)[0] > 64


HOST = textwrap.dedent(
    """
    import os, signal, sys, time
    import psutil
    from polyplug_isolated import Runtime
    rt = Runtime(prestart=True)
    rt.load_bundle(sys.argv[1])
    deadline = time.monotonic() + 10
    while len(psutil.Process().children()) < 3 and time.monotonic() < deadline:  # the spare forks
        time.sleep(0.001)
    print(*[child.pid for child in psutil.Process().children()], flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_the_zygote_its_spare_and_its_workers_die_with_a_sigkilled_host(bundle_dir):
    host = subprocess.run(
        [sys.executable, "-c", HOST, str(bundle_dir("adder"))], capture_output=True, text=True, timeout=60
    )
    assert host.returncode == -signal.SIGKILL
    children = [int(pid) for pid in host.stdout.split()]
    assert len(children) == 3  # zygote, worker, spare
    wait_until(lambda: all(map(gone, children)), timeout=5.0)


def gone(pid: int) -> bool:
    """Ended: a zombie counts (its new parent reaps it when it will)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


STOPPED_WORKER_HOST = textwrap.dedent(
    """
    import os, signal, sys
    from polyplug_isolated import Runtime
    from polyplug_isolated.worker._serve_ffi import lib
    if sys.argv[2] == "subreaper":  # unshare() refused, as in some containers: a subreaper stands in
        assert lib.ppw_sb_no_new_privs() == 0 and lib.ppw_sb_seccomp(0, 0) == 0
    rt = Runtime(containment=sys.argv[2] != "uncontained")
    bundle = rt.load_bundle(sys.argv[1])
    report = rt.sandbox_report().get(bundle.name)
    worker = report.pid if report else bundle.pid  # contained: not the stand-in, the worker itself
    os.kill(worker, signal.SIGSTOP)  # its watchdog thread cannot see the host go
    if sys.argv[3] == "zygote-dead":  # nobody but the stand-in can end it
        os.kill(rt._zygote.pid, signal.SIGKILL)
    print(worker, bundle.pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


# The host's parent: a subreaper, so that the processes the host leaves come to a parent in the
# same session, as under a service manager or a container's init. Else their process group
# would be orphaned with a stopped member, and the kernel itself would send it SIGHUP and
# SIGCONT (POSIX), which would hide whether the zygote and the stand-in do their part.
HOST_PARENT = textwrap.dedent(
    """
    import ctypes, subprocess, sys
    PR_SET_CHILD_SUBREAPER = 36
    assert ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    host = subprocess.run([sys.executable, "-c", *sys.argv[1:]], capture_output=True, text=True)
    print(host.returncode, host.stdout.strip(), flush=True)
    sys.stdin.read()  # stays the orphans' parent until the test has looked
    """
)


@pytest.mark.parametrize(
    "containment, zygote",
    [
        ("contained", "zygote-alive"),
        ("contained", "zygote-dead"),
        ("subreaper", "zygote-alive"),
        ("subreaper", "zygote-dead"),
        ("uncontained", "zygote-alive"),  # no stand-in: only the zygote can wake it
    ],
)
def test_a_stopped_worker_dies_with_a_sigkilled_host(bundle_dir, containment, zygote):
    command = [
        sys.executable,
        "-c",
        HOST_PARENT,
        STOPPED_WORKER_HOST,
        str(bundle_dir("adder")),
        containment,
        zygote,
    ]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as parent:
        returncode, worker, handle = map(int, parent.stdout.readline().split())
        assert returncode == -signal.SIGKILL
        assert (worker != handle) == (containment != "uncontained")
        try:
            wait_until(lambda: gone(worker) and gone(handle), timeout=10.0)
        finally:
            for pid in (worker, handle):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)  # never left behind, whatever the test found
            parent.communicate("", timeout=60)


# ---- the zygote's failures --------------------------------------------------------------------


@pytest.mark.parametrize("spare", [False, True], ids=["fork-on-demand", "spare-forked-ahead"])
def test_a_killed_zygote_is_replaced_and_its_workers_serve_on(bundle_dir, spare):
    with Runtime(spare_worker=spare) as rt:
        rt.load_bundle(bundle_dir("adder"))
        adder = rt.resolve_guest_contract(rt.find_guest_contract(ADD, 1))
        if spare:
            spare_worker(rt)  # forked: the zygote is killed with the spare adopted, or its answer unread
        old = zygote_of(rt)
        old.kill()
        wait_until(lambda: old.status() == psutil.STATUS_ZOMBIE)  # dead, and the host's to reap
        rt.reload_bundle(bundle_dir("adder"))  # with a spare: it takes the spare, forked before
        assert as_u32(adder.call(0, pair(2, 3), 4)) == 5
        crashed_zygote_worker = rt.load_bundle(bundle_dir("environ"))
        assert forked(crashed_zygote_worker.pid)
        assert rt._zygote.pid != old.pid and not psutil.pid_exists(old.pid)


def test_a_hung_zygote_fails_the_load_with_a_typed_error_and_is_replaced(bundle_dir):
    with Runtime(load_timeout=2.0, spare_worker=False) as rt:  # the load itself waits for the zygote
        rt.load_bundle(bundle_dir("adder"))
        hung = zygote_of(rt)
        hung.suspend()
        with pytest.raises(
            WorkerStartFailed, match=r"bundle 'environ': .*did not answer within 2 s"
        ) as caught:
            rt.load_bundle(bundle_dir("environ"))
        assert caught.value.bundle == "environ"
        assert not psutil.pid_exists(hung.pid)  # killed and reaped
        assert [b.name for b in rt.bundles] == ["adder"]
        assert forked(rt.load_bundle(bundle_dir("environ")).pid)


def test_a_spare_that_died_waiting_is_reaped_and_the_load_forks_anew(bundle_dir):
    with Runtime(prestart=True) as rt:
        rt.load_bundle(bundle_dir("adder"))
        spare = psutil.Process(spare_worker(rt))
        spare.kill()
        wait_until(lambda: spare.status() == psutil.STATUS_ZOMBIE)
        bundle = rt.load_bundle(bundle_dir("environ"))
        assert bundle.pid != spare.pid and forked(bundle.pid)
        assert not psutil.pid_exists(spare.pid)  # reaped, not left a zombie


@contextlib.contextmanager
def pids_cgroup(limit: int):
    """A cgroup (v1 pids controller) that lets its members have at most ``limit`` tasks."""
    group = PIDS_CGROUP / f"polyplug-test-{os.getpid()}"
    try:
        group.mkdir()
        (group / "pids.max").write_text(str(limit))
    except OSError as exc:
        pytest.skip(f"no writable pids cgroup here ({exc})")
    try:
        yield group
    finally:
        for pid in (group / "cgroup.procs").read_text().split():  # left behind by a failing test
            (PIDS_CGROUP / "cgroup.procs").write_text(pid)
        group.rmdir()


def test_a_zygote_that_cannot_fork_fails_the_load_with_eagain_and_is_replaced(bundle_dir):
    with Runtime(spare_worker=False) as rt:  # the load itself asks for the fork
        rt.load_bundle(bundle_dir("adder"))
        zygote = zygote_of(rt)
        with pids_cgroup(1) as group:
            (group / "cgroup.procs").write_text(str(zygote.pid))  # the kernel now refuses its forks
            with pytest.raises(WorkerStartFailed, match="could not fork.*errno 11") as caught:
                rt.load_bundle(bundle_dir("environ"))
            assert caught.value.errno == 11  # EAGAIN
            assert not psutil.pid_exists(zygote.pid)  # so the cgroup is empty again
        assert rt._zygote.pid != zygote.pid
        assert forked(rt.load_bundle(bundle_dir("environ")).pid)


def test_loads_from_many_threads_share_the_zygote(tmp_path, bundle_dir):
    bundles = copies(bundle_dir("adder"), tmp_path, 16)
    errors: list[BaseException] = []
    with Runtime() as rt:

        def load(paths: list[Path]) -> None:
            try:
                for path in paths:
                    rt.load_bundle(path)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=load, args=(bundles[i::4],)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        assert len({b.pid for b in rt.bundles}) == 16


# ---- many bundles -------------------------------------------------------------------------------


def _load_call_unload(tmp_path: Path, source: Path, count: int) -> None:
    host = psutil.Process()
    threads_before = host.num_threads()
    bundles = copies(source, tmp_path, count)
    with Runtime() as rt:
        loaded = [rt.load_bundle(path) for path in bundles]
        assert len({b.pid for b in loaded}) == count
        for contract in (rt.resolve_guest_contract(h) for h in rt.find_all_by_contract(ADD, 1)):
            assert (
                as_u32(contract.call(0, pair(contract.bundle.id % 1000, 1), 4))
                == contract.bundle.id % 1000 + 1
            )
        assert host.num_threads() == threads_before + 1  # the monitor, whatever the count
        assert host.num_fds() < 3 * count + 64
        for bundle in loaded[: count // 2]:
            rt.unload_bundle(bundle.id)
        assert rt.live_worker_count() == count - count // 2


def test_200_bundles_load_answer_and_unload_leaving_nothing(tmp_path, bundle_dir):
    _load_call_unload(tmp_path, bundle_dir("adder"), 200)


def test_a_host_whose_fds_go_past_1024_loads_calls_and_restarts(bundle_dir):
    """What 1,000 workers' fds do to a host, without the 1,000 workers: no select() on the way."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 1200:
        pytest.skip(f"the hard fd limit {hard} is below 1,200")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    filler = []
    try:
        while not filler or filler[-1] < 1100:
            filler.append(os.open(os.devnull, os.O_RDONLY))
        with Runtime(restart=RestartPolicy(max_restarts=1, backoff=0.0, jitter=0.0)) as rt:
            bundle = rt.load_bundle(bundle_dir("adder"))
            assert bundle.proxy.process.control.fileno() > 1024
            contract = rt.resolve_guest_contract(rt.find_guest_contract(ADD, 1))
            assert as_u32(contract.call(0, pair(2, 3), 4)) == 5
            os.kill(bundle.pid, signal.SIGKILL)
            wait_until(lambda: bundle.state is BundleState.READY and bundle.restarts == 1)
            assert as_u32(contract.call(0, pair(4, 5), 4)) == 9
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.scale
def test_1000_bundles_load_answer_and_unload_leaving_nothing(tmp_path, bundle_dir):
    _load_call_unload(tmp_path, bundle_dir("adder"), 1000)


def test_the_scale_bench_runs_and_reports_every_figure(tmp_path):
    out = tmp_path / "scale.json"
    command = [sys.executable, "-m", "bench._scale", "--bundles", "20", "--repeats", "3", "--calls", "300"]
    subprocess.run([*command, "--json", str(out)], cwd=ROOT, check=True, capture_output=True, timeout=120)
    result = json.loads(out.read_text())
    steps = [f"{step}_{kind}_ms" for step in ("load", "reload", "restart") for kind in ("ahead", "demand")]
    for step in (*steps, "load_back_to_back_ms", "load_exec_ms", "c_process_start_ms"):
        assert result["startup"][step]["n"] == 3 and result["startup"][step]["p50"] > 0
    scale = result["scale"]
    assert scale["bundles"] == 20 and scale["load_ms"]["n"] == 20
    # Under containment a worker is three processes sharing the pages of the one the host started:
    # USS (pages no other process maps) says what each extra worker costs, but not an exec'd one.
    assert scale["uss_per_worker_mb"] > 0 and result["startup"]["uss_per_exec_worker_mb"] > 0
    assert scale["host_threads"] == scale["host_threads_before"] + 1
    assert scale["host_fds_after_close"] == scale["host_fds_before"]
    assert scale["spread_c_floor_p50_us"] > 0


# ---- spares contained ahead of need, reloads that do not wait for the old worker --------------


def contained_spare(rt: Runtime) -> psutil.Process:
    """The runtime's spare once it has contained itself: its namespace's init and worker run."""
    spare = psutil.Process(spare_worker(rt))
    wait_until(lambda: len(spare.children(recursive=True)) == 2)
    return spare


def monitor_caught_up(rt: Runtime) -> None:
    """Returns once the monitor has run every task deferred so far (they run in order)."""
    done = threading.Event()
    rt._monitor.defer(done.set)
    assert done.wait(10)


def test_a_start_takes_the_channel_made_ahead_and_spare_worker_false_makes_none(bundle_dir):
    """The monitor makes the next worker's channel after each start, with the spare worker."""
    with Runtime() as rt:
        rt.load_bundle(bundle_dir("adder"))
        monitor_caught_up(rt)
        ahead = rt._channels._ready
        assert ahead is not None
        bundle = rt.reload_bundle(bundle_dir("adder"))
        assert bundle.proxy.channel is ahead
        add = rt.resolve_guest_contract(rt.find_guest_contract(ADD, 1))
        assert as_u32(add.call(1, pair(20, 22), 4)) == 42
        monitor_caught_up(rt)
        assert rt._channels._ready not in (None, ahead)  # and the next one is made
    with Runtime(spare_worker=False) as rt:
        rt.load_bundle(bundle_dir("adder"))
        monitor_caught_up(rt)
        assert rt._channels._ready is None


def test_the_monitor_adopts_the_spare_before_the_next_load_needs_it(bundle_dir):
    """The zygote's answer about a spare is read off the next start's path."""
    with Runtime() as rt:
        rt.load_bundle(bundle_dir("adder"))
        spare = spare_worker(rt)
        wait_until(lambda: rt._zygote._pending is None)  # nothing but the monitor read it
        assert rt._zygote._spare is not None and rt._zygote._spare[0].pid == spare
        assert rt.load_bundle(bundle_dir("environ")).pid == spare


def test_a_zygote_hanging_before_its_answer_holds_the_monitor_back_for_nothing(bundle_dir, monkeypatch):
    """The monitor only looks for the spare's answer: a zygote stopped as it is asked for the next
    spare neither delays a crash's detection nor makes the monitor wait out load_timeout."""
    stopped: list[int] = []
    ask = Zygote.fork_ahead

    def stop_then_ask(zygote: Zygote) -> None:
        if zygote.pid is not None and not stopped:
            os.kill(zygote.pid, signal.SIGSTOP)
            stopped.append(zygote.pid)
        ask(zygote)

    with Runtime(load_timeout=30.0) as rt:
        bundle = rt.load_bundle(bundle_dir("adder"))
        settled(rt)  # the spare the next load takes is adopted: only the one after it is asked for stopped
        monkeypatch.setattr(Zygote, "fork_ahead", stop_then_ask)
        rt.load_bundle(bundle_dir("environ"))  # takes the spare; the monitor then asks the stopped zygote
        wait_until(lambda: stopped and rt._zygote._pending is not None)
        monitor_caught_up(rt)  # it has looked for the answer at least once
        os.kill(bundle.pid, signal.SIGKILL)
        wait_until(lambda: bundle.state is BundleState.CRASHED, timeout=5.0)  # a blocked monitor: 30 s
        assert rt._zygote._pending is not None  # still asked for, never waited for
        os.kill(stopped[0], signal.SIGCONT)


def test_a_spare_is_contained_before_a_load_takes_it(bundle_dir):
    with Runtime(prestart=True) as rt:
        rt.load_bundle(bundle_dir("adder"))
        spare = contained_spare(rt)  # no load frame has reached it yet
        [init] = spare.children()
        [worker] = init.children()
        assert (init.ppid(), worker.ppid()) == (spare.pid, init.pid)
        bundle = rt.load_bundle(bundle_dir("environ"))
        assert bundle.pid == spare.pid and bundle.worker_pid == worker.pid
        report = rt.sandbox_report()["environ"]
        assert report.in_force >= {"user_namespace", "pid_namespace", "landlock", "seccomp"}
        assert report.pid == worker.pid


def test_a_bundle_with_another_containment_skips_the_spare_and_leaves_it_for_the_next(bundle_dir):
    with Runtime(prestart=True) as rt:
        rt.load_bundle(bundle_dir("adder"))
        spare = contained_spare(rt)
        strict = rt.load_bundle(bundle_dir("wellbehaved"), sandbox=Sandbox(network=False))
        assert strict.pid != spare.pid
        assert rt.sandbox_report()["wellbehaved"].mechanisms["network"] == "on"
        assert rt.load_bundle(bundle_dir("environ")).pid == spare.pid


def test_a_spare_contained_otherwise_than_its_load_asks_refuses_it(bundle_dir):
    """Fail closed: were the host to hand a spare to a bundle that asks for more containment than
    the spare applied, the worker refuses before any plugin code runs."""
    with Runtime(prestart=True) as rt:
        rt.load_bundle(bundle_dir("adder"))
        strict = Sandbox(network=False)
        spare_worker(rt)  # asked for, with the default policy
        settled(rt)  # the spare adopted by the monitor
        # The spare is recorded as contained with the strict policy; it applied the default one.
        process, environment, _ = rt._zygote._spare
        recorded = worker_policy(True, strict, bundle_dir("wellbehaved"), None)
        rt._zygote._spare = (process, environment, recorded)
        with pytest.raises(InitFailed, match=r"bundle 'wellbehaved': .*was contained as .*must fork a new"):
            rt.load_bundle(bundle_dir("wellbehaved"), sandbox=strict)
        assert [b.name for b in rt.bundles] == ["adder"]


def test_a_reload_returns_while_the_old_worker_unloads_and_loses_no_call(bundle_dir):
    with Runtime(close_grace=0.5) as rt:
        bundle = rt.load_bundle(bundle_dir("adder"))
        adder = rt.resolve_guest_contract(rt.find_guest_contract(ADD, 1))
        old, old_worker = bundle.proxy.process, psutil.Process(bundle.worker_pid)
        old_worker.suspend()  # it cannot unload: a reload that waited for it would escalate to SIGKILL
        rt.reload_bundle(bundle_dir("adder"))
        assert not old.exited.is_set() and bundle.pid != old.pid
        assert as_u32(adder.call(0, pair(2, 3), 4)) == 5  # served by the new worker
        old_worker.resume()
        assert old.exited.wait(10) and old.returncode == 0  # it unloaded as told


def test_unloading_a_bundle_waits_for_its_old_worker_still_unloading(bundle_dir):
    with Runtime(close_grace=0.5) as rt:
        bundle = rt.load_bundle(bundle_dir("adder"))
        old, old_worker = bundle.proxy.process, psutil.Process(bundle.worker_pid)
        old_worker.suspend()
        rt.reload_bundle(bundle_dir("adder"))
        rt.unload_bundle(bundle.id)  # escalates on the old worker as an unload does on its own
        assert old.exited.is_set() and old.returncode == -signal.SIGKILL


def test_a_runtime_dropped_unclosed_ends_the_old_worker_of_its_last_reload(bundle_dir):
    rt = Runtime(close_grace=0.5)
    bundle = rt.load_bundle(bundle_dir("adder"))
    old, old_worker = bundle.proxy.process, psutil.Process(bundle.worker_pid)
    old_worker.suspend()
    rt.reload_bundle(bundle_dir("adder"))
    del rt, bundle
    gc.collect()  # the finalizer closes it as close() would: the old worker too
    assert old.exited.is_set() and old.returncode == -signal.SIGKILL


def test_an_old_worker_whose_unload_hangs_is_killed_at_the_next_reload(bundle_dir):
    with Runtime(close_grace=1e-6) as rt:  # overdue before the next reload has started its worker
        bundle = rt.load_bundle(bundle_dir("adder"))
        old, old_worker = bundle.proxy.process, psutil.Process(bundle.worker_pid)
        old_worker.suspend()
        rt.reload_bundle(bundle_dir("adder"))
        assert not old.exited.is_set()
        rt.reload_bundle(bundle_dir("adder"))
        assert old.exited.wait(10) and old.returncode == -signal.SIGKILL
        assert "after a reload" in str(old.kill_reason)


def test_a_default_runtime_keeps_a_contained_spare_and_spare_worker_false_none(bundle_dir):
    with Runtime() as rt:
        rt.load_bundle(bundle_dir("adder"))
        spare = contained_spare(rt)  # asked for once the first load returned
        assert rt.load_bundle(bundle_dir("environ")).pid == spare.pid
    with Runtime(spare_worker=False) as rt:
        first = rt.load_bundle(bundle_dir("adder"))
        second = rt.load_bundle(bundle_dir("environ"))
        children = {child.pid for child in psutil.Process().children()}
        assert children == {rt._zygote.pid, first.pid, second.pid}  # nothing forked ahead


def anonymous_kb(pid: int) -> int:
    """The anonymous memory ``pid`` maps (its own, or shared copy-on-write with the zygote)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Anonymous:"):
            return int(line.split()[1])
    raise AssertionError(f"no Anonymous line for {pid}")


def libraries_of(pid: int) -> set[str]:
    """The shared objects ``pid`` maps, by name up to ".so"."""
    return {Path(m.path).name.split(".so")[0] for m in psutil.Process(pid).memory_maps() if ".so" in m.path}


def test_the_stand_in_and_the_init_shed_the_interpreter_they_were_forked_with(rt, bundle_dir):
    """They run only C once the worker is split off: a copy of the interpreter would cost their
    exit (which the host waits for to learn of a death) its teardown."""
    bundle = rt.load_bundle(bundle_dir("adder"))
    stand_in = psutil.Process(bundle.pid)
    [init] = stand_in.children()
    worker = anonymous_kb(bundle.worker_pid)  # the worker keeps its interpreter's heap

    def shed(pid: int) -> bool:
        # What they keep is the libraries' own data (~2 MB here), a fraction of the heap (~10 MB),
        # and of the libraries only those their C runs in: libc, the loader and the worker's module.
        others = {name for name in libraries_of(pid) if name not in ("libc", "_serve_ffi.abi3")}
        return 3 * anonymous_kb(pid) < worker and all(name.startswith("ld-") for name in others)

    # They shed while nothing waits for them: not necessarily before the load has returned.
    wait_until(lambda: shed(stand_in.pid) and shed(init.pid))
    assert "libc" in libraries_of(stand_in.pid) and "libc" in libraries_of(init.pid)
