"""One root exception for everything a user can get wrong.

The root and the errors the target layer raises are defined there (``hardware_targets.errors``); the service's own
are here. Subclasses also inherit the matching built-in so plain ``except ValueError`` keeps working for callers
that do not know about edgesearch.
"""

import contextlib
import errno
import re

from hardware_targets.errors import CandidateError, EdgeSearchError, ProfileError, TargetUnreachableError

__all__ = ["CandidateError", "ConfigError", "DatasetError", "EdgeSearchError", "ProfileError", "SearchNotFoundError",
           "TargetUnreachableError", "Terminated", "disk_full", "stopped_by_signals"]


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
    signal a caller ignores (``nohup``) stays ignored."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    received = []

    def stop(signum, frame):
        received.append(signum)
        raise Terminated(signum)

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    for s, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(s, stop)
    try:
        yield
    except KeyboardInterrupt as exc:  # ray.get re-raises what a handler raised as a plain KeyboardInterrupt
        if received and not isinstance(exc, Terminated):
            raise Terminated(received[0]) from exc
        raise
    finally:
        for s, handler in previous.items():
            if handler is not None:
                signal.signal(s, handler)


# how a full disk reads once SQLite (through SQLAlchemy, Optuna or MLflow) or a Ray worker has reworded it
_FULL_DISK_WORDS = ("No space left on device", "database or disk is full", "Disk quota exceeded")


def disk_full(exc: BaseException) -> str | None:
    """Where the disk filled up, when ``exc`` comes from a full disk (raised here, in a Ray worker, or by SQLite),
    else None.

    A full disk is no candidate's fault: recorded as a failed candidate, it would fail every candidate after it and
    teach the sampler that their knobs fail. Commands stop on it instead, with what was finished kept."""
    seen, stack = set(), [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            path = getattr(e, "filename2", None) or e.filename
            return f"no space left on the device (writing {path})" if path else "no space left on the device"
        if any(words in str(e) for words in _FULL_DISK_WORDS):  # a worker's error keeps its path in its text only
            named = re.search(r"No space left on device: '([^']+)'(?: -> '([^']+)')?", str(e))
            return (f"no space left on the device (writing {named[2] or named[1]})" if named else
                    "no space left on the device")
        stack += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return None
