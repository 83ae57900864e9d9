"""The one place where the operating system's errors become loader errors.

Loading a bundle touches the file system (the manifest, the library path)
and allocates descriptors (a socket pair, pipes, a pidfd, a segment): any of
it can fail with an OSError (EMFILE, ENAMETOOLONG, ...) or a ValueError (a
NUL in a path, a number too long to convert). A host that catches
LoaderError to skip a bad bundle must never see those raw.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator

import posix_ipc

from .errors import InitFailed, LoaderError

_MESSAGE_CAP = 300  # an error may quote a path thousands of characters long

_REMEDIES = {
    errno.EMFILE: "this process is out of file descriptors (EMFILE): raise its limit (ulimit -n) "
    "or unload bundles it no longer needs",
    errno.ENFILE: "the system is out of file descriptors (ENFILE): close some, or raise fs.file-max",
    errno.ENAMETOOLONG: "a path is too long for the file system (ENAMETOOLONG): shorten it",
    errno.ENOMEM: "out of memory (ENOMEM)",
}


def describe(exc: BaseException) -> str:
    """What went wrong, short, with what to do where there is something to do."""
    if isinstance(exc, OSError) and exc.errno in _REMEDIES:
        return _REMEDIES[exc.errno]
    if isinstance(exc, ValueError) and "null" in str(exc):
        return "a path contains a NUL character, which no file name can"
    text = str(exc) or type(exc).__name__
    return text if len(text) <= _MESSAGE_CAP else text[:_MESSAGE_CAP] + "..."


def describe_path(path: object) -> str:
    """A path for a message, cut if it is very long."""
    text = str(path)
    return text if len(text) <= _MESSAGE_CAP else text[:_MESSAGE_CAP] + "..."


@contextlib.contextmanager
def loader_errors(bundle: str, doing: str, error: type[LoaderError] = InitFailed) -> Iterator[None]:
    """Re-raises OSError, ValueError and posix_ipc errors in the block as ``error``.

    ``bundle`` names the bundle (its name, or where it was looked for).
    """
    try:
        yield
    except LoaderError:
        raise
    except (OSError, ValueError, posix_ipc.Error) as exc:
        raise error(f"bundle {bundle!r}: {doing} failed: {describe(exc)}", bundle=bundle) from exc
