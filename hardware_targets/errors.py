"""The root of edgesearch's errors, and the ones the target layer raises.

They live in the lowest layer that raises one, so the service (``search.errors``, which adds its own) and the
targets share one hierarchy without the targets importing the service. Each also inherits the matching built-in, so
a plain ``except ValueError`` keeps working for callers that do not know about edgesearch.
"""


class EdgeSearchError(Exception):
    """Root of every error edgesearch raises on purpose."""


class ProfileError(EdgeSearchError, ValueError):
    """A hardware target profile is unknown or malformed."""


class TargetUnreachableError(EdgeSearchError, ConnectionError):
    """A measured target cannot be reached (its board or tracker is down); said before anything is trained."""


class CandidateError(EdgeSearchError, RuntimeError):
    """One candidate failed in a pipeline stage; the search goes on without it."""

    def __init__(self, stage: str, message: str):
        super().__init__(f"{stage} failed: {message}")
        self.stage = stage
        self.message = message

    def __reduce__(self):  # keeps (stage, message) across process boundaries (Ray workers)
        return (type(self), (self.stage, self.message))


def first_line(exc: BaseException, named: bool = False) -> str:
    """An error in one line, for a message that goes on after it (a database's or a compiler's can run to pages):
    its message's first line, led by its type's name when ``named``; the name alone when it has no message."""
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    return f"{type(exc).__name__}: {lines[0]}" if named else lines[0]
