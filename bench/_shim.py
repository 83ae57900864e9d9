"""Builds ``shim.c`` (cffi API mode, like the isolated hot path) into a temporary directory.

Only the baseline subprocess (``bench._inproc``) imports it: the shim calls
the worker's dispatch, which that process loads with ``_serve_ffi``.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import tempfile
from pathlib import Path
from types import ModuleType

SOURCE = Path(__file__).resolve().parent / "shim.c"
CDEF = """
void shim_set_invoke(uintptr_t address);
int64_t shim_call_small(void *conn, uint32_t contract, uint32_t function, const uint8_t *args,
                        size_t args_len, size_t out_size, double timeout_s);
"""


def build(directory: Path | None = None) -> ModuleType:
    """The compiled shim module (``.ffi``, ``.lib``), built with the flags of the hot path."""
    from cffi import FFI

    target = Path(directory or tempfile.mkdtemp(prefix="polyplug-bench-shim-"))
    ffi = FFI()
    ffi.cdef(CDEF)
    ffi.set_source("_bench_shim", SOURCE.read_text(), extra_compile_args=["-std=c11", "-O2"])
    built = ffi.compile(tmpdir=str(target), verbose=False)
    loader = importlib.machinery.ExtensionFileLoader("_bench_shim", built)
    spec = importlib.util.spec_from_file_location("_bench_shim", built, loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module
