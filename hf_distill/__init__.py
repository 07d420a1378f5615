"""hf_distill: knowledge distillation for the Hugging Face stack.

    from hf_distill import DistillationConfig, DistillationTrainer, make_student

Names are imported on first use, so ``import hf_distill.data`` (or ``hf_distill.losses``) stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

# public name -> module that defines it
_EXPORTS = {
    "DistillationConfig": "config",
    "DistillationTrainer": "trainer",
    "OBJECTIVES": "objectives",
    "Objective": "objectives",
    "Signals": "signals",
    "TASKS": "tasks",
    "TaskAdapter": "tasks",
    "make_student": "students",
    "select_layers": "students",
    "build_model_card": "hub",
    "push_to_hub": "hub",
    "capture_features": "hooks",
}

__all__ = [
    "DistillationConfig",
    "DistillationTrainer",
    "OBJECTIVES",
    "Objective",
    "Signals",
    "TASKS",
    "TaskAdapter",
    "build_model_card",
    "capture_features",
    "losses",
    "make_student",
    "push_to_hub",
    "select_layers",
]

if TYPE_CHECKING:
    from . import losses
    from .config import DistillationConfig
    from .hooks import capture_features
    from .hub import build_model_card, push_to_hub
    from .objectives import OBJECTIVES, Objective
    from .signals import Signals
    from .students import make_student, select_layers
    from .tasks import TASKS, TaskAdapter
    from .trainer import DistillationTrainer


def __getattr__(name: str) -> Any:
    if name == "losses":
        return importlib.import_module(".losses", __name__)
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hf_distill' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
