"""Reference host: answers calls through the real polyplug runtime (PyPI ``polyplug`` 0.1.3).

Run as ``python tests/_polyplug_reference.py`` with a JSON request on stdin::

    {"bundle": "/path/to/built/bundle",
     "calls": [{"contract_id": int, "min_version": int, "fn": int,
                "args_hex": "...", "out_size": int, "string_view": bool?}, ...]}

It loads the bundle into the real runtime (through its native loader), and for
each call finds and resolves the contract, creates an instance through the
runtime's ``HostApi.create_guest_instance`` and calls ``functions[fn]`` of the
interface's native dispatch table with cffi: ``args`` is NULL when empty and
``out`` is NULL when ``out_size`` is 0, as our worker does. It prints one JSON
line::

    {"results": [{"out_hex": str, "code": int, "message": str,
                  "string": str?}, ...],
     "contracts": {"<contract_id>": {"function_count": int, "version": [M, m, p],
                                     "instance": [data, contract_id]}}}

or ``{"load_error": str, "found_after_error": {"<contract_id>": bool}}`` when
the runtime refuses the bundle. With ``"string_view": true`` the result also
holds the UTF-8 text the returned StringView points at (the pointer itself is
meaningless outside this process).

This runs in a subprocess because a crashing plugin takes the whole process,
and the real runtime with it, down.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

_CDEF = """
typedef struct { const uint8_t *ptr; size_t len; } StringView;
typedef struct { uint32_t code; StringView message; } AbiError;
typedef struct { void *data; uint64_t contract_id; } GuestContractInstance;
typedef struct { uint32_t major; uint32_t minor; uint32_t patch; } Version;
typedef struct { uint32_t function_count; void *const *functions; } NativeDispatch;
typedef struct {
    uint64_t contract_id;
    Version contract_version;
    uint32_t dispatch_type;
    void *create_instance;
    void *destroy_instance;
    NativeDispatch native;
} GuestContractInterface;
typedef void (*NativeFn)(GuestContractInstance, const void *, void *, AbiError *);
typedef void (*CreateGuestInstanceFn)(const void *, const GuestContractInterface *, const void *,
                                      GuestContractInstance *);
typedef void (*DestroyGuestInstanceFn)(const void *, const GuestContractInterface *,
                                       GuestContractInstance);
"""

# Offsets into HostApi (184 bytes): the two instance callbacks near its end.
_HOST_CREATE_GUEST_INSTANCE = 152
_HOST_DESTROY_GUEST_INSTANCE = 160
_DISPATCH_NATIVE = 0


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"_polyplug_reference: package {name!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _point_at_runtime_library() -> None:
    """POLYPLUG_LIB must name the wheel's libpolyplug.so before polyplug is imported."""
    if os.environ.get("POLYPLUG_LIB"):
        return
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64"}[os.uname().machine.lower()]
    lib = _package_dir("polyplug") / "_native" / f"linux-{arch}" / "libpolyplug.so"
    if not lib.is_file():
        raise SystemExit(f"_polyplug_reference: {lib} is missing from the polyplug wheel")
    os.environ["POLYPLUG_LIB"] = str(lib)


def main() -> None:
    request = json.load(sys.stdin)
    _point_at_runtime_library()

    import cffi
    from polyplug import Runtime
    from polyplug_loaders_native import register_native_loader

    ffi = cffi.FFI()
    ffi.cdef(_CDEF)
    assert ffi.sizeof("GuestContractInterface") == 56
    assert ffi.offsetof("GuestContractInterface", "native") == 40
    assert ffi.sizeof("AbiError") == 24

    rt = Runtime()
    register_native_loader(rt)
    host = ffi.cast("void *", rt.host)
    host_fns = ffi.cast("void **", rt.host)
    create_guest_instance = ffi.cast(
        "CreateGuestInstanceFn", host_fns[_HOST_CREATE_GUEST_INSTANCE // ffi.sizeof("void *")]
    )
    destroy_guest_instance = ffi.cast(
        "DestroyGuestInstanceFn", host_fns[_HOST_DESTROY_GUEST_INSTANCE // ffi.sizeof("void *")]
    )

    try:
        rt.load_bundle(request["bundle"])
    except Exception as exc:
        found = {}
        for call in request["calls"]:
            handle = rt.find_guest_contract(call["contract_id"], call["min_version"])
            found[str(call["contract_id"])] = handle.index != 0xFFFFFFFF
        _answer({"load_error": f"{type(exc).__name__}: {exc}", "found_after_error": found})
        return

    interfaces = {}
    contracts = {}
    instances = {}

    def resolve(contract_id: int, min_version: int):
        if contract_id not in interfaces:
            handle = rt.find_guest_contract(contract_id, min_version)
            if handle.index == 0xFFFFFFFF:
                raise SystemExit(f"_polyplug_reference: contract {contract_id:#x} not found")
            iface = ffi.cast("const GuestContractInterface *", rt.resolve_guest_contract(handle))
            if iface == ffi.NULL or iface.dispatch_type != _DISPATCH_NATIVE:
                raise SystemExit(f"_polyplug_reference: contract {contract_id:#x} did not resolve")
            instance = ffi.new("GuestContractInstance *")
            create_guest_instance(host, iface, ffi.NULL, instance)
            interfaces[contract_id] = iface
            instances[contract_id] = instance
            version = iface.contract_version
            contracts[str(contract_id)] = {
                "function_count": iface.native.function_count,
                "version": [version.major, version.minor, version.patch],
                "instance": [int(ffi.cast("uintptr_t", instance.data)), instance.contract_id],
            }
        return interfaces[contract_id], instances[contract_id]

    results = []
    for call in request["calls"]:
        iface, instance = resolve(call["contract_id"], call["min_version"])
        fn_index = call["fn"]
        if not 0 <= fn_index < iface.native.function_count:
            raise SystemExit(f"_polyplug_reference: function {fn_index} is out of range")
        fn = ffi.cast("NativeFn", iface.native.functions[fn_index])
        args = bytes.fromhex(call["args_hex"])
        args_buf = ffi.from_buffer(args) if args else ffi.NULL
        out_size = call["out_size"]
        out_buf = ffi.new("uint8_t[]", out_size) if out_size else ffi.NULL
        err = ffi.new("AbiError *")
        fn(instance[0], args_buf, out_buf, err)
        out = bytes(ffi.buffer(out_buf, out_size)) if out_size else b""
        result = {"out_hex": out.hex(), "code": err.code, "message": _text(ffi, err.message)}
        if call.get("string_view") and err.code == 0:
            result["string"] = _text(ffi, ffi.cast("StringView *", out_buf)[0])
        results.append(result)

    for contract_id, instance in instances.items():
        destroy_guest_instance(host, interfaces[contract_id], instance[0])
    _answer({"results": results, "contracts": contracts})


def _text(ffi, view) -> str:
    """Copies the UTF-8 text a StringView borrows (the guest keeps owning it)."""
    if view.ptr == ffi.NULL or not view.len:
        return ""
    return bytes(ffi.buffer(view.ptr, view.len)).decode("utf-8", "replace")


def _answer(payload: dict) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
