"""Schedules for objective weights and temperatures over training (TextBrewer-style).

A scheduled value is a function of training progress ``p = step / max_steps``, where ``step`` is the number of
optimizer steps already taken (0 for the first step, ``max_steps - 1`` for the last):

* ``constant``: ``value``
* ``linear``: ``start + (end - start) · p``
* ``cosine``: ``end + (start - end) · (1 + cos(π p)) / 2`` (starts at ``start``, eases into ``end``)
* ``step``: ``values[i]`` where ``i`` is the number of ``boundaries`` (fractions of training, increasing, in (0, 1))
  that ``p`` has reached

In an objective spec, ``weight`` and the objective's schedulable parameters (``temperature``; ``beta`` of ``jsd``)
take either a number or a mapping::

    {"name": "kl", "weight": {"schedule": "linear", "start": 1.0, "end": 0.3},
     "temperature": {"schedule": "cosine", "start": 4.0, "end": 1.0}}
    {"name": "ce", "weight": {"schedule": "step", "values": [0.0, 0.5], "boundaries": [0.5]}}

Values depend on the step count alone, so a resumed run follows the same schedule exactly.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .registry import did_you_mean

__all__ = ["Schedule", "SCHEDULE_KINDS", "parse_schedule"]

SCHEDULE_KINDS = ("constant", "linear", "cosine", "step")
_KEYS = {"constant": ("value",), "linear": ("start", "end"), "cosine": ("start", "end"),
         "step": ("values", "boundaries")}


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where} must be a finite number, got {value!r}.")
    return float(value)


@dataclass(frozen=True)
class Schedule:
    """A value that follows ``kind`` over training progress ``p`` in [0, 1] (see the module docstring)."""

    kind: str
    start: float = 0.0
    end: float = 0.0
    values: tuple[float, ...] = ()
    boundaries: tuple[float, ...] = ()

    def __call__(self, progress: float) -> float:
        p = min(max(float(progress), 0.0), 1.0)
        if self.kind == "constant":
            return self.start
        if self.kind == "linear":
            return self.start + (self.end - self.start) * p
        if self.kind == "cosine":
            return self.end + (self.start - self.end) * (1.0 + math.cos(math.pi * p)) / 2.0
        return self.values[bisect.bisect_right(self.boundaries, p)]

    def extremes(self) -> tuple[float, ...]:
        """Every value the schedule can reach at its ends or steps (to validate them once)."""
        return self.values if self.kind == "step" else (self.start, self.end)


def parse_schedule(spec: Any, where: str) -> Schedule | None:
    """A `Schedule` from a mapping ``{"schedule": kind, ...}``; None for a plain number (not scheduled). Raises
    ``ValueError`` naming ``where`` (e.g. ```objectives[0].temperature```) for anything malformed."""
    if not isinstance(spec, Mapping):
        return None
    spec = dict(spec)
    kind = spec.pop("schedule", None)
    if kind not in SCHEDULE_KINDS:
        raise ValueError(f"{where}: `schedule` must be one of {', '.join(SCHEDULE_KINDS)}, got {kind!r}."
                         f"{did_you_mean(str(kind), SCHEDULE_KINDS)} Example: {{'schedule': 'linear', 'start': 4.0, "
                         "'end': 1.0}.")
    expected = _KEYS[kind]
    unknown = sorted(set(spec) - set(expected))
    missing = [key for key in expected if key not in spec]
    if unknown or missing:
        raise ValueError(f"{where}: a {kind!r} schedule takes exactly {', '.join(expected)}"
                         + (f"; unknown: {unknown}" if unknown else "") + (f"; missing: {missing}" if missing else "")
                         + ".")
    if kind == "constant":
        value = _number(spec["value"], f"{where}.value")
        return Schedule(kind, start=value, end=value)
    if kind in ("linear", "cosine"):
        return Schedule(kind, start=_number(spec["start"], f"{where}.start"), end=_number(spec["end"], f"{where}.end"))
    values, boundaries = spec["values"], spec["boundaries"]
    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"{where}.values must be a non-empty list of numbers, got {values!r}.")
    if not isinstance(boundaries, (list, tuple)) or len(boundaries) != len(values) - 1:
        raise ValueError(f"{where}.boundaries must be a list of {len(values) - 1} fractions of training (one fewer "
                         f"than values), got {boundaries!r}.")
    numbers = tuple(_number(v, f"{where}.values[{i}]") for i, v in enumerate(values))
    cuts = tuple(_number(b, f"{where}.boundaries[{i}]") for i, b in enumerate(boundaries))
    if any(not 0 < b < 1 for b in cuts) or any(a >= b for a, b in zip(cuts, cuts[1:], strict=False)):
        raise ValueError(f"{where}.boundaries must be increasing fractions of training strictly between 0 and 1, got "
                         f"{list(boundaries)}.")
    return Schedule(kind, start=numbers[0], end=numbers[-1], values=numbers, boundaries=cuts)
