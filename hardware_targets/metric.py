"""A figure with its unit and where it came from: what every backend, stage and report passes around."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PROVENANCES = ("measured", "emulated", "estimated")

Provenance = Literal["measured", "emulated", "estimated"]


@dataclass(frozen=True)
class Metric:
    """A number with its unit and where it came from; no bare figures."""

    value: float
    unit: str
    provenance: Provenance

    def __post_init__(self) -> None:
        if self.provenance not in PROVENANCES:  # set by code, never by a user: a plain ValueError
            raise ValueError(f"The 'provenance' parameter of Metric must be one of {list(PROVENANCES)}. "
                             f"Got {self.provenance!r} instead.")
