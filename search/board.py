"""Where a search's workers post the stage each running trial is in.

A module of its own, importing nothing, so the Ray actor that holds the posts starts at once beside the first
candidates' timings instead of importing the service.
"""

from __future__ import annotations


class StageBoard:
    """Where workers post the stage each running trial is in (a Ray actor without CPUs): the driver takes the posts
    and stores them with the trials, so `status` and the driver's quiet line say what a long trial is doing, from
    storage, the one place every reader can reach."""

    def __init__(self) -> None:
        self.posts: dict[int, str] = {}

    def post(self, trial: int, stage: str) -> None:
        self.posts[trial] = stage

    def take(self) -> dict[int, str]:
        posts, self.posts = self.posts, {}
        return posts
