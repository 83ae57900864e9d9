"""Builds the C hot path with cffi at install time (cffi_modules has no pyproject key)."""

from setuptools import setup

setup(
    cffi_modules=[
        "polyplug_isolated/_build_ffi.py:host_ffi",
        "polyplug_isolated/_build_ffi.py:worker_ffi",
    ]
)
