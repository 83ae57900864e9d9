"""The pytest plugin: its fixtures and marker here in-process, its reports in pytester subprocesses.

The subprocess runs load the plugin the way users get it, through the pytest11
entry point (no conftest of ours is in their rootdir). They also record how
the plugin and pytest-timeout get along (see the README): the signal method
cannot end a call blocked in a worker, a call_timeout shorter than the test's
timeout can.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points

import psutil
import pytest
from conftest import ADD, CRASH, as_u32, pair, u32, wait_until

from polyplug_isolated import (
    BundleState,
    Fault,
    FaultKind,
    InitFailed,
    PluginCallError,
    WorkerCrashed,
)
from polyplug_isolated._fixtures import fixture_path
from polyplug_isolated.pytest_plugin import ResourceSnapshot, leak_check, under_faults

pytest_plugins = ["pytester"]


def add_of(runtime):
    return runtime.resolve_guest_contract(runtime.find_guest_contract(ADD, 1))


def test_the_plugin_is_registered_through_the_pytest11_entry_point(pytestconfig):
    [entry] = [e for e in entry_points(group="pytest11") if e.name == "polyplug_isolated"]
    assert entry.value == "polyplug_isolated.pytest_plugin"
    assert pytestconfig.pluginmanager.has_plugin("polyplug_isolated")


# ---- fixtures and marker, in this process ---------------------------------------------


def test_fixture_bundle_loads_a_project_fixture_into_isolated_runtime(isolated_runtime, fixture_bundle):
    bundle = fixture_bundle("adder")
    assert isolated_runtime.bundles == [bundle]
    assert bundle.state is BundleState.READY
    assert as_u32(add_of(isolated_runtime).call(1, pair(2, 3), 4)) == 5
    assert fixture_bundle.path("adder") == fixture_path("adder")


def test_fixture_bundle_takes_a_path_and_load_options(isolated_runtime, fixture_bundle, tmp_path):
    bundle = fixture_bundle(fixture_path("adder"), cwd=tmp_path)
    assert bundle.options.cwd == str(tmp_path)


def test_fixture_bundle_names_what_it_knows_when_a_name_is_unknown(fixture_bundle):
    with pytest.raises(LookupError, match=r"no bundle named 'nope'.*'adder'.*polyplug_bundles"):
        fixture_bundle("nope")


@pytest.mark.faults(Fault.error(code=300, message="marked").on_call(1), bundle="adder")
def test_the_faults_marker_arms_only_the_named_bundle(isolated_runtime, fixture_bundle):
    adder, crasher = fixture_bundle("adder"), fixture_bundle("crasher")
    add = add_of(isolated_runtime)
    with pytest.raises(PluginCallError) as caught:
        add.call(1, pair(1, 1), 4)
    assert (caught.value.code, caught.value.message) == (300, "marked")
    assert as_u32(add.call(1, pair(1, 1), 4)) == 2
    ping = isolated_runtime.resolve_guest_contract(isolated_runtime.find_guest_contract(CRASH, 1))
    assert as_u32(ping.call(4, u32(1), 4)) == 2
    assert [r.fault.kind for r in adder.fault_log()] == [FaultKind.ERROR]
    assert crasher.fault_log() == []


@pytest.mark.faults(Fault.error(code=7).on_call(1))
@pytest.mark.faults(Fault.delay(ms=1), bundle="adder")
def test_every_worker_of_the_bundle_gets_the_plan_counters_from_zero(isolated_runtime, fixture_bundle):
    fixture_bundle("adder")
    add = add_of(isolated_runtime)
    for _ in range(2):  # the first load, then a reload: the 1st call of each worker fails
        with pytest.raises(PluginCallError, match="code 7"):
            add.call(1, pair(1, 1), 4)
        assert as_u32(add.call(1, pair(1, 1), 4)) == 2
        isolated_runtime.reload_bundle(fixture_bundle.path("adder"))


@pytest.mark.faults(Fault.fail_init(message="no init today"), bundle="adder")
def test_the_marker_takes_init_faults(fixture_bundle):
    with pytest.raises(InitFailed, match="no init today"):
        fixture_bundle("adder")


def test_under_faults_arms_for_the_block_only(isolated_runtime, fixture_bundle):
    bundle = fixture_bundle("adder")
    add = add_of(isolated_runtime)
    fault = Fault.error(code=9, message="in the block")
    with under_faults(bundle, fault), pytest.raises(PluginCallError, match="in the block"):
        add.call(1, pair(1, 1), 4)
    assert as_u32(add.call(1, pair(1, 1), 4)) == 2


def test_under_faults_survives_the_crash_it_causes(isolated_runtime, fixture_bundle):
    bundle = fixture_bundle("adder")
    add = add_of(isolated_runtime)
    with under_faults(bundle, Fault.crash().on_call(1)), pytest.raises(WorkerCrashed):
        add.call(1, pair(1, 1), 4)
    assert bundle.state is BundleState.CRASHED
    isolated_runtime.reload_bundle(fixture_bundle.path("adder"))
    assert as_u32(add.call(1, pair(1, 1), 4)) == 2  # the fresh worker starts clean


def test_a_snapshot_sees_a_new_fd_and_a_new_child():
    before = ResourceSnapshot.take()
    read, write = os.pipe()
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        problems = ResourceSnapshot.take().leaks_since(before)
    finally:
        os.close(read)
        os.close(write)
        child.stdin.close()
        child.wait()
    assert len(problems) == 2
    assert problems[0].startswith(f"child processes still running: ['{child.pid}: {sys.executable} -c")
    assert problems[1].startswith("file descriptors left open: {")
    assert ResourceSnapshot.take().leaks_since(before) == []


def test_leak_check_fails_the_test_that_leaks():
    read = write = -1
    leaked = pytest.raises(pytest.fail.Exception, match="my check: file descriptors left open")
    with leaked, leak_check("my check"):
        read, write = os.pipe()
    os.close(read)
    os.close(write)


# ---- reports, in a pytester subprocess ------------------------------------------


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_passing_suite_uses_fixtures_marker_and_helper(pytester):
    pytester.makepyfile(
        """
        import struct
        import pytest
        from polyplug_isolated import Fault, PluginCallError, guest_contract_id
        from polyplug_isolated.pytest_plugin import under_faults

        ADD = guest_contract_id("test.add", 1)

        def add(runtime, a, b):
            contract = runtime.resolve_guest_contract(runtime.find_guest_contract(ADD, 1))
            return struct.unpack("<I", contract.call(1, struct.pack("<II", a, b), 4))[0]

        def test_plain(isolated_runtime, fixture_bundle):
            fixture_bundle("adder")
            assert add(isolated_runtime, 2, 3) == 5

        @pytest.mark.faults(Fault.error(code=5).every(2), bundle="adder")
        def test_marked(isolated_runtime, fixture_bundle):
            fixture_bundle("adder")
            assert add(isolated_runtime, 1, 1) == 2
            with pytest.raises(PluginCallError):
                add(isolated_runtime, 1, 1)

        def test_helper(isolated_runtime, fixture_bundle):
            with under_faults(fixture_bundle("adder"), Fault.error()):
                with pytest.raises(PluginCallError):
                    add(isolated_runtime, 1, 1)
            assert add(isolated_runtime, 1, 1) == 2
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=3)


def test_a_test_that_leaks_a_worker_is_reported_failing(pytester):
    pidfile = pytester.path / "leaked.pid"
    pytester.makepyfile(
        f"""
        from polyplug_isolated import Runtime

        KEPT = []  # a dropped Runtime is closed by its finalizer: this one stays reachable

        def test_leaks_a_worker(isolated_runtime, fixture_bundle):
            fixture_bundle("adder")
            forgotten = Runtime()  # never closed: its worker outlives the test
            KEPT.append(forgotten)
            bundle = forgotten.load_bundle(fixture_bundle.path("adder"))
            open({str(pidfile)!r}, "w").write(str(bundle.pid))

        def test_after_it(isolated_runtime):
            pass
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_leaks_a_worker*"])
    assert "isolated_runtime leak check: child processes still running: [" in result.stdout.str()
    assert "-m polyplug_isolated.worker" in result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    pid = int(pidfile.read_text())
    wait_until(lambda: gone(pid))  # it followed its host out: the watchdog saw the socket hang up


def test_misused_markers_are_errors_that_say_why(pytester):
    pytester.makepyfile(
        """
        import pytest
        from polyplug_isolated import Fault

        @pytest.mark.faults(Fault.error())
        def test_without_runtime():
            pass

        @pytest.mark.faults(Fault.error(), bundle="addr")
        def test_typo(isolated_runtime, fixture_bundle):
            fixture_bundle("adder")

        @pytest.mark.faults("crash please")
        def test_not_a_fault(isolated_runtime):
            pass
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1, errors=3)
    output = result.stdout.str()
    for expected in (
        "test_without_runtime: @pytest.mark.faults arms faults in bundles loaded into isolated_runtime",
        "@pytest.mark.faults names bundles ['addr'] that the test never loaded (it loaded ['adder'])",
        "@pytest.mark.faults takes Fault values, e.g. ",
    ):
        assert expected in output


def test_polyplug_bundles_finds_a_users_own_bundles(pytester):
    shutil.copytree(fixture_path("adder"), pytester.path / "plugins" / "my_adder")
    pytester.makeini("[pytest]\npolyplug_bundles = plugins\n")
    pytester.makepyfile(
        """
        def test_by_name(fixture_bundle, pytestconfig):
            bundle = fixture_bundle("my_adder")
            assert bundle.path == pytestconfig.rootpath / "plugins" / "my_adder"
        """
    )
    pytester.runpytest_subprocess().assert_outcomes(passed=1)


# ---- pytest-timeout ---------------------------------------------------------------

HANGING = """
    import struct
    import pytest
    from polyplug_isolated import Fault, guest_contract_id

    @pytest.fixture
    def isolated_runtime_options():
        return {options}

    @pytest.mark.timeout(2{method})
    @pytest.mark.faults(Fault.hang(), bundle="adder")
    def test_hangs(isolated_runtime, fixture_bundle):
        bundle = fixture_bundle("adder")
        open("worker.pid", "w").write(str(bundle.pid))
        add = isolated_runtime.resolve_guest_contract(
            isolated_runtime.find_guest_contract(guest_contract_id("test.add", 1), 1))
        open("calling", "w").close()
        try:
            add.call(1, struct.pack("<II", 1, 2), 4)
        finally:
            open("ended", "w").close()

    def test_after_it():
        pass
"""


def hanging(pytester, options="{}", method=""):
    pytester.makepyfile(textwrap.dedent(HANGING.format(options=options, method=method)))
    return pytester.path / "worker.pid"


def test_timeout_signal_method_and_a_shorter_call_timeout_end_in_call_timeout(pytester):
    hanging(pytester, options='{"call_timeout": 1.0}')
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*CallTimeout: bundle 'adder': test.add@1 function 1: no answer within 1 s*"]
    )
    result.stdout.no_fnmatch_line("*Timeout (>2.0s) from pytest-timeout*")


def test_timeout_signal_method_interrupts_a_call_blocked_in_a_worker(pytester):
    """SIGALRM's handler runs while the call waits (the wait wakes for it): the test fails at 2 s."""
    pidfile = hanging(pytester, options='{"drain_timeout": 0.5, "close_grace": 0.5}')
    result = pytester.runpytest_subprocess(timeout=60)  # the hang never ends on its own
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*Failed: Timeout (>2.0s) from pytest-timeout*"])
    result.stdout.no_fnmatch_line("E *CallTimeout*")
    pid = int(pidfile.read_text())
    wait_until(lambda: gone(pid))


def test_timeout_thread_method_ends_the_whole_session_and_its_workers(pytester):
    pidfile = hanging(pytester, method=', method="thread"')
    result = pytester.runpytest_subprocess()
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*+ Timeout +*"])
    result.stdout.no_fnmatch_line("*test_after_it*PASSED*")
    result.stdout.no_fnmatch_line("*passed*")
    pid = int(pidfile.read_text())
    wait_until(lambda: gone(pid))
