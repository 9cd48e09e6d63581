"""One root exception for everything a user can get wrong.

The root and the errors the target layer raises are defined there (``hardware_targets.errors``); the service's own
are here. Subclasses also inherit the matching built-in so plain ``except ValueError`` keeps working for callers
that do not know about edgesearch.
"""

import contextlib
import errno
import os
import re
from pathlib import Path
from typing import NamedTuple

from hardware_targets.errors import CandidateError, EdgeSearchError, ProfileError, TargetUnreachableError, first_line

__all__ = ["CandidateError", "ConfigError", "DatasetError", "EdgeSearchError", "ProfileError", "SearchNotFoundError",
           "TargetUnreachableError", "Terminated", "WriteFault", "first_line", "ray_token_advice", "stopped_by_signals",
           "write_fault"]


class ConfigError(EdgeSearchError, ValueError):
    """A parameter, spec field or CLI option has an invalid value."""


class DatasetError(EdgeSearchError, ValueError):
    """A dataset is missing, malformed or inconsistent."""


class SearchNotFoundError(EdgeSearchError, LookupError):
    """A named search does not exist in the storage."""


class Terminated(KeyboardInterrupt):
    """A stop signal (SIGTERM from ``kill``, ``docker stop`` or a stopped Ray job; SIGHUP from a closed terminal)
    ends a search as Ctrl-C does: its running trials are queued again and it says how to resume."""

    def __init__(self, signum: int):
        import signal

        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stopped_by_signals():
    """While it lasts, SIGTERM and SIGHUP raise ``Terminated``, which stops a command as Ctrl-C does (an export
    removes its half-written folder). A search enters it again once Ray runs: ``ray.init`` puts a handler on SIGTERM
    that dumps a stack trace and ends the process at once, leaving its trials "running" and its MLflow runs open. A
    signal a caller ignores (``nohup``) stays ignored.

    A library the signal interrupts may end in an error of its own rather than let the interrupt through: psycopg
    cancels the query Ctrl-C interrupted, and Optuna reports "an exception is raised during the commit". After a
    signal, any error is the signal's stop (the search says how to resume it), not a failure."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    received = []

    def stopped_by() -> KeyboardInterrupt:
        return Terminated(received[0]) if received[0] != signal.SIGINT else KeyboardInterrupt()

    def stop(signum, frame):
        received.append(signum)
        raise stopped_by()

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    for s, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(s, stop)
    try:
        yield
    except KeyboardInterrupt as exc:  # ray.get re-raises what a handler raised as a plain KeyboardInterrupt
        if received and not isinstance(exc, Terminated) and received[0] != signal.SIGINT:
            raise stopped_by() from exc
        raise
    except Exception as exc:
        if received:
            raise stopped_by() from exc
        raise
    finally:
        for s, handler in previous.items():
            if handler is not None:
                signal.signal(s, handler)


def ray_token_advice(service: str, exc: BaseException) -> str | None:
    """What to do when ``exc`` says a Ray cluster wants a token (Ray 2.60's `ray start --head` turns token
    authentication on; README): the token missing, or not the cluster's. None for any other error. Ray's own words
    ran to a paragraph, or to a warning per retry; its ``ConnectionError`` wraps the authentication error."""
    while exc is not None and not (type(exc).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(exc)):
        exc = exc.__cause__ or exc.__context__
    if exc is None:
        return None
    where = "the cluster's token (`ray get-auth-token` on its head node)"
    if "invalid" in str(exc).lower() and os.environ.get("RAY_AUTH_MODE") == "token":
        return (f"{service} refused this machine's authentication token ($RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or "
                f"~/.ray/auth_token): put {where} there.")
    return f"{service} needs an authentication token: export RAY_AUTH_MODE=token, with {where} in ~/.ray/auth_token " \
           "or $RAY_AUTH_TOKEN."


class WriteFault(NamedTuple):
    """What keeps every write from working, said for a user: ``what`` happened (where, when known), ``why`` a
    search stopped in a few words, and what to do (``remedy``)."""

    what: str
    why: str
    path: str | None
    code: int  # the errno

    def remedy(self, out: str | Path | None = None) -> str:
        """What to do; ``out``: the folder the command writes, which a fault inside it names instead of the runs
        folder."""
        if self.code in (errno.ENOSPC, errno.EDQUOT):
            return "free space on that disk (df -h shows what each has left)"
        mine = out is not None and self.path is not None and Path(self.path).resolve().is_relative_to(
            Path(out).resolve())
        if self.code == errno.EROFS:
            return ("pass an --out on a writable file system" if mine else "edgesearch writes beside its stores "
                    "(locks, caches): copy the runs folder to a writable place and pass --runs-dir there")
        return ("pass an --out this user may write" if mine else "give this user that folder (one made by another "
                "user, say with sudo), or copy the runs folder to one it owns and pass --runs-dir there")


_FAULTS = {errno.ENOSPC: ("no space left on the device", "the disk is full"),
           errno.EDQUOT: ("disk quota exceeded", "the disk quota is used up"),
           errno.EROFS: ("read-only file system", "a folder it writes is read-only"),
           errno.EACCES: ("permission denied", "it may not write a folder it needs")}
# how each reads once SQLite (through SQLAlchemy, Optuna or MLflow) or a Ray worker has reworded it
_WORDS = {"No space left on device": errno.ENOSPC, "database or disk is full": errno.ENOSPC,
          "Disk quota exceeded": errno.EDQUOT, "Read-only file system": errno.EROFS,
          "attempt to write a readonly database": errno.EROFS, "Permission denied": errno.EACCES}


def write_fault(exc: BaseException) -> WriteFault | None:
    """Why nothing can be written, when ``exc`` comes from a full disk, a read-only file system or a folder this
    user may not write (raised here, in a Ray worker, or by SQLite), else None.

    Such a fault is no candidate's: recorded as a failed candidate, it would fail every candidate after it and teach
    the sampler that their knobs fail. Commands stop on it instead, with what was finished kept."""
    seen, stack = set(), [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _FAULTS:
            return _fault(e.errno, getattr(e, "filename2", None) or e.filename)
        for words, code in _WORDS.items():  # a worker's error keeps its path in its text only
            if words in str(e):
                named = re.search(re.escape(words) + r": '([^']+)'(?: -> '([^']+)')?", str(e))
                return _fault(code, named and (named[2] or named[1]))
        stack += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return None


def _fault(code: int, path) -> WriteFault:
    what, why = _FAULTS[code]
    return WriteFault(f"{what} (writing {path})" if path else what, why, path and str(path), code)
