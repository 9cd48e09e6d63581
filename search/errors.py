"""One root exception for everything a user can get wrong.

Subclasses also inherit the matching built-in so plain ``except ValueError``
keeps working for callers that do not know about edgesearch.
"""


class EdgeSearchError(Exception):
    """Root of every error edgesearch raises on purpose."""


class ConfigError(EdgeSearchError, ValueError):
    """A parameter, spec field or CLI option has an invalid value."""


class DatasetError(EdgeSearchError, ValueError):
    """A dataset is missing, malformed or inconsistent."""


class ProfileError(EdgeSearchError, ValueError):
    """A hardware target profile is unknown or malformed."""


class CandidateError(EdgeSearchError, RuntimeError):
    """One candidate failed in a pipeline stage; the search goes on without it."""

    def __init__(self, stage: str, message: str):
        super().__init__(f"{stage} failed: {message}")
        self.stage = stage
        self.message = message

    def __reduce__(self):  # keeps (stage, message) across process boundaries (Ray workers)
        return (type(self), (self.stage, self.message))


class SearchNotFoundError(EdgeSearchError, LookupError):
    """A named search does not exist in the storage."""
