"""One root exception for everything a user can get wrong.

The root and the errors the target layer raises are defined there (``hardware_targets.errors``); the service's own
are here. Subclasses also inherit the matching built-in so plain ``except ValueError`` keeps working for callers
that do not know about edgesearch.
"""

from hardware_targets.errors import CandidateError, EdgeSearchError, ProfileError, TargetUnreachableError

__all__ = ["CandidateError", "ConfigError", "DatasetError", "EdgeSearchError", "ProfileError", "SearchNotFoundError",
           "TargetUnreachableError", "Terminated"]


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
