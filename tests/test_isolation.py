"""A worker nobody has to trust: hostile workers, crash reports, the worker's
environment and limits, host death, and reloads that lose nothing."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import threading

import psutil
import pytest
from conftest import ADD, CRASH, SLOW, as_u32, pair, u32, wait_until

from polyplug_isolated import (
    BundleState,
    CallTimeout,
    ProtocolError,
    ReloadPhaseType,
    ResourceLimits,
    Runtime,
    WorkerCrashed,
    guest_contract_id,
)

HOSTILE = guest_contract_id("test.hostile", 1)
ENV = guest_contract_id("test.env", 1)
PROBE = guest_contract_id("test.probe", 1)


def contract(rt, bundle_dir, name, contract_id, **options):
    rt.load_bundle(bundle_dir(name), **options)
    return rt.resolve_guest_contract(rt.find_guest_contract(contract_id, 1))


# ---- a hostile worker ----------------------------------------------------------------

# attack -> (function, error, text in the message)
HOSTILE_CASES = {
    "scribbles over the segment": (0, ProtocolError, "overwrote the segment header"),
    "answers with a 4 GiB message": (1, ProtocolError, "fields out of range"),
    "sends a 4 GiB control frame": (3, WorkerCrashed, "malformed control frame"),
    "sends a frame that is not msgpack": (4, WorkerCrashed, "malformed control frame"),
}


@pytest.mark.parametrize("attack", sorted(HOSTILE_CASES))
def test_a_hostile_worker_is_killed_and_the_host_lives_on(rt, bundle_dir, attack):
    function, error, text = HOSTILE_CASES[attack]
    adder = contract(rt, bundle_dir, "adder", ADD)
    hostile = contract(rt, bundle_dir, "hostile", HOSTILE)
    assert as_u32(hostile.call(5, u32(1), 4)) == 2
    with pytest.raises(error, match=text):
        hostile.call(function, b"", 0, timeout=10.0)
    wait_until(lambda: hostile.bundle.state is BundleState.CRASHED)
    assert as_u32(adder.call(0, pair(1, 2), 4)) == 3


def test_a_forged_answer_is_caught(bundle_dir):
    """The plugin writes an answer into its own slot as if it were the worker."""
    with Runtime(slots=1) as rt:
        hostile = contract(rt, bundle_dir, "hostile", HOSTILE)
        with pytest.raises(ProtocolError, match="forged or repeated"):
            hostile.call(2, b"", 4, timeout=10.0)


# ---- crash reports ---------------------------------------------------------------------


def test_a_crash_report_names_the_call_and_carries_the_native_stack(rt, bundle_dir):
    crasher = contract(rt, bundle_dir, "crasher", CRASH)
    with pytest.raises(WorkerCrashed) as caught:
        crasher.call(0, b"", 0)
    tail = caught.value.stderr_tail
    assert (
        "polyplug_isolated worker: fatal signal (signal 11) during a call: contract index 0, function 0"
        in tail
    )
    assert "libcrasher.so" in tail  # a frame of the native stack
    assert "Segmentation fault" in tail  # and the Python stacks, from faulthandler


def test_a_hung_call_is_killed_after_dumping_its_stack(rt, bundle_dir):
    slow = contract(rt, bundle_dir, "slow", SLOW)
    with pytest.raises(CallTimeout):
        slow.call(0, u32(60_000), 4, timeout=0.3)
    wait_until(lambda: slow.bundle.state is BundleState.CRASHED)
    death = slow.bundle.crash.death
    assert "killed by the host after a timeout" in death.output_tail
    assert "libslow.so" in death.output_tail
    assert "timed out" in death.kill_reason


# ---- the worker's environment and limits ----------------------------------------------


def getenv(env_contract, key: str) -> str:
    out = env_contract.call(0, key.encode().ljust(64, b"\0"), 1024)
    return out.split(b"\0", 1)[0].decode()


def test_env_cwd_and_library_path_reach_the_worker_only(rt, bundle_dir, tmp_path):
    lib_dir = tmp_path / "deps"
    lib_dir.mkdir()
    env = contract(
        rt, bundle_dir, "environ", ENV, env={"PLUGIN_MODE": "isolated"}, cwd=tmp_path, library_path=[lib_dir]
    )
    assert getenv(env, "PLUGIN_MODE") == "isolated"
    assert getenv(env, "LD_LIBRARY_PATH").split(os.pathsep)[0] == str(lib_dir)
    assert env.call(1, b"", 1024).split(b"\0", 1)[0].decode() == str(tmp_path)
    assert "PLUGIN_MODE" not in os.environ and os.getcwd() != str(tmp_path)


def test_a_worker_can_start_from_an_empty_environment(rt, bundle_dir, monkeypatch):
    monkeypatch.setenv("HOST_SECRET", "do-not-leak")
    env = contract(rt, bundle_dir, "environ", ENV, inherit_env=False, env={"ONLY": "this"})
    assert getenv(env, "ONLY") == "this"
    assert getenv(env, "HOST_SECRET") == ""


def test_reloads_keep_the_bundles_worker_options(rt, bundle_dir):
    env = contract(rt, bundle_dir, "environ", ENV, env={"PLUGIN_MODE": "kept"})
    rt.reload_bundle(bundle_dir("environ"))
    assert getenv(env, "PLUGIN_MODE") == "kept"


def test_open_files_limit_applies_to_the_worker(rt, bundle_dir):
    env = contract(rt, bundle_dir, "environ", ENV, limits=ResourceLimits(open_files=64))
    assert as_u32(env.call(2, b"", 4)) < 64


def test_a_plugin_past_its_cpu_limit_is_worker_crashed_naming_the_limit(rt, bundle_dir):
    env = contract(rt, bundle_dir, "environ", ENV, limits=ResourceLimits(cpu_seconds=1))
    with pytest.raises(WorkerCrashed, match=r"exceeded its CPU time limit \(limits.cpu_seconds=1\)"):
        env.call(4, b"", 0, timeout=30.0)


def test_a_plugin_past_its_address_space_is_worker_crashed_naming_the_limit(rt, bundle_dir):
    env = contract(rt, bundle_dir, "environ", ENV, limits=ResourceLimits(address_space=1 << 30))
    assert as_u32(env.call(3, u32(16), 4)) == 16
    with pytest.raises(WorkerCrashed, match=r"limits.address_space=1073741824 bytes"):
        env.call(3, u32(2048), 4)


# ---- host death --------------------------------------------------------------------------

HOST = textwrap.dedent(
    """
    import os, signal, sys
    from polyplug_isolated import Runtime
    rt = Runtime()
    bundle = rt.load_bundle(sys.argv[1])
    print(bundle.pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_workers_die_with_a_sigkilled_host(bundle_dir):
    shm_before = set(os.listdir("/dev/shm"))
    host = subprocess.run(
        [sys.executable, "-c", HOST, str(bundle_dir("adder"))], capture_output=True, text=True, timeout=60
    )
    assert host.returncode == -signal.SIGKILL
    worker = int(host.stdout.split()[0])

    def gone() -> bool:
        try:
            return psutil.Process(worker).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_until(gone, timeout=1.0)
    assert set(os.listdir("/dev/shm")) == shm_before


# ---- reload without losing a call --------------------------------------------------------


@pytest.mark.parametrize("prestart", [False, True], ids=["fresh-workers", "prestarted"])
def test_reload_back_and_forth_under_load_loses_no_call(bundle_dir, prestart):
    """50 reloads v1 -> v2 -> v1 ... while 4 threads call without pause."""
    versions = [bundle_dir("probe_v1"), bundle_dir("probe_v2")]
    eras = {"prepared": 0, "reloaded": 0}  # reloads begun / switched, from on_reload

    def on_reload(phase):
        if phase.type is ReloadPhaseType.PREPARING:
            eras["prepared"] += 1
        elif phase.type is ReloadPhaseType.RELOADED:
            eras["reloaded"] += 1

    with Runtime(prestart=prestart, on_reload=on_reload) as rt:
        probe = contract(rt, bundle_dir, "probe_v1", PROBE)
        stop = threading.Event()
        failures: list[BaseException] = []
        answers: dict[int, list[tuple[int, int, int]]] = {}

        def caller(thread_id: int):
            seen = answers.setdefault(thread_id, [])
            while not stop.is_set():
                switched = eras["reloaded"]
                try:
                    generation = as_u32(probe.call(0, b"", 4))
                except BaseException as exc:
                    failures.append(exc)
                    return
                seen.append((switched, generation, eras["prepared"]))

        threads = [threading.Thread(target=caller, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for k in range(1, 51):
            rt.reload_bundle(versions[k % 2])
        stop.set()
        for thread in threads:
            thread.join(30)

    assert failures == []
    for seen in answers.values():
        assert seen, "every caller got answers"
        for switched, generation, prepared in seen:
            assert generation in (1, 2)
            if prepared == switched:  # began after reload k switched, ended before reload k+1 began
                assert generation == (1 if switched % 2 == 0 else 2)
        changes = sum(1 for a, b in itertools.pairwise(seen) if a[1] != b[1])
        assert changes <= 50
