"""Builds the C hot path at install time: cffi modules (cffi_modules has no pyproject key)
and the _fastcall extension, which calls into the cffi module's data plane."""

from setuptools import Extension, setup

setup(
    cffi_modules=[
        "polyplug_isolated/_build_ffi.py:host_ffi",
        "polyplug_isolated/_build_ffi.py:worker_ffi",
    ],
    ext_modules=[
        Extension(
            "polyplug_isolated._fastcall",
            sources=["polyplug_isolated/_fastcall.c", "polyplug_isolated/_fastcall_typed.c"],
            depends=["polyplug_isolated/_fastcall.h", "polyplug_isolated/_channel.h"],
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
        )
    ],
)
