"""Builds the C hot path with cffi at install time (cffi_modules has no pyproject key).

The packages are listed here because each fixture directory is one (its C
sources and TOML files are package data), so a new fixture ships without a
change to this list.
"""

from pathlib import Path

from setuptools import setup

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
)
