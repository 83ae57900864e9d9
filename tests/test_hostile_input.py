"""Hostile input from plugins and from the file system: the host stays bounded, prompt and typed.

Each case once broke the runtime (issue 10): output with no newline grew the
host without bound and starved every other worker's crash detection; a plugin
ignoring SIGUSR2 stretched timeouts by ``close_grace``; FIFO, device, huge and
deeply nested manifests blocked or crashed ``load_bundle``; bad ``file`` keys
and EMFILE raised untyped errors; a huge ``out_size`` was allocated before it
was refused; oversized registrations were reported as a crash.
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import signal
import threading
import time
import traceback
import tracemalloc
from pathlib import Path

import pytest
from conftest import ADD, as_u32, pair, u32, wait_until
from hypothesis import given, settings
from hypothesis import strategies as st

from polyplug_isolated import (
    BundleState,
    CallTimeout,
    InitFailed,
    LoaderError,
    ManifestError,
    PayloadTooLarge,
    Runtime,
    WorkerCrashed,
    guest_contract_id,
    parse_api,
)
from polyplug_isolated._monitor import OUTPUT_LINE_CAP, TAIL_LINE_CAP, LineSplitter
from polyplug_isolated._process import OUTPUT_TAIL_LINES

UNRULY = guest_contract_id("test.unruly", 1)
OVERSIZED = guest_contract_id("test.oversized", 1)
SPEW, DEAF_HANG, PING = 0, 1, 2


def unruly(rt: Runtime, bundle_dir):
    rt.load_bundle(bundle_dir("unruly"))
    return rt.resolve_guest_contract(rt.find_guest_contract(UNRULY, 1))


def run_in_thread(target) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def body() -> None:
        try:
            target()
        except BaseException as exc:  # handed to the test
            errors.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, errors


# ---- item 1: output with no newline ---------------------------------------------------


class _SlowSink(logging.Handler):
    """A slow log sink (a disk, a network handler) that notes the length of every output line.

    Slow on purpose: the worker then writes faster than the monitor hands its
    output on, and a monitor that read one worker until it ran dry would never
    turn to the others.
    """

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lengths: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lengths.append(len(record.args[0]))
        time.sleep(0.005)


def test_output_without_newline_is_cut_and_never_starves_other_workers(rt, bundle_dir):
    spewer = unruly(rt, bundle_dir)
    adder = rt.load_bundle(bundle_dir("adder"))
    handler = _SlowSink()
    log = logging.getLogger("polyplug_isolated.bundle.unruly")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        thread, errors = run_in_thread(lambda: spewer.call(SPEW, b"", 4))
        # 8 MiB of one endless line reach the host in bounded pieces...
        wait_until(lambda: sum(handler.lengths) >= 8 << 20, timeout=30)
        assert max(handler.lengths) <= OUTPUT_LINE_CAP
        # ...and, while it keeps spewing, another worker's death is noticed at once.
        os.kill(adder.pid, signal.SIGKILL)
        wait_until(lambda: adder.state is BundleState.CRASHED, timeout=2)
        os.kill(spewer.bundle.pid, signal.SIGKILL)
        thread.join(10)
    finally:
        log.removeHandler(handler)
        log.setLevel(logging.NOTSET)
    assert not thread.is_alive()
    [crash] = errors
    assert isinstance(crash, WorkerCrashed)
    assert (
        0 < len(crash.stderr_tail) <= OUTPUT_TAIL_LINES * (TAIL_LINE_CAP + 4)
    )  # what it keeps is bounded too


@settings(max_examples=300, deadline=None)
@given(
    cap=st.integers(1, 9),
    stream=st.binary(max_size=80).map(lambda b: bytes(b"ab\n"[x % 3] for x in b)),
    cuts=st.lists(st.integers(1, 12), max_size=40),
)
def test_output_lines_are_cut_at_the_cap_however_the_stream_is_read(cap, stream, cuts):
    splitter = LineSplitter(cap)
    lines, start = [], 0
    for size in [*cuts, len(stream)]:
        lines += splitter.feed(stream[start : start + size])
        start += size
    lines += splitter.flush()
    expected = [
        piece
        for line in stream.split(b"\n")
        for piece in ([line[i : i + cap] for i in range(0, len(line), cap)] or [b""])
    ]
    if stream.endswith(b"\n") or not stream:
        expected.pop()  # a final newline ends the last line; it does not start another
    assert lines == expected


# ---- item 8: a plugin ignoring SIGUSR2 ------------------------------------------------------


def test_a_plugin_ignoring_sigusr2_does_not_stretch_a_timeout_by_close_grace(bundle_dir):
    with Runtime(close_grace=30.0, drain_timeout=5.0) as rt:
        deaf = unruly(rt, bundle_dir)
        started = time.monotonic()
        with pytest.raises(CallTimeout):
            deaf.call(DEAF_HANG, b"", 4, timeout=0.5)
        assert time.monotonic() - started < 15.0  # 30 s with close_grace added
        wait_until(lambda: deaf.bundle.state is BundleState.CRASHED)


# ---- item 9: hostile manifests ----------------------------------------------------------------


@pytest.fixture
def bundle_copy(bundle_dir, tmp_path):
    """A copy of the built adder bundle whose manifest.toml the test replaces."""
    target = tmp_path / "adder"
    shutil.copytree(bundle_dir("adder"), target)
    (target / "manifest.toml").unlink()
    return target


def refused(rt: Runtime, bundle: Path, text: str) -> ManifestError:
    """load_bundle raises ManifestError containing ``text``, in a thread that must not block."""
    thread, errors = run_in_thread(lambda: rt.load_bundle(bundle))
    thread.join(20)
    assert not thread.is_alive(), "load_bundle blocked"
    assert len(errors) == 1 and isinstance(errors[0], ManifestError), errors
    assert text in str(errors[0])
    assert rt.bundles == []
    return errors[0]


def test_a_fifo_manifest_is_refused_without_blocking(rt, bundle_copy):
    os.mkfifo(bundle_copy / "manifest.toml")
    refused(rt, bundle_copy, "not a regular file")


def test_a_manifest_linked_to_a_device_is_refused(rt, bundle_copy):
    os.symlink("/dev/zero", bundle_copy / "manifest.toml")
    refused(rt, bundle_copy, "not a regular file")


def test_a_directory_named_manifest_is_refused(rt, bundle_copy):
    (bundle_copy / "manifest.toml").mkdir()
    refused(rt, bundle_copy, "not a regular file")


def test_a_manifest_over_the_size_cap_is_refused_unread(rt, bundle_copy):
    with open(bundle_copy / "manifest.toml", "wb") as manifest:
        manifest.truncate(100 << 20)  # sparse: 100 MB that cost no disk
    refused(rt, bundle_copy, "larger than 1 MiB")


@pytest.mark.parametrize(
    "text",
    [
        "a = " + "[" * 100_000 + "]" * 100_000,
        "a = " + "{b = " * 50_000 + "1" + "}" * 50_000,
        'name = "\ud800"'.encode("utf-8", "surrogatepass").decode("latin-1"),
    ],
    ids=["deep-arrays", "deep-tables", "bad-utf8"],
)
def test_every_parse_error_is_a_manifest_error(rt, bundle_copy, text):
    (bundle_copy / "manifest.toml").write_text(text, encoding="latin-1")
    refused(rt, bundle_copy, "manifest.toml")


def test_an_api_toml_is_read_the_same_careful_way(tmp_path):
    os.mkfifo(tmp_path / "api.toml")
    with pytest.raises(ManifestError, match="not a regular file"):
        parse_api(tmp_path)
    (tmp_path / "api.toml").unlink()
    (tmp_path / "api.toml").write_text("a = " + "[" * 100_000 + "]" * 100_000)
    with pytest.raises(ManifestError, match="nests too deeply"):
        parse_api(tmp_path)


# ---- item 10: typed errors from load_bundle ------------------------------------------------------

ADDER_MANIFEST = """
id = 2548453539782603331
name = "adder"
version = "1.0.0"
loader = "native"
provides = ["test.add"]
file = {file}

[function_count]
"test.add@1" = 4
"""


@pytest.mark.parametrize(
    "file",
    ['"lib\\u0000adder.so"', '"' + "x" * 5000 + '.so"', '"' + "d/" * 3000 + 'x.so"'],
    ids=["nul", "long-name", "long-path"],
)
def test_a_bad_file_key_raises_a_loader_error(rt, bundle_copy, file):
    (bundle_copy / "manifest.toml").write_text(ADDER_MANIFEST.format(file=file))
    with pytest.raises(LoaderError) as caught:
        rt.load_bundle(bundle_copy)
    assert "'adder'" in str(caught.value)
    assert rt.bundles == []


@pytest.mark.parametrize(
    ("where", "options"),
    [("nul-in-path", {}), ("long-path", {}), ("nul-in-env", {"env": {"X": "a\0b"}})],
)
def test_a_bad_path_or_option_raises_a_loader_error(rt, bundle_dir, where, options):
    path = {"nul-in-path": "fixtures/build/ad\0der", "long-path": "x" * 5000}.get(where, bundle_dir("adder"))
    with pytest.raises(LoaderError):
        rt.load_bundle(path, **options)
    assert rt.bundles == [] and rt.live_worker_count() == 0


def test_emfile_at_any_step_of_a_load_raises_a_loader_error_and_leaves_nothing(rt, bundle_dir):
    """With the fd limit raised one by one above what is open, a load fails at each step in turn."""
    adder = bundle_dir("adder")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    fillers = []  # fill the gaps below the highest fd: a limit n above it then allows exactly n more
    while (fd := os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)) < top:
        fillers.append(fd)
    os.close(fd)
    failed_at = set()
    try:
        for spare in range(1, 32):
            resource.setrlimit(resource.RLIMIT_NOFILE, (top + 1 + spare, hard))
            try:
                rt.load_bundle(adder)
            except LoaderError as exc:
                assert "bundle 'adder'" in str(exc) and "ulimit -n" in str(exc), exc
                assert rt.bundles == [] and rt.live_worker_count() == 0
                innermost = traceback.extract_tb(exc.__cause__.__traceback__)[-1]
                failed_at.add((innermost.filename, innermost.lineno))
            else:
                break
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for fd in fillers:
            os.close(fd)
    assert len(failed_at) >= 4, failed_at  # the socket pair, each of Popen's pipes, ...
    assert rt.bundles and rt.bundles[0].state is BundleState.READY
    assert as_u32(rt.resolve_guest_contract(rt.find_guest_contract(ADD, 1)).call(1, pair(2, 3), 4)) == 5


# ---- item 11: a huge out_size -------------------------------------------------------------------------


@pytest.mark.parametrize("out_size", [1 << 30, 1 << 62])
def test_a_huge_out_size_is_refused_before_anything_is_allocated(rt, bundle_dir, out_size):
    rt.load_bundle(bundle_dir("adder"))
    add = rt.resolve_guest_contract(rt.find_guest_contract(ADD, 1))
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLarge):
            add.call(1, pair(1, 2), out_size)
        with pytest.raises(PayloadTooLarge):
            add.call_packed(1, pair(1, 2) * 3, 8, out_size)
        with pytest.raises(PayloadTooLarge):
            add.call_many(1, [pair(1, 2)] * 3, out_size)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    assert as_u32(add.call(1, pair(1, 2), 4)) == 3


# ---- item 12: oversized registrations ------------------------------------------------------------------


def test_twenty_thousand_contracts_load_and_answer(rt, bundle_dir):
    bundle = rt.load_bundle(bundle_dir("oversized"), env={"OVERSIZED_CONTRACTS": "20000"})
    assert len(bundle.contracts) == 20_001
    last = rt.resolve_guest_contract(rt.find_guest_contract(20_000, 1))
    assert last.name == "test.many.19999"
    assert as_u32(last.call(0, u32(41), 4)) == 42
    own = rt.resolve_guest_contract(rt.find_guest_contract(OVERSIZED, 1))
    assert as_u32(own.call(0, u32(1), 4)) == 2


def test_a_one_mib_contract_name_loads(rt, bundle_dir):
    bundle = rt.load_bundle(bundle_dir("oversized"), env={"OVERSIZED_NAME_BYTES": str(1 << 20)})
    names = sorted(len(c.name) for c in bundle.contracts)
    assert names == [len("test.oversized"), 1 << 20]
    huge = rt.resolve_guest_contract(rt.find_guest_contract(0xB16, 1))
    assert as_u32(huge.call(0, u32(7), 4)) == 8


def test_registrations_beyond_the_handshake_cap_are_refused_not_called_a_crash(rt, bundle_dir):
    with pytest.raises(InitFailed) as caught:
        rt.load_bundle(bundle_dir("oversized"), env={"OVERSIZED_NAME_BYTES": str(80 << 20)})
    message = str(caught.value)
    assert "registrations" in message and "crash" not in message and "SIGKILL" not in message
    assert rt.bundles == []
