"""One root exception for everything a user can get wrong.

The root and the errors the target layer raises are defined there (``hardware_targets.errors``); the service's own
are here. Subclasses also inherit the matching built-in so plain ``except ValueError`` keeps working for callers
that do not know about edgesearch.
"""

import contextlib

from hardware_targets.errors import CandidateError, EdgeSearchError, ProfileError, TargetUnreachableError

__all__ = ["CandidateError", "ConfigError", "DatasetError", "EdgeSearchError", "ProfileError", "SearchNotFoundError",
           "TargetUnreachableError", "Terminated", "stopped_by_signals"]


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
