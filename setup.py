"""Builds the C hot path with cffi at install time (cffi_modules has no pyproject key).

The packages are listed here because each fixture directory is one (its C
sources and TOML files are package data), so a new fixture ships without a
change to this list. The _fastcall extension (the typed and raw fast paths)
calls into the cffi module's data plane.
"""

from pathlib import Path

from setuptools import Extension, setup

FIXTURES = sorted(p.parent.name for p in Path(__file__).parent.glob("fixtures/*/manifest.toml"))

setup(
    cffi_modules=[
        "polyplug_isolated/_build_ffi.py:host_ffi",
        "polyplug_isolated/_build_ffi.py:worker_ffi",
    ],
    packages=[
        "polyplug_isolated",
        "polyplug_isolated.polyplug",
        "polyplug_isolated.worker",
        "polyplug_isolated.bench",
        "polyplug_isolated.fixtures",
        *(f"polyplug_isolated.fixtures.{name}" for name in FIXTURES),
    ],
    ext_modules=[
        Extension(
            "polyplug_isolated._fastcall",
            sources=["polyplug_isolated/_fastcall.c", "polyplug_isolated/_fastcall_typed.c"],
            depends=["polyplug_isolated/_fastcall.h", "polyplug_isolated/_channel.h", "worker/channel.h"],
            include_dirs=["polyplug_isolated", "worker"],
            extra_compile_args=[
                "-std=c11",
                "-O2",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-Wno-unused-parameter",
                "-Wno-missing-field-initializers",
                "-Wno-cast-function-type",
            ],
        ),
        Extension(
            "polyplug_isolated._cbroutes",
            sources=["polyplug_isolated/_cbroutes.c"],
            depends=["polyplug_isolated/_channel.h", "worker/callback.h"],
            include_dirs=["polyplug_isolated", "worker"],
            extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter"],
        ),
    ],
)
