"""Runtime.host is a real HostApi: a C host, cffi and threads call bundles through it."""

from __future__ import annotations

import ctypes
import logging
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import cffi
import pytest

from polyplug_isolated import CallTimeout, Fault, ManifestError, WorkerCrashed, bundle_id, guest_contract_id

polyplug = pytest.importorskip("polyplug_isolated.polyplug")

ROOT = Path(__file__).resolve().parent.parent
ADD = guest_contract_id("test.add", 1)
KITCHEN = guest_contract_id("test.kitchen", 1)
CDEF = """
typedef struct { const uint8_t *ptr; size_t len; } StringView;
typedef struct { uint8_t *ptr; size_t len; size_t cap; } Buffer;
typedef struct { uint32_t code; StringView message; } AbiError;
typedef struct { void *data; uint64_t contract_id; } GuestContractInstance;
typedef struct { uint32_t major; uint32_t minor; uint32_t patch; } Version;
typedef struct {
    uint64_t contract_id; Version contract_version; uint32_t dispatch_type;
    void *create_instance; void *destroy_instance;
    uint32_t function_count; void *const *functions;
} GuestContractInterface;
typedef void (*NativeFn)(GuestContractInstance, const void *, void *, AbiError *);
typedef struct { StringView a; StringView b; } Concat;
"""


@pytest.fixture(scope="module")
def c_host(tmp_path_factory) -> ctypes.CDLL:
    if shutil.which("cc") is None:
        pytest.skip("no C compiler")
    library = tmp_path_factory.mktemp("c_host") / "libhost.so"
    subprocess.run(
        [
            "cc",
            "-std=c11",
            "-O1",
            "-Wall",
            "-Werror",
            "-shared",
            "-fPIC",
            f"-I{ROOT / 'worker'}",
            str(ROOT / "tests" / "c_host" / "host.c"),
            "-o",
            str(library),
        ],
        check=True,
    )
    return ctypes.CDLL(str(library))


def test_a_c_host_loads_finds_calls_and_unloads_through_runtime_host(c_host, bundle_dir, caplog):
    report = ctypes.create_string_buffer(4096)
    with polyplug.Runtime() as rt, caplog.at_level(logging.WARNING, "polyplug_isolated.polyplug"):
        status = c_host.run(
            ctypes.c_void_p(rt.host), str(bundle_dir("adder")).encode(), b"/nonexistent/bundle", report, 4096
        )
        assert status == 0
    seen = dict(line.split("=", 1) for line in report.value.decode().splitlines())
    assert seen == {
        "load_missing_code": "1",
        "last_error_len": seen["last_error_len"],
        "last_error_cleared": "1",
        "load_code": "0",
        "revision_changed": "1",
        "handle_index": "0",
        "find_all_len": "1",
        "bundles": "1",
        "function_count": "4",
        "instance_contract_is_add": "1",
        "add_primitive_code": "0",
        "add_primitive": "42",
        "version": "1.0.0",
        "alloc_aligned": "1",
        "unload_code": "0",
        "resolve_after_unload_is_null": "1",
        "call_after_unload_code": "5",
        "unload_again_code": "1",
        "unload_again_error": "bundle not found for contract: bundle=0x",
    }
    assert int(seen["last_error_len"]) > 0
    assert "[c-host] hello from C" in caplog.text


def test_the_c_host_sees_the_same_host_api_as_on_polyplug(c_host, bundle_dir, tmp_path: Path):
    from tests._dropin import needs_polyplug, run_host

    needs_polyplug()
    args = (c_host._name, str(bundle_dir("adder")))
    script = ROOT / "tests" / "polyplug_hosts" / "c_host.py"

    isolated = run_host(script, "isolated", *args, tmp_path=tmp_path)
    reference = run_host(script, "polyplug", *args, tmp_path=tmp_path)

    # A function pointer kept past unload: undefined behaviour in polyplug (its library
    # may not be unmapped yet), StaleHandle here.
    assert isolated.pop("call_after_unload_code") == "5"
    reference.pop("call_after_unload_code")
    # The load error's text differs (ours names the bundle and what to do); both have one.
    assert int(isolated.pop("last_error_len")) > 0 and int(reference.pop("last_error_len")) > 0
    assert isolated == reference
    assert isolated["add_primitive"] == "42"


def test_cffi_calls_the_function_table_with_strings_and_buffers(bundle_dir):
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    with polyplug.Runtime() as rt:
        rt.load_bundle(bundle_dir("kitchen_sink"))
        iface = ffi.cast(
            "GuestContractInterface *", rt.resolve_guest_contract(rt.find_guest_contract(KITCHEN, 1))
        )
        concat = ffi.cast("NativeFn", iface.functions[23])
        a, b = ffi.new("char[]", b"isol"), ffi.new("char[]", b"ated")
        args = ffi.new("Concat *", {"a": (ffi.cast("uint8_t *", a), 4), "b": (ffi.cast("uint8_t *", b), 4)})
        out, err = ffi.new("Buffer *"), ffi.new("AbiError *")
        concat(ffi.new("GuestContractInstance *")[0], args, out, err)
        assert err.code == 0
        assert ffi.buffer(out.ptr, out.len)[:] == b"isolated"
        assert out.cap == 8  # the caller owns it: HostApi.free releases it
        divide = ffi.cast("NativeFn", iface.functions[25])
        pair = ffi.new("int32_t[2]", [1, 0])
        divide(ffi.new("GuestContractInstance *")[0], pair, ffi.new("int32_t *"), err)
        assert err.code == 256
        assert (
            ffi.string(ffi.cast("char *", err.message.ptr), err.message.len)
            == b"kitchen_sink: division by zero"
        )


def test_threads_calling_one_function_pointer_each_get_their_own_answers(bundle_dir):
    from polyplug_abi import AbiError, GuestContractInstance, GuestContractInterface

    native = ctypes.CFUNCTYPE(None, GuestContractInstance, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
    with polyplug.Runtime() as rt:
        rt.load_bundle(bundle_dir("adder"))
        iface = GuestContractInterface.from_address(rt.resolve_guest_contract(rt.find_guest_contract(ADD, 1)))
        functions = ctypes.cast(iface.dispatch.native.functions, ctypes.POINTER(ctypes.c_void_p))
        add_primitive = native(functions[1])
        wrong: list = []

        def caller(base: int) -> None:
            out, err = ctypes.c_uint32(), AbiError()
            for i in range(300):
                args = (ctypes.c_uint32 * 2)(base, i)
                add_primitive(
                    GuestContractInstance(),
                    ctypes.addressof(args),
                    ctypes.addressof(out),
                    ctypes.addressof(err),
                )
                if out.value != base + i or err.code != 0:
                    wrong.append((base, i, out.value, err.code))

        threads = [threading.Thread(target=caller, args=(1000 * t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert wrong == []


def test_resolve_without_an_api_toml_says_what_is_missing(bundle_dir, tmp_path: Path):
    probe = shutil.copytree(bundle_dir("probe_v1"), tmp_path / "probe")
    with polyplug.Runtime() as rt:
        rt.load_bundle(probe)
        handle = rt.find_guest_contract(guest_contract_id("test.probe", 1), 1)
        with pytest.raises(
            ManifestError, match=r"no api.toml declares contract .* function table needs"
        ) as caught:
            rt.resolve_guest_contract(handle)
        assert isinstance(caught.value, RuntimeError)
        assert "probe" in str(caught.value)


def test_a_closed_runtime_s_host_api_answers_closed_instead_of_crashing(bundle_dir):
    rt = polyplug.Runtime()
    rt.load_bundle(bundle_dir("adder"))
    host = rt.host
    rt.close()
    load = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p)(
        ctypes.cast(host + 88, ctypes.POINTER(ctypes.c_void_p))[0]
    )
    err = (ctypes.c_uint32 * 6)()
    path = str(bundle_dir("adder")).encode()
    load(host, path, len(path), ctypes.addressof(err))
    assert err[0] == 1
    with pytest.raises(RuntimeError, match="closed"):
        rt.load_bundle(bundle_dir("adder"))
    assert bundle_id("adder") == 2548453539782603331


@pytest.mark.parametrize(
    ("fault", "error", "words"),
    [
        (Fault.crash(signal.SIGSEGV), WorkerCrashed, "SIGSEGV"),
        (Fault.hang(), CallTimeout, "no answer within"),
    ],
)
def test_a_crash_or_hang_behind_a_function_pointer_is_an_abi_error_not_a_dead_host(
    bundle_dir, fault, error, words
):
    from polyplug_abi import AbiError, GuestContractInstance, GuestContractInterface

    native = ctypes.CFUNCTYPE(None, GuestContractInstance, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
    with polyplug.Runtime(call_timeout=1.0) as rt:
        rt.load_bundle(bundle_dir("adder"))
        iface = GuestContractInterface.from_address(rt.resolve_guest_contract(rt.find_guest_contract(ADD, 1)))
        functions = ctypes.cast(iface.dispatch.native.functions, ctypes.POINTER(ctypes.c_void_p))
        add_primitive = native(functions[1])
        rt.isolated.bundles[0].inject(fault.on_call(1))
        args, out, err = (ctypes.c_uint32 * 2)(2, 3), ctypes.c_uint32(), AbiError()
        pointers = ctypes.addressof(args), ctypes.addressof(out), ctypes.addressof(err)
        add_primitive(GuestContractInstance(), *pointers)
        assert err.code == 3  # Panic
        assert words in ctypes.string_at(err.message.ptr, err.message.len).decode()
        assert isinstance(rt.last_call_error(), error)


def test_trampoline_numbers_are_fresh_first_then_reused():
    from polyplug_isolated._host_bridge import _Pool

    pool = _Pool(10)
    assert [pool.take(4), pool.take(4)] == [0, 4]
    pool.give(0, 4)
    assert pool.take(2) == 8  # fresh numbers left: a stale pointer keeps answering StaleHandle longer
    assert pool.take(3) == 0  # then the freed range
    assert pool.take(2) is None  # one number left in it, none fresh


def test_an_instance_does_not_survive_a_reload_it_answers_stale_handle(bundle_dir):
    from polyplug_abi import AbiError, GuestContractInstance, GuestContractInterface, HostApi, RuntimeConfig

    native = ctypes.CFUNCTYPE(None, GuestContractInstance, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
    config = RuntimeConfig()
    config.hot_reload_enabled = True
    with polyplug.Runtime(config=config) as rt:
        rt.load_bundle(bundle_dir("kitchen_sink"))
        host = HostApi.from_address(rt.host)
        address = rt.resolve_guest_contract(rt.find_guest_contract(guest_contract_id("test.counter", 1), 1))
        functions = ctypes.cast(
            GuestContractInterface.from_address(address).dispatch.native.functions,
            ctypes.POINTER(ctypes.c_void_p),
        )
        increment = native(functions[0])
        instance, value, err = GuestContractInstance(), ctypes.c_int64(), AbiError()
        host.create_guest_instance(rt.host, address, None, ctypes.byref(instance))
        increment(instance, None, ctypes.addressof(value), ctypes.addressof(err))
        increment(instance, None, ctypes.addressof(value), ctypes.addressof(err))
        assert (err.code, value.value) == (0, 2)
        rt.reload_bundle(bundle_dir("kitchen_sink"))
        increment(instance, None, ctypes.addressof(value), ctypes.addressof(err))
        assert err.code == 5
        assert "create a new instance" in ctypes.string_at(err.message.ptr, err.message.len).decode()
