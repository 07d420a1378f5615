"""The objective interface, its registry, and building objectives from plain specs."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from ..registry import Registry, did_you_mean
from ..schedules import Schedule, parse_schedule
from ..signals import FEATURE_PREFIX, SIGNAL_NAMES, Signals

__all__ = ["Objective", "OBJECTIVES", "WeightedObjective", "build_objectives", "normalize_objective_specs",
           "positive_number"]


class Objective(nn.Module):
    """One distillation term. Subclasses are thin wrappers around a pure function in `hf_distill.losses`.

    Class attributes:
        name: the registry name used in configs and recipes (``kl``, ``ce``, ...).
        requires: the `Signals` fields this objective reads (from the student, and from the teacher when
            ``uses_teacher``). The student is asked for hidden states or attentions only when some objective
            requires them. An entry ``"features:<module path>"`` (`hf_distill.signals.feature_request`) asks for that
            module's output in ``Signals.features``; such objectives set ``requires`` per instance.
        teacher_requires: what it reads from the teacher when that differs from ``requires`` (e.g.
            ``aligned_contrastive`` reads the student's embeddings but the teacher's embeddings of the positives).
        uses_teacher: False for objectives that need only the student and the labels (``ce``).

    ``forward(student, teacher)`` returns the **sum** over the batch's counted items (``student.mask``), either
    one tensor or a ``dict`` of named parts; the trainer divides by the number of items in the whole accumulated
    batch, weights, sums and logs each part. Parameters of an objective (e.g. projections) are trained with the
    student.
    """

    name: ClassVar[str] = ""
    requires: ClassVar[frozenset[str]] = frozenset({"logits"})
    uses_teacher: ClassVar[bool] = True
    #: What this objective reads from the teacher when that differs from ``requires`` (None: ``requires``).
    teacher_requires: ClassVar[frozenset[str] | None] = None
    #: Numeric parameters that may follow a schedule over training (`hf_distill.schedules`), e.g. temperature.
    schedulable: ClassVar[tuple[str, ...]] = ()

    def teacher_signals(self) -> frozenset[str]:
        """The `Signals` fields this objective reads from the teacher."""
        return self.requires if self.teacher_requires is None else self.teacher_requires

    def setup(self, task: Any, student: nn.Module, teacher: nn.Module) -> None:
        """Called once by the trainer with both models, before training: build what depends on their shapes
        (e.g. a projection between widths) and check compatibility. Default: nothing."""

    def link(self, objectives: list[Objective]) -> None:
        """Called once by the trainer after every objective's `setup`, with all of them (this one included): an
        objective that works through another's parameters (e.g. its projection) finds them here. Default:
        nothing."""

    def forward(self, student: Signals, teacher: Signals | None) -> torch.Tensor | dict[str, torch.Tensor]:
        raise NotImplementedError

    @classmethod
    def parameter_names(cls) -> list[str]:
        """The keyword arguments this objective accepts (from its ``__init__``)."""
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # drop `self`
        return [p.name for p in params if p.kind in named]


OBJECTIVES: Registry[type[Objective]] = Registry("objective")


def positive_number(value: Any, name: str) -> float:
    """``value`` as a float, checked to be a finite number > 0 (an objective parameter called ``name``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < float("inf")):
        raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}.")
    return float(value)

_SPEC_KEYS = ("name", "weight")


def normalize_objective_specs(specs: Any) -> list[dict[str, Any]]:
    """Check a list of objective specs and return plain dicts ``{"name", "weight", **params}``.

    Raises ``ValueError`` naming the offending entry for a wrong type, an unknown name (with a did-you-mean), a
    negative or non-finite weight, an unknown parameter (listing the accepted ones) or a bad parameter value.
    """
    if isinstance(specs, Mapping) or isinstance(specs, str) or not isinstance(specs, (list, tuple)):
        raise ValueError(
            f"`objectives` must be a list of mappings like [{{'name': 'kl', 'weight': 1.0}}], got {specs!r}."
        )
    if not specs:
        raise ValueError("`objectives` is empty: give at least one, e.g. [{'name': 'kl', 'weight': 1.0}].")
    normalized = []
    for i, spec in enumerate(specs):
        where = f"`objectives[{i}]`"
        if isinstance(spec, str):
            spec = {"name": spec}
        if not isinstance(spec, Mapping):
            raise ValueError(f"{where} must be a mapping like {{'name': 'kl', 'weight': 1.0}}, got {spec!r}.")
        spec = dict(spec)
        if "name" not in spec:
            raise ValueError(f"{where} has no `name`; registered objectives: {', '.join(OBJECTIVES.names())}.")
        name = spec["name"]
        if name not in OBJECTIVES:
            raise ValueError(f"{where}: {OBJECTIVES.unknown_message(name)}")
        weight = spec.get("weight", 1.0)
        weight_schedule = parse_schedule(weight, f"{where}.weight")
        for value in weight_schedule.extremes() if weight_schedule else (weight,):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= float(value) < float("inf"):
                raise ValueError(f"{where}.weight must be a finite number >= 0, got {weight!r}; or a schedule of "
                                 "such numbers, e.g. {'schedule': 'linear', 'start': 1.0, 'end': 0.0}.")
        if weight_schedule is None:
            spec["weight"] = float(weight)
        cls = OBJECTIVES.get(name)
        params = {k: v for k, v in spec.items() if k not in _SPEC_KEYS}
        accepted = cls.parameter_names()
        for key in params:
            if key not in accepted:
                hint = did_you_mean(key, accepted)
                allowed = ", ".join(accepted) if accepted else "none"
                raise ValueError(f"{where}: objective {name!r} has no parameter {key!r}.{hint} Accepted: {allowed}.")
        scheduled = {}
        for key, value in params.items():
            if key in cls.schedulable:
                schedule = parse_schedule(value, f"{where}.{key}")
                if schedule is not None:
                    scheduled[key] = schedule
            elif isinstance(value, Mapping) and "schedule" in value:
                raise ValueError(f"{where}: `{key}` of {name!r} cannot follow a schedule (schedulable: "
                                 f"{', '.join(cls.schedulable) or 'none'}). Give a fixed value.")
        # The constructor validates values (e.g. temperature > 0): every value a schedule reaches is tried.
        base = {**params, **{k: sched.start for k, sched in scheduled.items()}}
        trials = [base] + [{**base, key: value} for key, sched in scheduled.items() for value in sched.extremes()]
        for values in trials:
            try:
                cls(**values)
            except (TypeError, ValueError) as err:
                raise ValueError(f"{where} ({name!r}): {err}") from err
        normalized.append(spec)
    return normalized


class WeightedObjective(nn.Module):
    """An objective with its weight and the name its loss is logged under. ``schedules`` maps ``"weight"`` and
    scheduled parameter names to their `Schedule`; `apply_schedules` sets their values for a point of training."""

    def __init__(self, key: str, weight: float, objective: Objective,
                 schedules: dict[str, Schedule] | None = None) -> None:
        super().__init__()
        self.key = key
        self.weight = weight
        self.objective = objective
        self.schedules = dict(schedules or {})

    def apply_schedules(self, progress: float) -> dict[str, float]:
        """Set every scheduled value for training progress ``progress`` in [0, 1]; returns them by name."""
        values = {}
        for name, schedule in self.schedules.items():
            value = schedule(progress)
            if name == "weight":
                self.weight = value
            else:
                setattr(self.objective, name, value)
            values[name] = value
        return values


def build_objectives(specs: list[dict[str, Any]]) -> nn.ModuleList:
    """Instantiate normalized specs. Log keys are the objective names, suffixed ``_1``, ``_2`` on repeats."""
    built = nn.ModuleList()
    seen: dict[str, int] = {}
    for spec in specs:
        name = spec["name"]
        count = seen.get(name, 0)
        seen[name] = count + 1
        key = name if count == 0 else f"{name}_{count}"
        schedulable = ("weight", *OBJECTIVES.get(name).schedulable)
        schedules = {k: parse_schedule(v, k) for k, v in spec.items() if k in schedulable}
        schedules = {k: v for k, v in schedules.items() if v is not None}
        params = {k: (schedules[k].start if k in schedules else v) for k, v in spec.items() if k not in _SPEC_KEYS}
        weight = schedules["weight"].start if "weight" in schedules else spec["weight"]
        built.append(WeightedObjective(key, weight, OBJECTIVES.get(name)(**params), schedules))
    for item in built:
        asked = item.objective.requires | item.objective.teacher_signals()
        unknown = {r for r in asked if not r.startswith(FEATURE_PREFIX)} - SIGNAL_NAMES
        if unknown:
            raise ValueError(f"Objective {item.key!r} requires unknown signals {sorted(unknown)}.")
    return built
