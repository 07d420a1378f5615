"""Distillation objectives: a registry of thin `nn.Module` wrappers around `hf_distill.losses`.

Importing this package registers the built-in objectives. Register your own with::

    from hf_distill.objectives import OBJECTIVES, Objective

    @OBJECTIVES.register
    class MyObjective(Objective):
        name = "my_objective"
        def forward(self, student, teacher):
            ...  # return the sum over student.mask items
"""

from . import embedding, features, logits, ranking  # noqa: F401  (registers the built-in objectives)
from .base import OBJECTIVES, Objective, WeightedObjective, build_objectives, normalize_objective_specs

__all__ = ["OBJECTIVES", "Objective", "WeightedObjective", "build_objectives", "normalize_objective_specs"]
