"""What the command line says when a run fails: one line and an exit code, never a traceback.

Exit codes: 2 for anything the user can change (bad input, a full disk, a read-only or missing
folder, a size too large for the memory, non-finite values from the given weights or latents),
1 for a failure of the program itself (shown with its traceback, a bug to report), 130 for
Ctrl-C and 143 for SIGTERM. On Ctrl-C and SIGTERM outputs being written are removed
(:func:`cvvae.io.atomic_path`) before the process exits.
"""

from __future__ import annotations

import errno
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

USER_ERROR, INTERRUPTED, TERMINATED = 2, 130, 143

_MEMORY_WORDS = ("not enough memory", "out of memory", "can't allocate memory", "bad_alloc")
_OS_HINTS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.ENAMETOOLONG: "the file name is too long",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EISDIR: "it is a folder",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.ENOENT: "no such file or folder",
    errno.ENOMEM: "out of memory",
}


class Terminated(BaseException):
    """Raised in the main thread when the process gets SIGTERM (a BaseException, like
    KeyboardInterrupt, so that ``except Exception`` blocks do not swallow it)."""


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (so cleanups run) instead of
    killing the process; the previous handler comes back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def describe(error: Exception) -> tuple[int, str] | None:
    """``(exit code, one line)`` for a failure the user can act on, or None for a bug."""
    if isinstance(error, MemoryError) or _is_out_of_memory(error):
        return USER_ERROR, (
            "out of memory for the requested size; use smaller --height/--width/--frames "
            "or a --memory-budget"
        )
    if isinstance(error, OSError) and error.errno is not None:
        what = _OS_HINTS.get(error.errno) or error.strerror or type(error).__name__
        name = error.filename if error.filename is not None else ""
        return USER_ERROR, f"{what}: {name}" if name else what
    if isinstance(error, FloatingPointError):  # e.g. NonFiniteError from the model
        return USER_ERROR, _one_line(error)
    av = sys.modules.get("av")
    if av is not None and isinstance(error, av.FFmpegError):
        name = getattr(error, "filename", None) or ""
        return USER_ERROR, f"video file error ({_one_line(error)}): {name}".rstrip(": ")
    return None


def _is_out_of_memory(error: Exception) -> bool:
    oom = getattr(sys.modules.get("torch"), "OutOfMemoryError", ())
    if oom and isinstance(error, oom):
        return True
    return isinstance(error, RuntimeError) and any(w in str(error) for w in _MEMORY_WORDS)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__
