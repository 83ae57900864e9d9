"""The shared-memory data plane: sizes, batches, wait modes, many threads at once."""

from __future__ import annotations

import array
import random
import struct
import threading

import pytest
from conftest import ADD, CRASH, as_u32, pair, u32

from polyplug_isolated import PayloadTooLarge, PluginCallError, Runtime, guest_contract_id

PAYLOAD = guest_contract_id("test.payload", 1)


def contract(rt, bundle_dir, name, contract_id):
    rt.load_bundle(bundle_dir(name))
    return rt.resolve_guest_contract(rt.find_guest_contract(contract_id, 1))


def blob(data: bytes) -> bytes:
    return struct.pack("<Q", len(data)) + data


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


# Sizes around every boundary: inline args (24 B with the 8-byte length
# prefix), inline out (40 B), the slot payload (16 KiB here), the arena.
SIZES = [0, 1, 16, 17, 32, 40, 41, 4096, 8184, 8185, 16 * 1024, 100_000, 1 << 20]


@pytest.fixture(scope="module")
def small_slots():
    return {"payload_capacity": 16 * 1024, "arena_capacity": 3 << 20}


@pytest.mark.parametrize("size", SIZES)
def test_payloads_of_every_size_round_trip(bundle_dir, small_slots, size):
    data = random.Random(size).randbytes(size)
    with Runtime(**small_slots) as rt:
        payload = contract(rt, bundle_dir, "payload", PAYLOAD)
        assert payload.call(0, blob(data), size) == data
        assert struct.unpack("<Q", payload.call(1, blob(data), 8))[0] == fnv1a64(data)


def test_a_call_beyond_the_arena_is_refused_and_the_worker_lives_on(bundle_dir, small_slots):
    with Runtime(**small_slots) as rt:
        payload = contract(rt, bundle_dir, "payload", PAYLOAD)
        data = bytes(3 << 19)
        with pytest.raises(PayloadTooLarge, match="3145728-byte arena"):
            payload.call(0, blob(data), len(data))
        assert payload.call(0, blob(b"ok"), 2) == b"ok"


def test_threads_sharing_the_arena_take_turns(bundle_dir, small_slots):
    with Runtime(**small_slots) as rt:
        payload = contract(rt, bundle_dir, "payload", PAYLOAD)
        failures = []

        def big_echoes(seed: int):
            rng = random.Random(seed)
            for _ in range(20):
                data = rng.randbytes(rng.randrange(20_000, 300_000))
                if payload.call(0, blob(data), len(data)) != data:
                    failures.append(seed)

        threads = [threading.Thread(target=big_echoes, args=(seed,)) for seed in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert failures == []


def test_call_many_answers_in_order(rt, bundle_dir):
    add = contract(rt, bundle_dir, "adder", ADD)
    pairs = [(i, 3 * i) for i in range(10_000)]
    outs = add.call_many(1, [pair(a, b) for a, b in pairs], 4)
    assert [as_u32(out) for out in outs] == [a + b for a, b in pairs]
    assert add.call_many(1, [], 4) == []


def test_call_packed_takes_any_buffer_and_spans_batches(bundle_dir):
    with Runtime(payload_capacity=4096) as rt:  # ~340 calls per batch: many batches
        add = contract(rt, bundle_dir, "adder", ADD)
        packed = array.array("I", [v for i in range(5000) for v in (i, 7)])
        out = add.call_packed(0, packed, 8, 4)
        assert list(array.array("I", out)) == [i + 7 for i in range(5000)]
        assert add.call_packed(0, memoryview(packed.tobytes()), 8, 4) == out


def test_batch_arguments_are_checked(rt, bundle_dir):
    add = contract(rt, bundle_dir, "adder", ADD)
    with pytest.raises(ValueError, match="same length"):
        add.call_many(1, [pair(1, 2), b"\x00"], 4)
    with pytest.raises(ValueError, match="whole number of 8-byte records"):
        add.call_packed(1, bytes(12), 8, 4)


def test_a_plugin_error_stops_the_batch_and_names_the_call(rt, bundle_dir):
    crasher = contract(rt, bundle_dir, "crasher", CRASH)
    codes = [0, 0, 0, 300, 0]
    with pytest.raises(PluginCallError) as caught:
        crasher.call_many(3, [u32(code) for code in codes], 4)
    assert (caught.value.index, caught.value.code) == (3, 300)
    assert as_u32(crasher.call(4, u32(1), 4)) == 2  # the worker carries on


@pytest.mark.parametrize("wait", ["auto", "spin", "block"])
def test_every_wait_mode_answers_right(bundle_dir, wait):
    with Runtime(wait=wait) as rt:
        add = contract(rt, bundle_dir, "adder", ADD)
        for i in range(2000):
            assert as_u32(add.call(1, pair(i, i), 4)) == 2 * i


def test_many_threads_never_get_each_others_answers(bundle_dir):
    """8 threads x 100k calls on one worker, every answer checked."""
    calls = 100_000
    with Runtime(slots=8) as rt:
        add = contract(rt, bundle_dir, "adder", ADD)
        wrong: list[tuple[int, int]] = []

        def caller(thread_id: int):
            base = thread_id << 24
            for i in range(calls):
                if as_u32(add.call(1, pair(base, i), 4)) != base + i:
                    wrong.append((thread_id, i))
                    return

        threads = [threading.Thread(target=caller, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        assert wrong == []
        calls_seen, failures = add.bundle.proxy.channel.counters
        assert (calls_seen, failures) == (8 * calls, 0)


def test_more_threads_than_slots_wait_for_a_free_slot(bundle_dir):
    with Runtime(slots=2) as rt:
        add = contract(rt, bundle_dir, "adder", ADD)
        results: dict[int, list[int]] = {}

        def caller(thread_id: int):
            results[thread_id] = [as_u32(add.call(1, pair(thread_id, i), 4)) for i in range(2000)]

        threads = [threading.Thread(target=caller, args=(t,)) for t in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert results == {t: [t + i for i in range(2000)] for t in range(6)}
