"""Native libraries (TVM's C++ logging, the TFLM interpreter) print to the process's own file descriptors, past
Python's ``sys.stdout``: keeping them quiet means pointing those descriptors elsewhere meanwhile."""

from __future__ import annotations

import contextlib
import io
import os


@contextlib.contextmanager
def fds_to(file, fds=(1, 2)):
    """Point the process's file descriptors ``fds`` at ``file`` meanwhile."""
    saved = [os.dup(fd) for fd in fds]
    for fd in fds:
        os.dup2(file.fileno(), fd)
    try:
        yield
    finally:
        for fd, copy in zip(fds, saved):
            os.dup2(copy, fd)
            os.close(copy)


@contextlib.contextmanager
def quiet_native():
    """Discard what native code (and Python) prints meanwhile."""
    with open(os.devnull, "w") as null, fds_to(null), contextlib.redirect_stdout(io.StringIO()):
        yield
