"""Containment: a plugin that means harm gets nowhere, and one that does not loses nothing.

Each escape runs in a host process of its own (tests/_escape_host.py): an
escape that works may kill its host. It runs as root and, where the machine
allows, as the unprivileged user nobody. A control case runs each attack
with ``containment=False`` to show that the attack is real, so that these
tests can fail.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest
from conftest import wait_until

from polyplug_isolated import ResourceLimits, Runtime, Sandbox, guest_contract_id
from polyplug_isolated._sandbox import DEFAULT_MECHANISMS, read_report

HOST = Path(__file__).with_name("_escape_host.py")
WELLBEHAVED = guest_contract_id("test.wellbehaved", 1)
SECRET_ENV = "POLYPLUG_HOST_SECRET"
SECRET = "hunter2-7d1c"


NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


@functools.cache
def _nobody() -> tuple[list[str], dict[str, str]]:
    """How to run this test's Python as nobody: (command prefix, extra environment).

    The interpreter of a virtualenv may live where nobody cannot go (pyenv under
    /root): then a system interpreter of the same version runs instead, with
    the virtualenv's packages added by a sitecustomize (for its workers too).
    """
    if os.geteuid() != 0:
        pytest.skip("only root can run a scenario as nobody here; this run is unprivileged already")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is missing: cannot switch to the user nobody")
    site_dir = Path(tempfile.mkdtemp(prefix="polyplug-nobody-site-"))
    site_dir.chmod(0o755)
    packages = [p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)]
    # The virtualenv's packages go first: the system's own (an older cffi backend) must not shadow them.
    (site_dir / "sitecustomize.py").write_text(
        "import site, sys\nbefore = list(sys.path)\n"
        + "".join(f"site.addsitedir({p!r})\n" for p in packages)
        + "sys.path[:] = [p for p in sys.path if p not in before] + before\n"
    )
    probe = (
        "import subprocess, sys; "
        "subprocess.run([sys.executable, '-c', 'import polyplug_isolated.worker._serve_ffi'], check=True)"
    )
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for python in (sys.executable, shutil.which(version, path="/usr/local/bin:/usr/bin")):
        if python is None:
            continue
        env = {"PYTHONPATH": str(site_dir)}
        tried = subprocess.run(
            [*NOBODY, python, "-c", probe], env={**os.environ, **env}, capture_output=True, cwd="/"
        )
        if tried.returncode == 0:
            return [*NOBODY, python], env
    pytest.skip(f"no {version} interpreter that the user nobody can run (and start workers from)")


USERS = ["host user", "nobody"]


@pytest.fixture
def shared_dir():
    """A directory any user can write (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="polyplug-containment-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Host:
    """Runs _escape_host.py SCENARIO as ``user``, with or without containment."""

    def __init__(self, fixtures_root: Path, user: str, containment: bool = True):
        self.prefix, self.env = _nobody() if user == "nobody" else ([sys.executable], {})
        self.fixtures_root = fixtures_root
        self.containment = containment

    def command(self, scenario: str, *extra: str) -> list[str]:
        return [
            *self.prefix,
            str(HOST),
            scenario,
            str(self.fixtures_root),
            "1" if self.containment else "0",
            *extra,
        ]

    def run(self, scenario: str, *extra: str) -> tuple[int, dict]:
        env = {SECRET_ENV: SECRET, **os.environ, **self.env}  # first: the plugin reads 1 KiB
        done = subprocess.run(
            self.command(scenario, *extra), capture_output=True, text=True, timeout=90, env=env, cwd="/"
        )
        lines = done.stdout.strip().splitlines()
        return done.returncode, json.loads(lines[-1]) if lines else {"stderr": done.stderr[-2000:]}


def denied(attempt: dict) -> bool:
    """The kernel refused the attempt (an errno), or it cost the attacker its own worker."""
    return attempt.get("err", 0) != 0 or "worker_died" in attempt


# ---- the escapes of issue 13, each against the default containment ----------------------


@pytest.mark.parametrize("user", USERS)
def test_a_plugin_cannot_kill_its_host(fixtures_root, user):
    returncode, result = Host(fixtures_root, user).run("kill_parent")
    assert returncode == 0, result  # the host lived to print its answer
    assert denied(result["getppid"]) and denied(result["host_pid"]), result


@pytest.mark.parametrize("user", USERS)
def test_a_plugin_cannot_read_or_write_host_memory(fixtures_root, user):
    returncode, result = Host(fixtures_root, user).run("proc_mem")
    assert returncode == 0, result
    assert denied(result["peek"]) and "host secret" not in result["peek"].get("data", ""), result
    assert denied(result["poke"]), result
    assert result["host_buffer"] == "host secret 8c1f"


@pytest.mark.parametrize("user", USERS)
def test_without_inherit_env_no_path_leads_to_the_hosts_environment(fixtures_root, user):
    returncode, result = Host(fixtures_root, user).run("environ")
    assert returncode == 0, result
    for name in ("host", "parent", "init"):
        assert SECRET not in result[name].get("data", ""), (name, result)
        assert denied(result[name]), (name, result)
    assert result["host_cmdline"]["err"] == errno.ENOENT  # the host has no /proc entry in its sight


@pytest.mark.parametrize("user", USERS)
def test_a_plugin_cannot_reach_another_bundles_ring(fixtures_root, user):
    returncode, result = Host(fixtures_root, user).run("scribble")
    assert returncode == 0, result
    assert denied(result["scribble"]), result
    assert result["victim_answer"] == 5, result


def lock_is_free(path: Path) -> bool:
    """Whether no process holds the daemon's flock: the daemon is gone."""
    with open(path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


@pytest.fixture
def daemon_lock(shared_dir):
    """The file the daemon fixture locks; any daemon still holding it is killed afterwards."""
    path = shared_dir / "daemon.lock"
    yield path
    for proc in psutil.process_iter(["pid"]):  # only a failed run leaves one
        with contextlib.suppress(psutil.Error):
            if any(f.path.startswith(str(path)) for f in proc.open_files()):
                proc.kill()


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("ending", ["unload", "close", "host_exit"])
@pytest.mark.parametrize("namespaces", ["", "_without_namespaces"])  # else a subreaper does it
def test_a_daemon_started_by_a_constructor_dies_with_its_worker(
    fixtures_root, daemon_lock, user, ending, namespaces
):
    host = Host(fixtures_root, user)
    command = host.command(f"daemon_{ending}{namespaces}", str(daemon_lock))
    env = {**os.environ, **host.env}
    with subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/",
        env=env,
    ) as proc:
        assert json.loads(proc.stdout.readline()) == {"loaded": "daemon"}
        assert not lock_is_free(daemon_lock)  # the daemon runs, outside any call
        proc.stdin.write("\n")  # the host goes on: unload, close or exit
        proc.stdin.flush()
        if ending == "unload":
            assert json.loads(proc.stdout.readline()) == {"unloaded": True}
            wait_until(lambda: lock_is_free(daemon_lock), timeout=10.0)  # while the host lives on
        _, stderr = proc.communicate("\n", timeout=60)
    assert proc.returncode == 0, stderr
    wait_until(lambda: lock_is_free(daemon_lock), timeout=10.0)


@pytest.mark.parametrize("user", USERS)
def test_where_the_kernel_refuses_namespaces_the_rest_holds_and_the_report_says_so(fixtures_root, user):
    host = Host(fixtures_root, user)
    done = subprocess.run(
        host.command("fallback"),
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, **host.env},
        cwd="/",
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    mechanisms = result["mechanisms"]
    for refused in ("user_namespace", "pid_namespace", "fresh_proc"):
        assert mechanisms[refused].startswith("unavailable: EPERM"), mechanisms
    assert "a subreaper kills what it leaves" in mechanisms["pid_namespace"]
    for held in ("capabilities", "no_new_privs", "landlock", "landlock_scopes", "seccomp"):
        assert mechanisms[held] == "on", mechanisms
    assert denied(result["host_pid"]) and denied(result["peek"]), result
    assert denied(result["environ"]) and SECRET not in result["environ"].get("data", ""), result
    # Logged once, naming what the plugin is not kept from and what it needs.
    assert done.stderr.count("containment pid_namespace is unavailable (EPERM") == 1, done.stderr
    assert "It needs pid namespaces" in done.stderr


ZYGOTE = """
import json, os, socket, sys
from polyplug_isolated.worker._contain import contain

ours, theirs = socket.socketpair()
child = os.fork()
if child == 0:  # what a zygote's child does first
    ours.close()
    report = contain({"contain": True}, theirs.fileno())
    theirs.sendall(json.dumps({**report, "ns_pid": os.getpid()}).encode())
    os._exit(3)
theirs.close()
report = json.loads(ours.recv(1 << 16))
_, status = os.waitpid(child, 0)
print(json.dumps({**report, "child": child, "status": status}))
"""


def test_contain_works_in_a_forked_child_as_a_zygote_calls_it():
    done = subprocess.run(
        [sys.executable, "-c", ZYGOTE], capture_output=True, text=True, timeout=60, check=True
    )
    result = json.loads(done.stdout)
    mechanisms = result["mechanisms"]
    for name in ("pid_namespace", "fresh_proc", "capabilities", "landlock", "seccomp"):
        assert mechanisms[name] == "on", mechanisms
    assert result["ns_pid"] == 2  # the worker, under its namespace's init
    assert result["pid"] not in (result["child"], 0)  # the host-side pid of the worker
    assert os.WIFEXITED(result["status"]) and os.WEXITSTATUS(result["status"]) == 3  # mirrored


@pytest.mark.parametrize("scenario", ["kill_parent", "proc_mem", "environ"])
def test_a_spare_contained_ahead_of_its_load_holds_as_one_contained_on_demand(fixtures_root, scenario):
    returncode, result = Host(fixtures_root, "host user").run(f"{scenario}_from_spare")
    assert returncode == 0, result  # the host lived to print its answer
    assert result["escape_pids"] == [result["spare"]], result  # the plugin ran in the spare
    if scenario == "kill_parent":
        assert denied(result["getppid"]) and denied(result["host_pid"]), result
    elif scenario == "proc_mem":
        assert denied(result["peek"]) and denied(result["poke"]), result
        assert result["host_buffer"] == "host secret 8c1f"
    else:
        for name in ("host", "parent", "init"):
            assert denied(result[name]) and SECRET not in result[name].get("data", ""), (name, result)


# ---- control: the same attacks succeed without containment ------------------------------


def test_without_containment_the_escapes_work(fixtures_root):
    """What the tests above guard against is real (so they can fail)."""
    host = Host(fixtures_root, "host user", containment=False)
    returncode, result = host.run("proc_mem")
    assert result["peek"]["data"] == "host secret 8c1f" and result["host_buffer"].startswith("PWNED")
    returncode, result = host.run("environ")
    assert SECRET in result["host"]["data"]
    returncode, result = host.run("scribble")
    assert result["scribble"]["err"] == 0 and "ProtocolError" in str(result["victim_answer"])
    returncode, _ = host.run("kill_parent")
    assert returncode == -9


# ---- a legitimate plugin under the default containment ----------------------------------


def request(a: int = 0, b: int = 0, text: str = "") -> bytes:
    return struct.pack("<II256s", a, b, text.encode())


def answer(contract, function: int, args: bytes = b"") -> int:
    return struct.unpack("<i", contract.call(function, args or request(), 4))[0]


def wellbehaved(rt, bundle_dir, **options):
    rt.load_bundle(bundle_dir("wellbehaved"), **options)
    return rt.resolve_guest_contract(rt.find_guest_contract(WELLBEHAVED, 1))


def test_a_legitimate_plugin_works_unchanged(rt, bundle_dir, caplog):
    caplog.set_level(logging.INFO, logger="polyplug_isolated.bundle.wellbehaved")
    plugin = wellbehaved(rt, bundle_dir)
    kept = bundle_dir("wellbehaved") / "kept.txt"
    try:
        assert answer(plugin, 0, request(a=4, b=8)) == 4  # 4 threads, 8 MiB each
        assert answer(plugin, 1, request(text="kept.txt")) == 0  # a file under its bundle directory
        assert kept.read_text() == "kept by wellbehaved\n"
        assert answer(plugin, 2) == 7  # fork + exec of a helper
        assert answer(plugin, 3) == 0  # a TCP socket
    finally:
        kept.unlink(missing_ok=True)
    logged = [r.getMessage() for r in caplog.records if r.name == "polyplug_isolated.bundle.wellbehaved"]
    assert any("wellbehaved is up" in line for line in logged)
    assert any("4 threads finished their work" in line for line in logged)


def test_the_report_says_what_contains_each_worker(rt, bundle_dir):
    plugin = wellbehaved(rt, bundle_dir)
    report = rt.sandbox_report()["wellbehaved"]
    assert report.in_force >= set(DEFAULT_MECHANISMS), str(report)
    assert report.missing == {}
    assert report.mechanisms["files"] == report.mechanisms["network"] == "off"
    # The plugin runs inside the namespaces, a descendant of the process the host started.
    host_side = psutil.Process(plugin.bundle.pid)
    assert report.pid == plugin.bundle.worker_pid
    assert report.pid in {p.pid for p in host_side.children(recursive=True)}
    assert "pid_namespace    on" in str(report)
    assert plugin.bundle.sandbox_report is report


def test_a_worker_that_does_not_report_its_containment_is_refused(bundle_dir):
    """A worker program that skipped contain() (say, a new way of starting
    workers) must not run plugins bare: the load fails closed."""
    from polyplug_isolated._config import RuntimeConfig
    from polyplug_isolated._manifest import parse_manifest
    from polyplug_isolated._proxy import WorkerProxy
    from polyplug_isolated.errors import InitFailed

    proxy = WorkerProxy(parse_manifest(bundle_dir("adder")), RuntimeConfig(), None, print, print)
    proxy._policy = {"contain": True}
    with pytest.raises(InitFailed, match="without reporting its containment"):
        proxy._accept({"t": "ready", "contracts": []})
    proxy.sandbox_report = read_report("adder", 1, {"mechanisms": {}}, proxy._policy)
    proxy._accept({"t": "ready", "contracts": []})  # reported: accepted


def test_no_containment_no_report(bundle_dir):
    with Runtime(containment=False) as rt:
        plugin = wellbehaved(rt, bundle_dir)
        assert answer(plugin, 0, request(a=2, b=1)) == 2
        assert rt.sandbox_report() == {}


# ---- the opt-in Sandbox ----------------------------------------------------------------------


def test_a_sandbox_file_view_allows_the_listed_paths_only(rt, bundle_dir, tmp_path):
    readable, writable, elsewhere = (tmp_path / name for name in ("readable", "writable", "elsewhere"))
    for folder in (readable, writable, elsewhere):
        folder.mkdir()
        (folder / "file").write_text("x")
    plugin = wellbehaved(rt, bundle_dir, sandbox=Sandbox(read_only=[readable], writable=[writable]))
    assert answer(plugin, 4, request(text=str(readable / "file"))) == 0
    assert answer(plugin, 4, request(text=str(writable / "file"))) == 0
    assert answer(plugin, 4, request(text=str(elsewhere / "file"))) == errno.EACCES
    assert answer(plugin, 4, request(text="/etc/hostname")) == errno.EACCES
    assert answer(plugin, 1, request(text="kept.txt")) == errno.EACCES  # its bundle dir is read-only
    assert answer(plugin, 0, request(a=2, b=1)) == 2  # and it still runs
    report = rt.sandbox_report()["wellbehaved"]
    assert report.mechanisms["files"] == "on"
    assert str(readable) in report.paths["read_only"] and str(writable) in report.paths["writable"]


def test_a_sandbox_without_network_or_spawn_refuses_them_with_eperm(rt, bundle_dir):
    plugin = wellbehaved(rt, bundle_dir, sandbox=Sandbox())
    assert answer(plugin, 3) == errno.EPERM  # socket(AF_INET)
    assert answer(plugin, 2) == -errno.EPERM  # fork
    assert answer(plugin, 0, request(a=4, b=1)) == 4  # threads are not processes
    mechanisms = rt.sandbox_report()["wellbehaved"].mechanisms
    assert mechanisms["network"] == mechanisms["spawn"] == "on"
    assert mechanisms["files"] == "off"


def test_a_sandbox_takes_resource_limits(rt, bundle_dir):
    limits = ResourceLimits(open_files=64)
    with pytest.raises(ValueError, match="either"):
        rt.load_bundle(bundle_dir("environ"), limits=limits, sandbox=Sandbox(limits=limits))
    assert rt.bundles == []
    rt.load_bundle(bundle_dir("environ"), sandbox=Sandbox(limits=limits))
    environ = rt.resolve_guest_contract(rt.find_guest_contract(guest_contract_id("test.env", 1), 1))
    assert 0 < struct.unpack("<I", environ.call(2, b"", 4))[0] < 64  # fn 2: how many more files it opens


def test_a_sandbox_path_list_must_not_be_a_single_path():
    with pytest.raises(TypeError, match="sequence of paths"):
        Sandbox(read_only="/usr")
