"""In-process baselines, each run as ``python -m bench._inproc`` in its own subprocess.

A JSON request on stdin, one JSON answer line on stdout. Modes:

- ``cffi-adder``: the worker's own C dispatch (``_serve_ffi``) loaded into
  this process: ``ppw_invoke`` calls ``functions[1]`` (add_primitive) of the
  adder bundle through one cffi API-mode call, checks the AbiError code and
  returns the 4 out bytes as ``bytes``, as ``GuestContract.call`` does. The
  out and error buffers are allocated once and reused. Two honest ways to
  turn the out buffer into bytes are timed and the faster one is used.
- ``cffi-payload``: the same for the payload bundle's ``echo`` at each size.
- ``polyplug-adder``: the real polyplug 0.1.3 runtime with its native
  loader loads adder; the interface it resolves is called through ctypes
  (``functions[1]`` as a CFUNCTYPE, an instance made by the runtime's
  ``create_guest_instance``), checking the error code and returning bytes.

``_serve_ffi`` keeps one bundle per process in global state, hence one
subprocess per mode; the bench process itself never imports it.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import struct
import sys
from pathlib import Path

from . import _measure

ARGS = struct.pack("<II", 2, 3)
EXPECTED = struct.pack("<I", 5)


def _load_serve_ffi(bundle: Path, name: str):
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


def _adder_variants(ffi, lib) -> dict:
    invoke = lib.ppw_invoke
    err = ffi.new("AbiError *")
    out = ffi.new("uint8_t[4]")
    chars = ffi.new("char[4]")
    buffer = ffi.buffer
    unpack = ffi.unpack

    def via_buffer_slice() -> bytes:
        invoke(0, 1, ARGS, out, err)
        if err.code:
            raise RuntimeError(f"add_primitive failed: {err.code}")
        return buffer(out, 4)[:]

    def via_unpack() -> bytes:
        invoke(0, 1, ARGS, chars, err)
        if err.code:
            raise RuntimeError(f"add_primitive failed: {err.code}")
        return unpack(chars, 4)

    return {"ffi.buffer(out, 4)[:]": via_buffer_slice, "ffi.unpack(char_out, 4)": via_unpack}


def _cffi_adder(request: dict) -> dict:
    ffi, lib = _load_serve_ffi(Path(request["bundle"]), "adder")
    variants = _adder_variants(ffi, lib)
    for fn in variants.values():
        if fn() != EXPECTED:
            raise SystemExit("bench._inproc: the in-process add_primitive(2, 3) is not 5")
    # Pick the faster honest variant: best of three short throughput runs each.
    trial = max(2000, request["tput_n"] // 20)
    speeds = {name: max(_measure.throughput(fn, trial) for _ in range(3)) for name, fn in variants.items()}
    chosen = max(speeds, key=speeds.get)
    fn = variants[chosen]
    samples = _measure.time_each(fn, request["n"], request["warmup"])
    cases = {"inproc": _case(samples, _measure.throughput(fn, request["tput_n"]))}

    # Diagnostics: the bare cffi call (no error check, no bytes), and the
    # timing loop around a call that does nothing.
    bare = _bare_call(lib.ppw_invoke, ffi)
    samples = _measure.time_each(bare, request["n"], request["warmup"])
    cases["bare"] = _case(samples, _measure.throughput(bare, request["tput_n"]))
    nothing = _nothing
    samples = _measure.time_each(nothing, request["n"], request["warmup"])
    cases["timer"] = _case(samples, _measure.throughput(nothing, request["tput_n"]))
    return {"cases": cases, "variant": chosen, "variant_calls_per_s": speeds}


def _bare_call(invoke, ffi):
    out = ffi.new("uint8_t[4]")
    err = ffi.new("AbiError *")

    def bare() -> None:
        invoke(0, 1, ARGS, out, err)

    return bare


def _nothing() -> None:
    return None


def _cffi_payload(request: dict) -> dict:
    ffi, lib = _load_serve_ffi(Path(request["bundle"]), "payload")
    invoke = lib.ppw_invoke
    err = ffi.new("AbiError *")
    unpack = ffi.unpack
    cases = {}
    for size, n in request["sizes"]:
        out = ffi.new("char[]", max(size, 1))
        args = struct.pack("<Q", size) + bytes(range(256)) * (size // 256) + bytes(range(size % 256))

        def echo(args=args, out=out, size=size) -> bytes:
            invoke(0, 0, args, out, err)
            if err.code:
                raise RuntimeError(f"echo failed: {err.code}")
            return unpack(out, size)

        if echo() != args[8:]:
            raise SystemExit(f"bench._inproc: in-process echo of {size} bytes came back different")
        samples = _measure.time_each(echo, n, max(10, n // 10))
        cases[str(size)] = _case(samples, _measure.throughput(echo, n))
        gc.collect()
    return {"cases": cases}


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"bench._inproc: package {name!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _polyplug_adder(request: dict) -> dict:
    if not os.environ.get("POLYPLUG_LIB"):
        # polyplug looks its runtime library up by name unless told where the wheel put it.
        arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64"}[os.uname().machine.lower()]
        os.environ["POLYPLUG_LIB"] = str(
            _package_dir("polyplug") / "_native" / f"linux-{arch}" / "libpolyplug.so"
        )
    import ctypes

    from polyplug import Runtime
    from polyplug_abi.abi import AbiError, GuestContractInstance, GuestContractInterface, HostApi
    from polyplug_loaders_native import register_native_loader

    from polyplug_isolated import guest_contract_id

    rt = Runtime()
    register_native_loader(rt)
    rt.load_bundle(request["bundle"])
    handle = rt.find_guest_contract(guest_contract_id("test.add", 1), 1)
    iface_ptr = rt.resolve_guest_contract(handle)
    iface = GuestContractInterface.from_address(iface_ptr)
    host = HostApi.from_address(rt.host)
    instance = GuestContractInstance()
    host.create_guest_instance(rt.host, iface_ptr, None, ctypes.byref(instance))
    native = iface.dispatch.native
    functions = (ctypes.c_void_p * native.function_count).from_address(native.functions)
    native_fn = ctypes.CFUNCTYPE(
        None, GuestContractInstance, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(AbiError)
    )
    add_primitive = native_fn(functions[1])
    out = ctypes.create_string_buffer(4)
    err = AbiError()
    err_ref = ctypes.byref(err)

    def call() -> bytes:
        add_primitive(instance, ARGS, out, err_ref)
        if err.code:
            raise RuntimeError(f"add_primitive failed: {err.code}")
        return out.raw

    if call() != EXPECTED:
        raise SystemExit("bench._inproc: polyplug's add_primitive(2, 3) is not 5")
    samples = _measure.time_each(call, request["n"], request["warmup"])
    cases = {"polyplug": _case(samples, _measure.throughput(call, request["tput_n"]))}
    host.destroy_guest_instance(rt.host, iface_ptr, instance)
    return {"cases": cases, "backend": "ctypes CFUNCTYPE over the resolved GuestContractInterface"}


def _case(samples, calls_per_s: float) -> dict:
    return {"hist": _measure.encode(_measure.histogram_of(samples)), "calls_per_s": calls_per_s}


MODES = {"cffi-adder": _cffi_adder, "cffi-payload": _cffi_payload, "polyplug-adder": _polyplug_adder}


def main() -> None:
    request = json.load(sys.stdin)
    _measure.BUDGET_S = request["budget_s"]
    gc.disable()
    answer = MODES[request["mode"]](request)
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
