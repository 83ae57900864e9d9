"""Calls between bundles: a plugin finds, resolves and calls another bundle's contract from its worker."""

from __future__ import annotations

import queue
import struct

import pytest
from conftest import CRASH

from polyplug_isolated import (
    BundleEventKind,
    BundleState,
    PluginCallError,
    RestartPolicy,
    Runtime,
    guest_contract_id,
)

REPORTER = guest_contract_id("reporter.test", 1)
PAYLOAD = guest_contract_id("test.payload", 1)


def caller_and_target(rt, bundle_dir):
    rt.load_bundle(bundle_dir("cross_target"))
    rt.load_bundle(bundle_dir("cross_caller"))
    return rt.contract("cross.caller")


def test_a_bundle_calling_another_bundles_add_gets_5(rt, bundle_dir):
    caller = caller_and_target(rt, bundle_dir)
    assert caller.add_via(2, 3) == 5  # find, resolve, create_guest_instance, add, destroy
    assert caller.add_default(2, 3) == 5  # on the default (NULL) instance
    assert caller.bundle_count() == 2  # list_bundles sees every bundle of the runtime


def test_calls_between_bundles_follow_a_reload(rt, bundle_dir):
    caller = caller_and_target(rt, bundle_dir)
    assert caller.add_via(2, 3) == 5
    rt.reload_bundle(bundle_dir("cross_target_v2"))
    assert caller.add_via(2, 3) == 1005
    assert caller.call_u32(guest_contract_id("cross.target", 1), 1) == 2


def test_a_missing_contract_is_not_found(rt, bundle_dir):
    caller = caller_and_target(rt, bundle_dir)
    with pytest.raises(PluginCallError) as caught:
        caller.call_u32(0x0123456789ABCDEF, 0)
    assert caught.value.code == 4


def test_a_crash_of_the_callee_is_the_callers_abi_error(bundle_dir):
    events: queue.Queue = queue.Queue()
    policy = RestartPolicy(max_restarts=1, backoff=0.01, window=60.0)
    with Runtime(on_event=events.put, restart=policy, load_timeout=10.0) as rt:
        caller = caller_and_target(rt, bundle_dir)
        crasher = rt.load_bundle(bundle_dir("crasher"))
        with pytest.raises(PluginCallError) as caught:
            caller.call_u32(CRASH, 0)  # crasher's segfault(), called from cross_caller's worker
        assert caught.value.code == 1
        assert "SIGSEGV" in caught.value.message
        seen = [events.get(timeout=10.0) for _ in range(2)]
        assert [e.kind for e in seen] == [BundleEventKind.CRASHED, BundleEventKind.RESTARTING]
        assert {e.bundle_name for e in seen} == {"crasher"}
        assert caller.add_via(2, 3) == 5  # the caller's worker lives on
        while events.get(timeout=10.0).kind is not BundleEventKind.RESTARTED:
            pass
        assert crasher.state is BundleState.READY
        ping = rt.resolve_guest_contract(rt.find_guest_contract(CRASH, 1))
        assert ping.call(4, struct.pack("<I", 1), 4) == struct.pack("<I", 2)


def test_a_nested_chain_bundle_host_bundle(rt, bundle_dir):
    """A (cross_caller) calls B (reporter), B calls a host contract, which calls C (cross_target)."""
    rt.load_bundle(bundle_dir("cross_target"))

    class Logger:
        def log(self, message: str) -> None:
            pass

        def get_level(self) -> int:
            return rt.contract("cross.target").add({"a": 40, "b": 2})

    rt.register_host_contract(Logger(), api=bundle_dir("reporter") / "api.toml")
    rt.load_bundle(bundle_dir("reporter"))
    rt.load_bundle(bundle_dir("cross_caller"))
    assert rt.contract("cross.caller").call_u32(REPORTER, 1) == 42


def test_a_call_back_into_the_waiting_bundle_is_refused_not_deadlocked(rt, bundle_dir):
    class Logger:
        def log(self, message: str) -> None:
            pass

        def get_level(self) -> int:
            return rt.contract("reporter.test").status()  # reporter waits for this very answer

    rt.register_host_contract(Logger(), api=bundle_dir("reporter") / "api.toml")
    rt.load_bundle(bundle_dir("reporter"))
    with pytest.raises(PluginCallError) as caught:
        rt.contract("reporter.test").level()
    assert caught.value.code == 102
    assert "ReentrantCall" in caught.value.message


def test_a_callee_without_an_api_toml_is_a_clear_error(rt, bundle_dir):
    caller = caller_and_target(rt, bundle_dir)
    rt.load_bundle(bundle_dir("payload"))
    with pytest.raises(PluginCallError) as caught:
        caller.call_u32(PAYLOAD, 0)
    assert "no api.toml describes this function" in caught.value.message


def test_errors_propagate_across_bundles(rt, bundle_dir):
    rt.load_bundle(bundle_dir("cross_target"))
    rt.load_bundle(bundle_dir("error_chain"))
    errors = rt.contract("error.test")
    target = guest_contract_id("cross.target", 1)
    inner = errors.error_chain_propagate(target, 0)  # add(NULL args) in cross_target's worker
    assert (inner.code, inner.message) == (8, "cross_target: args is null")
    assert errors.error_chain_propagate(target, 9).code == 6
    assert errors.error_chain_propagate(0x0123456789ABCDEF, 0).code == 4
    returned = errors.error_return_with_message()
    assert (returned.code, returned.message) == (1, "test error from plugin")
    with pytest.raises(PluginCallError) as caught:
        errors.panic()
    assert (caught.value.code, caught.value.message) == (3, "plugin panicked")


def test_struct_arguments_and_instances_cross(rt, bundle_dir):
    """add_via passes an AddArgs record and a created instance (a marked heap object there)."""
    caller = caller_and_target(rt, bundle_dir)
    for a, b in [(0, 0), (0xFFFFFFFF, 1), (123456, 654321)]:
        assert caller.add_via(a, b) == (a + b) & 0xFFFFFFFF
