"""Awaited calls: many in flight from one event loop, no host thread per call.

Against the ``threads`` fixture (``sleep_ms`` answers the worker thread's id,
``count`` a ``__thread`` counter); every test runs real workers under the
leak guard.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest
from conftest import ADD, as_u32, u32, wait_until

from polyplug_isolated import CallTimeout, Runtime, WorkerCrashed, guest_contract_id

THREADS = guest_contract_id("test.threads", 1)
TID, COUNT, SLEEP_MS = range(3)


def resolve(rt, bundle_dir, name="threads", contract_id=THREADS):
    rt.load_bundle(bundle_dir(name))
    return rt.resolve_guest_contract(rt.find_guest_contract(contract_id, 1))


async def ask(contract, fn: int, args: bytes = b"", **options) -> int:
    return as_u32(await contract.acall(fn, args, 4, **options))


def test_a_thousand_concurrent_awaits_run_at_once_on_few_threads(rt, bundle_dir):
    contract = resolve(rt, bundle_dir)
    host_threads: list[int] = []

    async def main() -> list[int]:
        calls = [asyncio.ensure_future(ask(contract, SLEEP_MS, u32(100))) for _ in range(1000)]
        await asyncio.sleep(0)
        host_threads.append(threading.active_count())
        return await asyncio.gather(*calls)

    before = threading.active_count()
    began = time.monotonic()
    tids = asyncio.run(main())
    elapsed = time.monotonic() - began
    assert len(tids) == 1000
    assert 1 < len(set(tids)) <= 64  # the pool's worker threads, one per slot
    assert host_threads[0] <= before + 1  # one reactor thread, not one per call
    # One at a time would take 100 s; 64 at a time about 1.6 s.
    assert elapsed < 25


def test_the_loop_runs_on_while_a_call_is_awaited(rt, bundle_dir):
    contract = resolve(rt, bundle_dir)

    async def main() -> int:
        call = asyncio.ensure_future(ask(contract, SLEEP_MS, u32(500)))
        ticks = 0
        while not call.done():
            await asyncio.sleep(0.01)
            ticks += 1
        await call
        return ticks

    assert asyncio.run(main()) >= 5


def test_a_cancelled_call_s_answer_is_dropped_and_its_slot_reused(bundle_dir):
    with Runtime(slots=1, load_timeout=5.0) as rt:
        contract = resolve(rt, bundle_dir)

        async def main() -> int:
            call = asyncio.ensure_future(ask(contract, SLEEP_MS, u32(300)))
            while contract.bundle.inflight == 0:
                await asyncio.sleep(0.001)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            # The one slot is still busy with the cancelled call: this waits
            # for it, then gets its own answer (the counter), not the tid.
            return await ask(contract, COUNT)

        assert asyncio.run(main()) == 1
        assert contract.bundle.inflight == 0


def test_typed_calls_can_be_awaited(rt, bundle_dir):
    rt.load_bundle(bundle_dir("adder"))
    rt.load_bundle(bundle_dir("kitchen_sink"))
    add, kitchen = rt.contract("test.add"), rt.contract("test.kitchen")

    async def main() -> tuple:
        return (
            await add.aio.add_primitive(2, 3),
            await add.aio.add(add.types.AddArgs(a=4, b=5)),
            await kitchen.aio.concat("ab", "cd"),
            await add.aio.version(),
        )

    assert asyncio.run(main()) == (5, 9, b"abcd", add.version())


def test_raw_awaits_answer_as_sync_calls_do(rt, bundle_dir):
    add = resolve(rt, bundle_dir, "adder", ADD)

    async def main() -> list[bytes]:
        return await asyncio.gather(*(add.acall(1, u32(i) + u32(i), 4) for i in range(200)))

    assert [as_u32(out) for out in asyncio.run(main())] == [2 * i for i in range(200)]


def test_a_crash_fails_every_awaited_call(rt, bundle_dir):
    contract = resolve(rt, bundle_dir)

    async def main() -> list[object]:
        calls = [asyncio.ensure_future(ask(contract, SLEEP_MS, u32(30_000))) for _ in range(8)]
        while contract.bundle.inflight < 8:
            await asyncio.sleep(0.001)
        os.kill(contract.bundle.pid, signal.SIGKILL)
        return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 20)

    outcomes = asyncio.run(main())
    assert all(isinstance(outcome, WorkerCrashed) for outcome in outcomes), outcomes


def test_an_awaited_call_times_out(rt, bundle_dir):
    contract = resolve(rt, bundle_dir)
    with pytest.raises(CallTimeout, match="no answer within 0.3 s"):
        asyncio.run(ask(contract, SLEEP_MS, u32(30_000), timeout=0.3))
    wait_until(lambda: contract.bundle.proxy is None or not contract.bundle.proxy.alive)
