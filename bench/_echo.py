"""The echoing child of the Pipe case: ``python -m bench._echo FD``.

FD is this process's end of a ``multiprocessing.Pipe()``; every message comes
back unchanged until an empty one. A plain subprocess rather than a
``multiprocessing.Process``, so no resource-tracker process outlives the bench.
"""

from __future__ import annotations

import sys
from multiprocessing.connection import Connection


def main() -> None:
    conn = Connection(int(sys.argv[1]))
    while True:
        message = conn.recv_bytes()
        if not message:
            break
        conn.send_bytes(message)
    conn.close()


if __name__ == "__main__":
    main()
