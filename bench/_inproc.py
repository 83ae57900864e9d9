"""In-process baselines, each run as ``python -m bench._inproc`` in its own subprocess.

The first JSON line on stdin names the mode; the answers are JSON lines on stdout.

- ``serve-cffi``: the worker's own C dispatch (``_serve_ffi``) is loaded into
  this process with the adder bundle, and the C shim (``shim.c``, same
  contract as the isolated ``pp_call_small``) calls it. Then, for each request
  line ``{"side", "n", "warmup"}``, one round of ``n`` timed calls of that side
  is answered with its p50 and histogram, so that the bench can alternate these
  rounds with the isolated side's. Sides:

  - ``inproc``: ``ShimContract.call(1, args, 4)``: the Python shape of
    ``GuestContract.call`` over the shim (one cffi call, error check and
    decode in C, ``int.to_bytes``);
  - ``inproc.raw``: the shim's cffi call alone (an int), against the isolated
    raw ``pp_call_small``;
  - ``timer``: the timing loop around a call that does nothing.

- ``serve-polyplug``: the real polyplug 0.1.3 runtime with its native loader
  loads adder; side ``polyplug`` is its Python host call path
  (``PolyplugContract.call``: the Runtime resolves the handle on every call,
  the interface's function is called through ctypes with polyplug_abi's
  types, error checked, bytes out); side ``polyplug.ctypes`` is the resolved
  function alone through ctypes (diagnostic).
- ``cffi-payload`` (one answer): the payload bundle's ``echo`` at each size.

``_serve_ffi`` keeps one bundle per process in global state, hence one
subprocess per mode; the bench process itself never imports it.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import importlib.util
import json
import os
import statistics
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import _measure

ARGS = struct.pack("<II", 2, 3)
EXPECTED = struct.pack("<I", 5)
ADD_PRIMITIVE = 1
_DEFAULT = object()


def _load_serve_ffi(bundle: Path, name: str) -> tuple[Any, Any]:
    from polyplug_isolated.worker._serve_ffi import ffi, lib

    from polyplug_isolated import bundle_id

    result = ffi.new("ppw_load_result *")
    directory = str(bundle).encode()
    library = str(bundle / f"lib{name}.so").encode()
    lib.ppw_load(library, bundle_id(name), directory, len(directory), result)
    if result.kind != lib.PPW_LOAD_OK:
        message = ffi.unpack(result.message, result.message_len).decode("utf-8", "replace")
        raise SystemExit(f"bench._inproc: ppw_load({name}) failed: kind {result.kind}: {message}")
    return ffi, lib


class ShimContract:
    """``GuestContract.call``'s hot path with the shim where the channel is: same shape, same C contract."""

    def __init__(self, call_small: Callable[..., int], conn: Any, index: int):
        self._binding = (None, conn, index)
        self._call_small = call_small
        self._timeout = -1.0

    def call(self, fn_index: int, args: bytes, out_size: int, *, timeout: Any = _DEFAULT) -> bytes:
        if timeout is _DEFAULT:
            _, conn, index = self._binding
            try:
                value = self._call_small(conn, index, fn_index, args, len(args), out_size, self._timeout)
            except (TypeError, OverflowError):
                pass
            else:
                if value >= 0:
                    return value.to_bytes(out_size, "little")
                raise RuntimeError(f"the shim answered status {-value}")
        raise NotImplementedError("the baseline has only the hot path")


def _cffi_sides(request: dict[str, Any]) -> dict[str, Callable[[], object]]:
    from . import _shim

    wffi, wlib = _load_serve_ffi(Path(request["bundle"]), "adder")
    shim = _shim.build()
    shim.lib.shim_set_invoke(int(wffi.cast("uintptr_t", wffi.addressof(wlib, "ppw_invoke"))))
    call_small = shim.lib.shim_call_small
    contract = ShimContract(call_small, shim.ffi.NULL, 0)
    sides: dict[str, Callable[[], object]] = {
        "inproc": functools.partial(contract.call, ADD_PRIMITIVE, ARGS, 4),
        "inproc.raw": functools.partial(
            call_small, shim.ffi.NULL, 0, ADD_PRIMITIVE, ARGS, len(ARGS), 4, -1.0
        ),
        "timer": _nothing,
    }
    if sides["inproc"]() != EXPECTED or sides["inproc.raw"]() != 5:
        raise SystemExit("bench._inproc: the in-process add_primitive(2, 3) is not 5")
    return sides


def _nothing() -> None:
    return None


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"bench._inproc: package {name!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


class PolyplugContract:
    """polyplug 0.1.3's Python host call path, shaped as a generated caller would be.

    Each call asks the Runtime to resolve the contract's handle (after a
    reload it names a new interface, as the isolated contract follows its
    bundle's worker); the interface's native functions and an instance are
    bound once per interface; the function is called through ctypes with
    polyplug_abi's types; a non-Ok AbiError raises; the out comes back as bytes.
    """

    def __init__(self, runtime: Any, handle: Any):
        from polyplug_abi.abi import AbiError, GuestContractInstance, HostApi

        self._runtime = runtime
        self._handle = handle
        self._host = HostApi.from_address(runtime.host)
        self._bound: dict[int, tuple[Any, list[Any]]] = {}
        self._abi_error = AbiError
        self._native_fn = ctypes.CFUNCTYPE(
            None, GuestContractInstance, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(AbiError)
        )

    def _bind(self, iface_ptr: int) -> tuple[Any, list[Any]]:
        from polyplug_abi.abi import GuestContractInstance, GuestContractInterface

        iface = GuestContractInterface.from_address(iface_ptr)
        instance = GuestContractInstance()
        self._host.create_guest_instance(self._runtime.host, iface_ptr, None, ctypes.byref(instance))
        native = iface.dispatch.native
        table = (ctypes.c_void_p * native.function_count).from_address(native.functions)
        bound = self._bound[iface_ptr] = (instance, [self._native_fn(f) for f in table])
        return bound

    def call(self, fn_index: int, args: bytes, out_size: int) -> bytes:
        iface_ptr = self._runtime.resolve_guest_contract(self._handle)
        instance, functions = self._bound.get(iface_ptr) or self._bind(iface_ptr)
        out = ctypes.create_string_buffer(out_size)
        err = self._abi_error()
        functions[fn_index](instance, args, out, ctypes.byref(err))
        if err.code:
            raise RuntimeError(f"polyplug call failed: AbiError {err.code}")
        return out.raw


def _polyplug_sides(request: dict[str, Any]) -> dict[str, Callable[[], object]]:
    if not os.environ.get("POLYPLUG_LIB"):
        # polyplug looks its runtime library up by name unless told where the wheel put it.
        arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64"}[os.uname().machine.lower()]
        os.environ["POLYPLUG_LIB"] = str(
            _package_dir("polyplug") / "_native" / f"linux-{arch}" / "libpolyplug.so"
        )
    from polyplug import Runtime
    from polyplug_loaders_native import register_native_loader

    from polyplug_isolated import guest_contract_id

    rt = Runtime()
    register_native_loader(rt)
    rt.load_bundle(request["bundle"])
    handle = rt.find_guest_contract(guest_contract_id("test.add", 1), 1)
    contract = PolyplugContract(rt, handle)
    direct_instance, functions = contract._bind(rt.resolve_guest_contract(handle))
    add_primitive = functions[ADD_PRIMITIVE]
    out = ctypes.create_string_buffer(4)
    err = contract._abi_error()
    err_ref = ctypes.byref(err)

    def direct() -> bytes:
        add_primitive(direct_instance, ARGS, out, err_ref)
        if err.code:
            raise RuntimeError(f"add_primitive failed: {err.code}")
        return out.raw

    sides: dict[str, Callable[[], object]] = {
        "polyplug": functools.partial(contract.call, ADD_PRIMITIVE, ARGS, 4),
        "polyplug.ctypes": direct,
    }
    if any(side() != EXPECTED for side in sides.values()):
        raise SystemExit("bench._inproc: polyplug's add_primitive(2, 3) is not 5")
    sides["_keep"] = lambda: (rt, contract)  # alive as long as the sides
    return sides


def _serve(sides: dict[str, Callable[[], object]]) -> None:
    """Answers one round per request line until stdin closes."""
    _reply({"ready": sorted(name for name in sides if not name.startswith("_"))})
    for line in sys.stdin:
        request = json.loads(line)
        fn = sides[request["side"]]
        if request.get("kind") == "throughput":
            _reply({"calls_per_s": _measure.throughput(fn, request["n"])})
            continue
        samples = _measure.time_each(fn, request["n"], request["warmup"])
        _reply(
            {
                "p50_ns": float(statistics.median(samples)),
                "hist": _measure.encode(_measure.histogram_of(samples)),
            }
        )


def _cffi_payload(request: dict[str, Any]) -> dict[str, Any]:
    ffi, lib = _load_serve_ffi(Path(request["bundle"]), "payload")
    invoke = lib.ppw_invoke
    err = ffi.new("AbiError *")
    unpack = ffi.unpack
    cases = {}
    for size, n in request["sizes"]:
        out = ffi.new("char[]", max(size, 1))
        args = struct.pack("<Q", size) + bytes(range(256)) * (size // 256) + bytes(range(size % 256))

        def echo(args: bytes = args, out: Any = out, size: int = size) -> bytes:
            invoke(0, 0, args, out, err)
            if err.code:
                raise RuntimeError(f"echo failed: {err.code}")
            data: bytes = unpack(out, size)
            return data

        if echo() != args[8:]:
            raise SystemExit(f"bench._inproc: in-process echo of {size} bytes came back different")
        samples = _measure.time_each(echo, n, max(10, n // 10))
        cases[str(size)] = {
            "hist": _measure.encode(_measure.histogram_of(samples)),
            "calls_per_s": _measure.throughput(echo, n),
        }
        gc.collect()
    return {"cases": cases}


def _reply(answer: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()


SERVERS = {"serve-cffi": _cffi_sides, "serve-polyplug": _polyplug_sides}


def main() -> None:
    request = json.loads(sys.stdin.readline())
    _measure.BUDGET_S = request["budget_s"]
    gc.disable()
    if request["mode"] in SERVERS:
        _serve(SERVERS[request["mode"]](request))
    else:
        _reply(_cffi_payload(request))


if __name__ == "__main__":
    main()
