"""Runs tests/c_host/host.c (built by the test) against ``rt.host``.

python c_host.py LIBHOST_SO ADDER
"""

from __future__ import annotations

import ctypes
import json
import sys

from polyplug_loaders_native import register_native_loader

from polyplug_isolated import polyplug  # SWITCH


def main(library: str, adder: str) -> dict:
    host = ctypes.CDLL(library)
    rt = polyplug.Runtime()
    register_native_loader(rt)
    report = ctypes.create_string_buffer(4096)
    status = host.run(ctypes.c_void_p(rt.host), adder.encode(), b"/nonexistent/bundle", report, 4096)
    seen = dict(line.split("=", 1) for line in report.value.decode().splitlines())
    seen["status"] = status
    return seen


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:3])))
