"""The fast call paths (issue 15): raw outs up to 64 bytes, typed calls compiled per
function, fn.many() from tuples, zero-copy buffers() and call_into(): values,
errors, bounds, reloads, crashes and hostile workers."""

from __future__ import annotations

import array
import inspect
import random
import struct
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import CRASH, as_u32, u32, wait_until

from polyplug_isolated import (
    BundleState,
    CallError,
    CallTimeout,
    PayloadTooLarge,
    PluginCallError,
    ProtocolError,
    RestartPolicy,
    Runtime,
    WorkerCrashed,
    guest_contract_id,
)
from polyplug_isolated._fastcall import Function, Raw

PAYLOAD = guest_contract_id("test.payload", 1)
HOSTILE = guest_contract_id("test.hostile", 1)
ECHO = 0
U64 = (1 << 64) - 1


def contract(rt, bundle_dir, name, contract_id):
    rt.load_bundle(bundle_dir(name))
    return rt.resolve_guest_contract(rt.find_guest_contract(contract_id, 1))


def typed(rt, bundle_dir, name, contract_name):
    rt.load_bundle(bundle_dir(name))
    return rt.contract(contract_name, api=bundle_dir(name) / "api.toml")


def blob(data: bytes) -> bytes:
    return struct.pack("<Q", len(data)) + data


# ---- raw calls: outs up to 64 bytes in one C call -----------------------------------------


@pytest.mark.parametrize("size", [0, 1, 7, 8, 31, 32, 33, 63, 64, 65, 200])
def test_raw_outs_of_every_small_size_come_back_whole(rt, bundle_dir, size):
    payload = contract(rt, bundle_dir, "payload", PAYLOAD)
    assert type(payload.call) is Raw
    data = random.Random(size).randbytes(size)
    for _ in range(3):  # the first call takes a lease on the general path, the rest are fast
        assert payload.call(ECHO, blob(data), size) == data
    assert payload.call(ECHO, memoryview(blob(data)), size) == data  # any buffer for args


def test_raw_fast_path_errors_are_the_general_paths(rt, bundle_dir):
    crasher = contract(rt, bundle_dir, "crasher", CRASH)
    assert as_u32(crasher.call(4, u32(1), 4)) == 2
    with pytest.raises(PluginCallError, match="failing with code 300") as info:
        crasher.call(3, u32(300), 4)
    assert info.value.code == 300
    with pytest.raises(PluginCallError, match="FunctionNotAvailable"):
        crasher.call(99, b"", 4)
    with pytest.raises(PluginCallError, match="no such function"):
        crasher.call(-1, b"", 4)
    with pytest.raises(TypeError, match="args must be bytes"):
        crasher.call(4, "text", 4)
    with pytest.raises(ValueError, match="out_size must be a non-negative int"):
        crasher.call(4, u32(1), -1)
    assert crasher.call(4, u32(1), 4, timeout=5.0) == u32(2)  # keywords take the general path
    assert str(inspect.signature(crasher.call)) == str(inspect.signature(type(crasher).call.__get__(crasher)))
    assert crasher.call.__doc__ == type(crasher).call.__doc__


def test_a_crash_on_the_fast_path_is_worker_crashed_and_the_restart_is_called_again(bundle_dir):
    with Runtime(restart=RestartPolicy(max_restarts=2, backoff=0.0)) as rt:
        crashed_and_restarted(rt, bundle_dir)


def crashed_and_restarted(rt, bundle_dir):
    crasher = contract(rt, bundle_dir, "crasher", CRASH)
    ping = rt.contract("test.crash", api=bundle_dir("crasher") / "api.toml").ping
    assert type(ping) is Function and ping(1) == 2
    with pytest.raises(WorkerCrashed):
        crasher.call(0, b"", 4)
    wait_until(lambda: crasher.bundle.state is BundleState.READY)
    assert as_u32(crasher.call(4, u32(5), 4)) == 6  # rerouted to the new worker
    assert ping(7) == 8  # and so is the compiled function
    assert ping(8) == 9
    # both fast paths are bound to the new worker: the next calls take them again
    assert crasher.call.proxy is ping.proxy is crasher.bundle.proxy


# ---- typed calls of scalars, compiled ------------------------------------------------------


@pytest.fixture
def shapes(rt, bundle_dir):
    shapes = typed(rt, bundle_dir, "shapes", "test.shapes")
    assert shapes.add(0, 0) == 0  # takes the thread's lease: the calls that follow are all fast
    return shapes


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & U64
    return h


def stamp_of(x: int, y: int, scale: float, label: bytes, data: bytes) -> int:
    return (fnv1a64(label + data) + x + y + int(scale)) & U64


def test_a_struct_a_string_view_and_a_buffer_in_one_c_call(shapes):
    assert type(shapes.stamp) is Function
    point = shapes.types.Point(3, 4, 5.0)
    assert shapes.stamp(point, "label", b"data") == stamp_of(3, 4, 5.0, b"label", b"data")
    assert shapes.stamp(point, b"raw", b"") == stamp_of(3, 4, 5.0, b"raw", b"")
    assert shapes.stamp(point, None, None) == stamp_of(3, 4, 5.0, b"", b"")  # NULL views
    assert shapes.stamp(point, "h\u00e9", b"x" * 5000) == stamp_of(3, 4, 5.0, "h\u00e9".encode(), b"x" * 5000)
    # what the C path does not take goes the general way, with the same answer
    assert shapes.stamp({"x": 3, "y": 4, "scale": 5.0}, "label", bytearray(b"data")) == stamp_of(
        3, 4, 5.0, b"label", b"data"
    )
    with pytest.raises(ValueError, match=r"parameter 'at', field 'x': .* out of range for i32"):
        shapes.stamp(shapes.types.Point(1 << 31, 0, 0.0), "a", b"")
    with pytest.raises(TypeError, match="parameter 'data': must be bytes"):
        shapes.stamp(point, "a", "text")
    with pytest.raises(ValueError, match="parameter 'label': is not valid UTF-8"):
        shapes.stamp(point, "\udc80", b"")
    assert shapes.stamp.many([(point, "a", b"b"), (point, "c", b"d")]) == [
        stamp_of(3, 4, 5.0, b"a", b"b"),
        stamp_of(3, 4, 5.0, b"c", b"d"),
    ]


def test_scalar_functions_are_compiled_and_answer_python_values(shapes):
    assert type(shapes.add) is Function and type(shapes.mul) is Function
    assert shapes.add(2, 3) == 5
    assert shapes.add(0xFFFFFFFF, 2) == 1  # u32 wraps in the plugin
    assert shapes.mul(1 << 40, 3) == 3 << 40
    assert shapes.mul(U64, U64) == 1  # (2**64 - 1)**2 mod 2**64
    assert shapes.add(a=4, b=5) == 9 and shapes.add(4, b=6) == 10
    assert str(inspect.signature(shapes.add)) == "(a: int, b: int) -> int"  # Python types, not IDL names
    assert shapes.add.__name__ == "add" and "function 0" in shapes.add.__doc__


def test_values_the_c_path_cannot_take_go_the_general_way(shapes, kitchen):
    assert shapes.add(True, 1) == 2  # a bool is an int subclass: packed by the general path
    assert kitchen.divide(7, -2) == -3
    assert kitchen.magic() == 0xFEEDFACECAFEBEEF
    assert kitchen.nothing() is None


@pytest.fixture
def kitchen(rt, bundle_dir):
    kitchen = typed(rt, bundle_dir, "kitchen_sink", "test.kitchen")
    assert kitchen.divide(4, 2) == 2  # takes the thread's lease
    return kitchen


@pytest.mark.parametrize(
    ("args", "error", "text"),
    [
        ((-1, 2), ValueError, "parameter 'a': -1 is out of range for u32"),
        ((1, 1 << 32), ValueError, "parameter 'b': 4294967296 is out of range for u32"),
        ((1, 1 << 70), ValueError, "parameter 'b': .* is out of range for u32"),
        (("1", 2), TypeError, "parameter 'a': must be an int"),
        ((1.0, 2), TypeError, "parameter 'a': must be an int"),
        ((1,), TypeError, "missing required argument"),
        ((1, 2, 3), TypeError, "takes 2 argument"),
    ],
)
def test_bad_values_are_refused_before_anything_is_sent(shapes, args, error, text):
    with pytest.raises(error, match=text):
        shapes.add(*args)
    assert shapes.add(1, 2) == 3


def test_u64_bounds_on_the_compiled_path(shapes):
    assert shapes.mul(U64, 1) == U64
    with pytest.raises(ValueError, match="out of range for u64"):
        shapes.mul(U64 + 1, 1)
    with pytest.raises(ValueError, match="out of range for u64"):
        shapes.mul(-1, 1)


def test_a_plugin_error_on_the_compiled_path(kitchen):
    assert type(kitchen.divide) is Function
    with pytest.raises(PluginCallError, match=r"test.kitchen.*code 256") as info:
        kitchen.divide(1, 0)
    assert info.value.code == 256
    assert kitchen.divide(9, 3) == 3


def test_a_reload_rebinds_the_compiled_functions(rt, bundle_dir, shapes):
    assert shapes.add(1, 1) == 2
    old = shapes.contract.bundle.pid
    rt.reload_bundle(bundle_dir("shapes"))
    assert shapes.contract.bundle.pid != old
    assert [shapes.add(i, 1) for i in range(3)] == [1, 2, 3]
    assert shapes.add.proxy is shapes.contract.bundle.proxy


# ---- fn.many(): batches from tuples, packed in C -------------------------------------------


def test_many_answers_every_tuple_in_order_across_batches(bundle_dir):
    with Runtime(payload_capacity=4096) as rt:  # ~340 calls a batch: several hand-offs
        shapes = typed(rt, bundle_dir, "shapes", "test.shapes")
        pairs = [(i, 3 * i) for i in range(5000)]
        assert shapes.add.many(pairs) == [4 * i for i in range(5000)]
        assert shapes.mul.many(iter([(U64, 2), (3, 5)])) == [U64 - 1, 15]
        assert shapes.add.many([]) == []


def test_many_refuses_a_bad_tuple_before_sending_any(shapes, kitchen):
    with pytest.raises(ValueError, match="parameter 'b': -1 is out of range"):
        shapes.add.many([(1, 2), (3, -1)])
    with pytest.raises(TypeError, match="each item must be a tuple"):
        shapes.add.many([(1, 2), [3, 4]])
    assert kitchen.magic.many([(), ()]) == [0xFEEDFACECAFEBEEF] * 2  # no parameters


def test_many_stops_at_a_plugin_error_and_names_the_call(bundle_dir):
    with Runtime(payload_capacity=1024) as rt:  # 84 calls a batch: the error is in the second
        kitchen = typed(rt, bundle_dir, "kitchen_sink", "test.kitchen")
        assert kitchen.divide(4, 2) == 2  # takes the thread's lease
        calls = [(2 * i, 2) for i in range(200)]
        calls[150] = (1, 0)
        with pytest.raises(PluginCallError, match="code 256") as info:
            kitchen.divide.many(calls)
        assert info.value.index == 150
        assert kitchen.divide.many(calls[:150]) == list(range(150))


# ---- struct results, built in C ----------------------------------------------------------------


def test_a_struct_of_scalars_comes_back_from_one_c_call(shapes):
    assert type(shapes.digest) is Function
    assert shapes.digest(3) == shapes.types.Digest(*[3 * k for k in range(1, 9)])
    assert shapes.digest.many([(1,), (U64,)]) == [
        shapes.types.Digest(*[k for k in range(1, 9)]),
        shapes.types.Digest(*[(U64 * k) & U64 for k in range(1, 9)]),
    ]


def test_every_scalar_width_of_a_struct_result_is_read_at_its_offset(kitchen):
    scalars = kitchen.types.Scalars
    assert type(kitchen.echo_scalars) is Function and type(kitchen.echo_point) is Function
    assert type(kitchen.echo_record) is not Function  # enum fields: the general path
    edges = [
        scalars(255, 65535, (1 << 32) - 1, U64, -128, -32768, -(1 << 31), -(1 << 63), 1.5, -2.25, True),
        scalars(1, 2, 3, 4, -1, -2, -3, -4, -0.0, float("inf"), False),
    ]
    for value in edges:
        fast = kitchen.echo_scalars(value)
        assert fast == kitchen.echo_scalars(v=value) == value  # keywords: the general path, same answer
        assert [type(getattr(fast, name)) for name in ("u64", "i8", "f32", "flag")] == [int, int, float, bool]
    assert kitchen.echo_scalars.many([(value,) for value in edges]) == edges
    assert kitchen.echo_point(kitchen.types.Point(0.5, -1.25)) == kitchen.types.Point(0.5, -1.25)


# ---- call_many over bytes, packed in C -------------------------------------------------------


def test_call_many_over_bytes_answers_every_call_in_order_across_batches(bundle_dir):
    with Runtime(payload_capacity=4096) as rt:  # ~340 calls a batch: several hand-offs
        shapes = typed(rt, bundle_dir, "shapes", "test.shapes").contract
        records = [struct.pack("<II", i, 3 * i) for i in range(5000)]
        expected = [struct.pack("<I", 4 * i) for i in range(5000)]
        assert shapes.call_many(0, records, 4) == expected  # the thread's first call: takes its lease
        assert shapes.call_many(0, records, 4) == expected
        assert shapes.call_many(0, iter(records[:3]), 4) == expected[:3]
        assert shapes.call_many(0, [bytearray(r) for r in records[:3]], 4) == expected[:3]  # general path
        digests = shapes.call_many(2, [struct.pack("<Q", 3)] * 2, 64)
        assert digests == [struct.pack("<8Q", *[3 * k for k in range(1, 9)])] * 2
        with pytest.raises(ValueError, match="every args must have the same length"):
            shapes.call_many(0, [records[0], b"12"], 4)
        with pytest.raises(PluginCallError, match="no such function"):
            shapes.call_many(9, records[:2], 4)


def test_call_many_over_bytes_stops_at_a_plugin_error_and_names_the_call(bundle_dir):
    with Runtime(payload_capacity=1024) as rt:  # 84 calls a batch: the error is in the second
        kitchen = typed(rt, bundle_dir, "kitchen_sink", "test.kitchen")
        assert kitchen.divide(4, 2) == 2  # takes the thread's lease: call_many goes the C way
        divide = kitchen.contract
        index = next(i for i, name in divide.function_names.items() if name == "divide")
        calls = [struct.pack("<ii", 2 * i, 2) for i in range(200)]
        calls[150] = struct.pack("<ii", 1, 0)
        with pytest.raises(PluginCallError, match="code 256") as info:
            divide.call_many(index, calls, 4)
        assert info.value.index == 150
        assert divide.call_many(index, calls[:150], 4) == [struct.pack("<i", i) for i in range(150)]


def test_call_many_over_bytes_after_a_crash_is_worker_crashed_and_then_works_again(bundle_dir):
    with Runtime(restart=RestartPolicy(max_restarts=1, backoff=0.0)) as rt:
        crasher = contract(rt, bundle_dir, "crasher", CRASH)
        assert crasher.call_many(4, [u32(1), u32(2)], 4) == [u32(2), u32(3)]
        with pytest.raises(WorkerCrashed):
            crasher.call_many(0, [b"\0\0\0\0"], 4)
        wait_until(lambda: crasher.bundle.state is BundleState.READY)
        assert crasher.call_many(4, [u32(5)] * 3, 4) == [u32(6)] * 3


# ---- zero-copy: buffers() and call_into() -----------------------------------------------------


@pytest.mark.parametrize("size", [0, 5, 16, 17, 40, 4096, 70_000, 1 << 20])
def test_buffers_echo_in_place(rt, bundle_dir, size):
    payload = contract(rt, bundle_dir, "payload", PAYLOAD)
    data = random.Random(size).randbytes(size)
    for _ in range(2):
        with payload.buffers(ECHO, 8 + size, size) as call:
            assert (len(call.args), len(call.out)) == (8 + size, size)
            call.args[:8] = struct.pack("<Q", size)
            call.args[8:] = data
            assert call() == data
            assert call.out == data
            call.args[8:] = bytes(size)  # a second call in the same block
            assert call() == bytes(size)


def test_buffers_out_is_zeroed_for_a_blocks_first_call_and_kept_after(rt, bundle_dir):
    payload = contract(rt, bundle_dir, "payload", PAYLOAD)
    with payload.buffers(ECHO, 8 + 4096, 8192) as call:
        call.out[:] = b"\xee" * 8192  # what the caller left there before the first call
        call.args[:8] = (4096).to_bytes(8, "little")
        call.args[8:] = b"a" * 4096
        assert bytes(call()) == b"a" * 4096 + bytes(4096)  # zeroed, then the answer
        call.out[4096:] = b"\xee" * 4096
        call.args[8:] = b"b" * 4096
        assert bytes(call()) == b"b" * 4096 + b"\xee" * 4096  # no pass over what echo leaves
        call.args[:8] = (16).to_bytes(8, "little")
        assert bytes(call()[:24]) == b"b" * 24  # echo wrote 16 bytes over the last answer


def echo_in_block(payload, fill: bytes, out_size: int = 8192, leave: bytes = b"") -> bytes:
    """One block: echo 4096 ``fill`` bytes into an out of ``out_size``; returns the answer, then
    writes ``leave`` over the out's tail (what the block leaves there for the next one)."""
    with payload.buffers(ECHO, 8 + 4096, out_size) as call:
        call.args[:8] = (4096).to_bytes(8, "little")
        call.args[8:] = fill * 4096
        answer = bytes(call())
        if leave:
            call.out[4096:] = leave * (out_size - 4096)
        return answer


def test_a_block_goes_on_from_the_threads_last_block_of_the_same_sizes(rt, bundle_dir):
    """The out holds only what this thread's last block left: no zeroing pass over it."""
    payload = contract(rt, bundle_dir, "payload", PAYLOAD)
    echo_in_block(payload, b"a", leave=b"\xee")
    assert echo_in_block(payload, b"b") == b"b" * 4096 + b"\xee" * 4096


def test_a_block_starts_over_after_anyone_else_used_the_arena(rt, bundle_dir):
    """Another thread's block, a big call that went through the arena, or other sizes: the out
    may hold someone else's bytes, and the next block's first call zeroes it."""
    payload = contract(rt, bundle_dir, "payload", PAYLOAD)
    zeroed = lambda fill: fill * 4096 + bytes(4096)  # noqa: E731
    echo_in_block(payload, b"a", leave=b"\xee")
    with ThreadPoolExecutor(1) as other:
        assert other.submit(echo_in_block, payload, b"c", leave=b"\xcc").result() == zeroed(b"c")
    assert echo_in_block(payload, b"b", leave=b"\xee") == zeroed(b"b")
    big = b"\x77" * 100_000  # past the slot's payload: it goes through the arena (over the out)
    assert payload.call(ECHO, blob(big), len(big)) == big
    assert echo_in_block(payload, b"d", leave=b"\xee") == zeroed(b"d")
    assert echo_in_block(payload, b"e", out_size=8200)[4096:] == bytes(4104)


def test_buffer_views_are_released_on_exit(rt, bundle_dir):
    payload = contract(rt, bundle_dir, "payload", PAYLOAD)
    with payload.buffers(ECHO, 16, 8) as call:
        call.args[:] = blob(b"12345678")
        out = call()
    with pytest.raises(ValueError, match="released"):
        bytes(out)
    with pytest.raises(ValueError, match="released"):
        call.args[0] = 1
    with pytest.raises(ValueError, match="inside the with block"):
        call()


def test_a_view_kept_past_the_block_is_an_error_and_the_arena_is_free_again(rt, bundle_dir):
    payload = contract(rt, bundle_dir, "payload", PAYLOAD)
    kept = []
    with (
        pytest.raises(BufferError, match="still alive after the with block"),
        payload.buffers(ECHO, 16, 8) as call,
    ):
        call.args[:] = blob(b"abcdefgh")
        call()
        kept.append(call.out.cast("Q"))  # a view made from the out view
    assert kept[0][0] == int.from_bytes(b"abcdefgh", "little")  # still mapped: no crash, only stale
    big = bytes(100_000)
    assert payload.call(ECHO, blob(big), len(big)) == big  # the arena was given back


def test_buffers_bounds(rt, bundle_dir):
    payload = contract(rt, bundle_dir, "payload", PAYLOAD)
    with pytest.raises(PayloadTooLarge, match="arena"), payload.buffers(ECHO, 8, 64 << 20):
        pass
    with pytest.raises(ValueError, match="args_size must be a non-negative int"):
        payload.buffers(ECHO, -1, 8)
    with pytest.raises(PluginCallError, match="no such function"), payload.buffers(7, 8, 8):
        pass


def test_call_into_writes_the_answer_in_the_callers_buffer(rt, bundle_dir):
    payload = contract(rt, bundle_dir, "payload", PAYLOAD)
    words = array.array("Q", range(1000))
    out = array.array("Q", bytes(8000))
    assert payload.call_into(ECHO, blob(words.tobytes()), out) is None
    assert out == words
    target = bytearray(10)
    payload.call_into(ECHO, blob(b"0123456789"), memoryview(target))
    assert target == b"0123456789"
    with pytest.raises(TypeError, match="writable"):
        payload.call_into(ECHO, blob(b"ab"), b"xx")


# ---- a hostile worker against the fast paths ----------------------------------------------------

HOSTILE_ANSWERS = [  # the hostile fixture's function, an out size, what the ProtocolError says
    (0, 64, "overwrote the segment header"),
    (1, 40, "fields out of range"),
    (2, 8, "forged or repeated"),
]


@pytest.mark.parametrize(("function", "out_size", "text"), HOSTILE_ANSWERS)
def test_a_hostile_worker_on_the_fast_path_is_caught(bundle_dir, function, out_size, text):
    with Runtime(slots=1, call_timeout=10.0) as rt:
        hostile = contract(rt, bundle_dir, "hostile", HOSTILE)
        assert as_u32(hostile.call(5, u32(1), 4)) == 2  # the fast path is set up
        with pytest.raises(ProtocolError, match=text):
            hostile.call(function, b"", out_size)


@pytest.mark.parametrize(("function", "out_size", "text"), HOSTILE_ANSWERS)
def test_a_hostile_worker_under_call_many_in_c_is_caught(bundle_dir, function, out_size, text):
    with Runtime(slots=1, call_timeout=10.0) as rt:
        hostile = contract(rt, bundle_dir, "hostile", HOSTILE)
        assert hostile.call_many(5, [u32(1)], 4) == [u32(2)]  # the thread's lease is taken
        with pytest.raises(ProtocolError, match=text):
            hostile.call_many(function, [b"\0" * 8], out_size)


def test_a_worker_scribbling_the_arena_under_buffers_cannot_hurt_the_host(bundle_dir):
    with Runtime(call_timeout=10.0) as rt:
        hostile = contract(rt, bundle_dir, "hostile", HOSTILE)
        shapes = typed(rt, bundle_dir, "shapes", "test.shapes")
        with pytest.raises(ProtocolError, match="overwrote"), hostile.buffers(0, 64, 1 << 20) as call:
            call()
        with pytest.raises(ValueError, match="released"):
            bytes(call.out)
        assert shapes.add(1, 2) == 3  # the host and other workers go on


def test_calls_needing_the_arena_inside_a_buffers_block_are_refused_not_fatal(rt, bundle_dir):
    payload = contract(rt, bundle_dir, "payload", PAYLOAD)
    big = bytes(100_000)
    with payload.buffers(ECHO, 16, 8) as call:
        call.args[:] = blob(b"abcdefgh")
        with pytest.raises(CallError, match="holds the worker's arena"), payload.buffers(ECHO, 16, 8):
            pass
        with pytest.raises(CallError, match="holds the worker's arena"):
            payload.call(ECHO, blob(big), len(big))
        assert payload.call(ECHO, blob(b"small"), 5) == b"small"  # a call in its slot is fine
        assert call() == b"abcdefgh"  # the block still holds the arena
    assert payload.call(ECHO, blob(big), len(big)) == big


def test_compiled_functions_from_many_threads_at_once(shapes):
    answers_right: list[bool] = []

    def caller(k: int) -> None:
        got = [shapes.add(k, i) for i in range(2000)] + shapes.add.many([(k, i) for i in range(2000)])
        answers_right.append(got == [k + i for i in range(2000)] * 2)

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert answers_right == [True] * 6


def test_a_compiled_call_past_its_timeout_is_call_timeout_and_the_worker_is_killed(bundle_dir):
    with Runtime(call_timeout=0.3) as rt:
        slow = typed(rt, bundle_dir, "slow", "test.slow")
        assert slow.ping(1) == 2 and slow.ping(2) == 3  # the second one on the fast path
        assert type(slow.sleep_ms) is Function
        with pytest.raises(CallTimeout, match=r"no answer within 0.3 s"):
            slow.sleep_ms(5000)
        wait_until(lambda: slow.contract.bundle.state is BundleState.CRASHED)
