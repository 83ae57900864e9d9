"""Calls back answered by routes (_cbroutes.c): host contracts called from C, calls between bundles
forwarded by the waiting host thread without entering Python, and what happens at their edges.

Each test counts what the routes answered (``_cbroutes.answered()``): the first call of a kind goes
the Python way and leaves a route; the ones after it must take the route and answer the same.
"""

from __future__ import annotations

import queue
import struct

import pytest
from polyplug_isolated._channel_ffi import ffi, lib

from polyplug_isolated import (
    AbiErrorCode,
    BundleEventKind,
    BundleState,
    Fault,
    PluginCallError,
    RestartPolicy,
    Runtime,
    WorkerCrashed,
    _callbacks,
    _cbroutes,
    guest_contract_id,
)

PYTHON, FORWARDED = 1, 2  # positions in _cbroutes.answered()
PP_CB_UNHANDLED = -2  # the hook's "ask Python" (_channel.h)


class Logger:
    """host.logger@1: get_level answers a number (a route calls it from C)."""

    def __init__(self, level: int = 7):
        self.level = level
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)

    def get_level(self) -> int:
        if self.level < 0:
            raise RuntimeError("no level today")
        return self.level


def answered(position: int) -> int:
    return _cbroutes.answered()[position]


def test_a_host_contract_of_numbers_is_answered_by_its_route(rt, bundle_dir):
    logger = Logger()
    rt.register_host_contract(logger, api=bundle_dir("reporter") / "api.toml")
    rt.load_bundle(bundle_dir("reporter"))
    reporter = rt.contract("reporter.test")
    before = answered(PYTHON)
    assert [reporter.level() for _ in range(5)] == [7] * 5
    assert answered(PYTHON) - before == 4  # the first went the Python way and left the route
    logger.level = 9
    assert reporter.level() == 9  # the route calls the method each time: nothing is cached
    logger.level = -1  # an exception: the plugin's AbiError, as on the Python way
    with pytest.raises(PluginCallError) as caught:
        reporter.level()
    assert "RuntimeError: no level today" in caught.value.message


def test_a_plain_call_into_another_bundle_is_forwarded(rt, bundle_dir):
    rt.load_bundle(bundle_dir("cross_target"))
    rt.load_bundle(bundle_dir("cross_caller"))
    caller = rt.contract("cross.caller")
    before = answered(FORWARDED)
    assert [caller.add_default(i, 3) for i in range(6)] == [i + 3 for i in range(6)]
    assert answered(FORWARDED) - before == 5
    assert _cbroutes.held()[0] >= 1


def test_a_forwarded_call_carries_the_callees_error(rt, bundle_dir):
    """The callee answers an AbiError: through the route exactly as the Python way."""
    rt.load_bundle(bundle_dir("cross_target"), faults=[Fault.error(300, "add refused").every(1)])
    rt.load_bundle(bundle_dir("cross_caller"))
    caller = rt.contract("cross.caller")
    with pytest.raises(PluginCallError) as python_way:
        caller.add_default(1, 1)  # leaves the route
    before = answered(FORWARDED)
    with pytest.raises(PluginCallError) as routed:
        caller.add_default(1, 1)
    assert answered(FORWARDED) - before == 1
    assert (routed.value.code, routed.value.message) == (python_way.value.code, python_way.value.message)
    assert routed.value.code == 300


def test_forwarded_calls_follow_a_reload_of_the_callee(rt, bundle_dir):
    rt.load_bundle(bundle_dir("cross_target"))
    rt.load_bundle(bundle_dir("cross_caller"))
    caller = rt.contract("cross.caller")
    assert [caller.add_default(2, 3) for _ in range(3)] == [5] * 3
    rt.reload_bundle(bundle_dir("cross_target_v2"))  # its add answers a + b + 1000
    before = answered(FORWARDED)
    assert [caller.add_default(2, 3) for _ in range(3)] == [1005] * 3
    assert answered(FORWARDED) - before == 2  # a new route, to the new worker


def test_a_crash_of_the_callee_during_a_forwarded_call(bundle_dir):
    """B crashes while T forwards A's call: A's plugin gets an AbiError, the host sees B's
    CRASHED event and its restart policy, and the calls after the restart are forwarded again."""
    events: queue.Queue = queue.Queue()
    policy = RestartPolicy(max_restarts=1, backoff=0.01, window=60.0)
    with Runtime(on_event=events.put, restart=policy, load_timeout=10.0) as rt:
        target = rt.load_bundle(bundle_dir("cross_target"), faults=[Fault.crash().on_call(3)])
        rt.load_bundle(bundle_dir("cross_caller"))
        caller = rt.contract("cross.caller")
        assert [caller.add_default(2, 3) for _ in range(2)] == [5, 5]
        before = answered(FORWARDED)
        with pytest.raises(PluginCallError) as caught:
            caller.add_default(2, 3)  # forwarded; cross_target dies of SIGSEGV serving it
        assert answered(FORWARDED) - before == 1
        assert caught.value.code == 1
        assert "SIGSEGV" in caught.value.message
        seen = [events.get(timeout=10.0) for _ in range(2)]
        assert [e.kind for e in seen] == [BundleEventKind.CRASHED, BundleEventKind.RESTARTING]
        assert {e.bundle_name for e in seen} == {"cross_target"}
        while events.get(timeout=10.0).kind is not BundleEventKind.RESTARTED:
            pass
        assert target.state is BundleState.READY
        before = answered(FORWARDED)
        assert [caller.add_default(2, 3) for _ in range(2)] == [5, 5]
        assert answered(FORWARDED) - before == 1
    assert _cbroutes.held() == (0, 0)  # the runtime's routes went with it


def test_routes_go_with_their_runtime(bundle_dir):
    with Runtime(load_timeout=10.0) as rt:
        rt.register_host_contract(Logger(), api=bundle_dir("reporter") / "api.toml")
        rt.load_bundle(bundle_dir("reporter"))
        rt.load_bundle(bundle_dir("cross_target"))
        rt.load_bundle(bundle_dir("cross_caller"))
        reporter, caller = rt.contract("reporter.test"), rt.contract("cross.caller")
        assert [reporter.level() for _ in range(2)] == [7, 7]
        assert [caller.add_default(1, 2) for _ in range(2)] == [3, 3]
        assert _cbroutes.held()[0] >= 2
        rt.unload_bundle("cross_caller")  # its worker's routes go with it
        rt.unload_bundle("cross_target")
    assert _cbroutes.held() == (0, 0)


def test_the_routes_of_a_worker_that_died_are_dropped(bundle_dir):
    """A caller that crashes (and is not restarted) leaves no route holding the callee's channel."""
    events: queue.Queue = queue.Queue()
    with Runtime(on_event=events.put, restart=RestartPolicy(max_restarts=0), load_timeout=10.0) as rt:
        rt.load_bundle(bundle_dir("cross_target"))
        rt.load_bundle(bundle_dir("cross_caller"), faults=[Fault.crash().on_call(3)])
        caller = rt.contract("cross.caller")
        assert [caller.add_default(2, 3) for _ in range(2)] == [5, 5]
        assert _cbroutes.held()[0] == 1
        with pytest.raises(WorkerCrashed):
            caller.add_default(2, 3)
        while events.get(timeout=10.0).kind is not BundleEventKind.CRASHED:
            pass
        assert _cbroutes.held() == (0, 0)


def test_a_request_that_does_not_fit_its_route_is_left_to_python(rt, bundle_dir):
    """The hook itself, handed forged requests for a route that exists: only an exact fit is
    forwarded; a wrong length, args size or flags is PP_CB_UNHANDLED (Python judges it)."""
    rt.load_bundle(bundle_dir("cross_target"))
    caller_bundle = rt.load_bundle(bundle_dir("cross_caller"))
    caller = rt.contract("cross.caller")
    before = answered(FORWARDED)
    assert [caller.add_default(2, 3) for _ in range(2)] == [5, 5]
    assert answered(FORWARDED) - before == 1  # the route exists
    owner = caller_bundle.proxy.answerer.id
    hook = ffi.cast("int64_t (*)(uint64_t, const uint8_t *, uint32_t, uint8_t *, uint32_t)", _callbacks._hook)
    routed = forwarded_request(rt)
    header = struct.Struct("=IIQQQIIII")
    fields = list(header.unpack_from(routed))

    def ask(request: bytes, cap: int = 256) -> tuple[int, bytes]:
        reply = ffi.new("uint8_t[]", cap)
        n = hook(owner, request, len(request), reply, cap)
        return n, ffi.buffer(reply, max(n, 0))[:]

    n, reply = ask(routed)  # the exact request: forwarded, 2 + 3 comes back
    assert n == 32 and struct.unpack_from("=I", reply, 24)[0] == 5
    args = struct.pack("<II", 2, 3)
    forged = [
        header.pack(*fields[:6], len(args) + 8, *fields[7:]) + args,  # args_len past the request
        header.pack(*fields[:6], 4, *fields[7:]) + args[:4],  # shorter than the record
        header.pack(*fields[:6], 16, *fields[7:]) + args + bytes(8),  # longer than the record padded
        header.pack(*fields[:8], lib.PP_CB_OUT_NULL) + args,  # other flags than the route's
        routed[:40],  # shorter than a request header
    ]
    before = answered(FORWARDED)
    for request in forged:
        assert ask(request)[0] == PP_CB_UNHANDLED
    assert ask(routed, cap=24)[0] == PP_CB_UNHANDLED  # no room for the reply: nothing is sent
    assert answered(FORWARDED) == before


def forwarded_request(rt) -> bytes:
    """The request cross_caller's add_default(2, 3) sends: cross.target's id and handle, function 0
    (add), the default instance, the two u32."""
    target = guest_contract_id("cross.target", 1)
    handle = rt.find_guest_contract(target, 1)
    args = struct.pack("<II", 2, 3)
    key = (lib.PP_CB_GUEST_CALL, 0, target, handle.index | handle.generation << 32, 0)
    return struct.pack("=IIQQQIIII", *key, 0, len(args), 4, 0) + args


def test_python_answers_a_request_unlike_the_one_it_cached_as_a_new_request(rt, bundle_dir):
    """Python keeps a quick answer for a request it has seen; one that differs in its args length
    or flags is a different request (a hostile worker can send it) and gets the full checks."""
    rt.load_bundle(bundle_dir("cross_target"))
    caller_bundle = rt.load_bundle(bundle_dir("cross_caller"))
    caller = rt.contract("cross.caller")
    assert [caller.add_default(2, 3) for _ in range(2)] == [5, 5]  # the quick answer exists
    answerer = caller_bundle.proxy.answerer
    header = struct.Struct("=IIQQQIIII")
    reply = struct.Struct("=IIIIQ")  # code, message length, out length, tail length, value
    routed = forwarded_request(rt)
    fields = list(header.unpack_from(routed))
    args = struct.pack("<II", 2, 3)
    code, _, out_len, _, _ = reply.unpack_from(answerer.answer(routed))
    assert (code, out_len) == (0, 4)
    for wrong in (
        header.pack(*fields[:6], len(args) + 8, *fields[7:]) + args,  # args_len past the request
        header.pack(*fields[:6], 4, *fields[7:]) + args[:4],  # shorter than the record
    ):
        code, *_ = reply.unpack_from(answerer.answer(wrong))
        assert code != 0, wrong
    code, _, out_len, _, _ = reply.unpack_from(
        answerer.answer(header.pack(*fields[:8], lib.PP_CB_OUT_NULL) + args)
    )
    # out == NULL reaches the other bundle's plugin, which refuses it, as in-process.
    assert (code, out_len) == (AbiErrorCode.INVALID_POINTER, 0)
