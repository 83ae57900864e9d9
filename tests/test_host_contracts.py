"""Host contracts: a plugin in a worker calls services of the host, typed or as polyplug builds them."""

from __future__ import annotations

import asyncio
import struct
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _host_logger import LOGGER_ID, LoggerState, logger_interface
from polyplug_isolated._channel_ffi import lib

from polyplug_isolated import PluginCallError, Runtime, guest_contract_id
from polyplug_isolated._host_contracts import version_matches

REPORTER = guest_contract_id("reporter.test", 1)


class Logger:
    """host.logger@1 as a plain Python object (typed by reporter's api.toml)."""

    def __init__(self, level: int = 3):
        self.level = level
        self.lines: list[str] = []
        self.threads: set[int] = set()

    def log(self, message: str) -> None:
        self.threads.add(threading.get_ident())
        self.lines.append(message)

    def get_level(self) -> int:
        self.threads.add(threading.get_ident())
        return self.level


def test_a_reporters_log_calls_reach_the_hosts_logger(rt, bundle_dir):
    logger = Logger()
    rt.register_host_contract(logger, api=bundle_dir("reporter") / "api.toml", contract="host.logger")
    rt.load_bundle(bundle_dir("reporter"))
    assert logger.lines == ["reporter ready"]  # logged by polyplug_init, answered on the loading thread
    reporter = rt.contract("reporter.test")
    assert reporter.report(5) == 5
    assert logger.lines == ["reporter ready", "report 1", "report 2", "report 3", "report 4", "report 5"]
    assert reporter.level() == 3
    assert logger.threads == {threading.get_ident()}  # run on the thread that called the plugin


def test_a_host_contract_built_as_polyplugs_factories_build_it(rt, bundle_dir):
    state = LoggerState(level=11)
    interface = logger_interface(state)
    rt.register_host_contract(interface)  # no api=: reporter's own api.toml declares host.logger
    rt.load_bundle(bundle_dir("reporter"))
    reporter = rt.contract("reporter.test")
    assert reporter.report(3) == 3
    assert reporter.level() == 11
    assert state.lines == ["reporter ready", "report 1", "report 2", "report 3"]
    assert state.instances == {interface.user_data}  # create_instance handed out user_data


def test_singleton_instances_are_made_once_per_call_ones_every_time(rt, bundle_dir):
    singleton, per_call = LoggerState(), LoggerState()
    rt.register_host_contract(logger_interface(singleton))
    rt.load_bundle(bundle_dir("reporter"))
    rt.load_bundle(bundle_dir("cross_target"))
    rt.load_bundle(bundle_dir("depender"))  # also gets host.logger in its init
    assert singleton.created == 1
    assert len(singleton.lines) == 2

    with Runtime(load_timeout=5.0) as other:
        other.register_host_contract(logger_interface(per_call, singleton=False))
        other.load_bundle(bundle_dir("reporter"))
        other.load_bundle(bundle_dir("cross_target"))
        other.load_bundle(bundle_dir("depender"))
        assert per_call.created == 2


@pytest.mark.parametrize(
    ("min_version", "matches"),
    [(0, True), (0x10000, True), (0x10002, True), (1, False), (6, False), (0x10003, False), (0x20000, False)],
)
def test_packed_version_rule(min_version, matches):
    """Spec §H: 1.2.0 matches 0, 0x10000, 0x10002; not 1..6, 0x10003, 0x20000."""
    assert version_matches((1, 2, 0), min_version) is matches


def test_a_version_the_plugin_cannot_use_is_missing_to_it(rt, bundle_dir):
    state = LoggerState()
    rt.register_host_contract(logger_interface(state, version=(1, 0, 0)))
    rt.load_bundle(bundle_dir("reporter"))
    assert rt.contract("reporter.test").status() == 0  # reporter asks for 1.0 (0x10000)
    with Runtime(load_timeout=5.0) as other:
        other.register_host_contract(logger_interface(LoggerState(), version=(0, 9, 0)))
        other.load_bundle(bundle_dir("reporter"))
        reporter = other.contract("reporter.test")
        assert reporter.status() == 100
        assert reporter.report(2) == 1100


def test_without_the_host_contract_the_plugin_sees_it_missing(rt, bundle_dir):
    rt.load_bundle(bundle_dir("reporter"))
    reporter = rt.contract("reporter.test")
    assert reporter.status() == 100  # HostContractNotFound, as in-process
    with pytest.raises(PluginCallError) as caught:
        reporter.level()
    assert caught.value.code == 100


def test_an_exception_in_the_host_becomes_the_plugins_abi_error(rt, bundle_dir):
    class Broken(Logger):
        def get_level(self) -> int:
            raise ValueError("the level store is offline")

    rt.register_host_contract(Broken(), api=bundle_dir("reporter") / "api.toml")
    rt.load_bundle(bundle_dir("reporter"))
    with pytest.raises(PluginCallError) as caught:
        rt.contract("reporter.test").level()
    assert caught.value.code == 102  # HostContractCallFailed
    assert "ValueError: the level store is offline" in caught.value.message
    assert rt.contract("reporter.test").report(1) == 1  # the host and the worker carry on


def test_a_wrong_result_type_is_an_abi_error_naming_the_function(rt, bundle_dir):
    class Wrong(Logger):
        def get_level(self):
            return "high"

    rt.register_host_contract(Wrong(), api=bundle_dir("reporter") / "api.toml")
    rt.load_bundle(bundle_dir("reporter"))
    with pytest.raises(PluginCallError) as caught:
        rt.contract("reporter.test").level()
    assert "host.logger.get_level()" in caught.value.message


def test_registration_errors(rt, bundle_dir):
    api = bundle_dir("reporter") / "api.toml"
    rt.register_host_contract(Logger(), api=api)
    with pytest.raises(ValueError, match="duplicate host contract registration"):
        rt.register_host_contract(logger_interface(LoggerState()))
    with pytest.raises(TypeError, match="no method 'get_level'"):
        rt.register_host_contract(type("Half", (), {"log": lambda self, m: None})(), api=api)
    with pytest.raises(TypeError, match="needs the api.toml"):
        rt.register_host_contract(Logger())
    with pytest.raises(LookupError, match="host.nothing"):
        rt.register_host_contract(Logger(), api=api, contract="host.nothing")


def test_calls_back_nest_no_deeper_than_the_limit(rt, bundle_dir):
    """cross_caller -> reporter -> host.logger nests two calls back on this thread."""
    rt.register_host_contract(Logger(level=5), api=bundle_dir("reporter") / "api.toml")
    rt.load_bundle(bundle_dir("reporter"))
    caller = rt.load_bundle(bundle_dir("cross_caller")).contract("cross.caller")
    assert caller.call_u32(REPORTER, 1) == 5
    previous = lib.pp_callback_depth_limit(1)
    try:
        with pytest.raises(PluginCallError) as caught:
            caller.call_u32(REPORTER, 1)
    finally:
        lib.pp_callback_depth_limit(previous)
    assert caught.value.code == 9  # ReentrantCall, from reporter's refused call back
    assert "nest too deep" in caught.value.message
    assert caller.call_u32(REPORTER, 1) == 5


def test_a_blocking_host_contract_stalls_only_its_caller(rt, bundle_dir):
    entered, release = threading.Event(), threading.Event()

    class Slow(Logger):
        def get_level(self) -> int:
            entered.set()
            release.wait(10.0)
            return 1

    rt.register_host_contract(Slow(), api=bundle_dir("reporter") / "api.toml")
    rt.load_bundle(bundle_dir("reporter"))
    reporter = rt.contract("reporter.test")
    results: list[int] = []
    blocked = threading.Thread(target=lambda: results.append(reporter.level()))
    blocked.start()
    try:
        assert entered.wait(10.0)
        assert reporter.status() == 0  # this thread's call runs on its own worker thread meanwhile
        assert reporter.report(1) == 1
    finally:
        release.set()
        blocked.join()
    assert results == [1]


def test_awaited_calls_call_back_too(rt, bundle_dir):
    logger = Logger(level=9)
    rt.register_host_contract(logger, api=bundle_dir("reporter") / "api.toml")
    rt.load_bundle(bundle_dir("reporter"))
    reporter = rt.contract("reporter.test")

    async def main() -> list[int]:
        return await asyncio.gather(*[reporter.aio.level() for _ in range(20)], reporter.aio.report(3))

    results = asyncio.run(asyncio.wait_for(main(), 30.0))
    assert results == [9] * 20 + [3]
    assert logger.lines == ["reporter ready", "report 1", "report 2", "report 3"]


def test_a_worker_cannot_make_the_host_read_outside_its_arguments(rt, bundle_dir):
    """A forged call back (a StringView past the arguments) is refused before the implementation runs."""
    state = LoggerState()
    rt.register_host_contract(logger_interface(state))
    answerer = rt.load_bundle(bundle_dir("reporter")).proxy.answerer
    header = struct.Struct("=IIQQQIIII")
    token = 1  # reporter's polyplug_init got the singleton
    for view in (struct.pack("=QQ", 1 << 40, 4), struct.pack("=QQ", 16, 1 << 20), b"\0" * 8):
        request = header.pack(lib.PP_CB_HOST_CALL, 0, LOGGER_ID, 0, token, 0, len(view), 0, 0) + view
        (code,) = struct.unpack_from("=I", answerer.answer(request))
        assert code != 0
    assert state.lines == ["reporter ready"]  # log() never ran on a forged view
    good = struct.pack("=QQ", 16, 2) + b"ok"
    request = header.pack(lib.PP_CB_HOST_CALL, 0, LOGGER_ID, 0, token, 0, len(good), 0, 0) + good
    assert struct.unpack_from("=I", answerer.answer(request))[0] == 0
    assert state.lines == ["reporter ready", "ok"]
