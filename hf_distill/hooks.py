"""Features by module path: forward hooks that capture what named submodules output, without editing the model.

A module path is the dotted name `nn.Module.named_modules` gives it (``"vit.encoder.layer.1"``,
``"resnet.encoder.stages.0"``). `capture_features` registers one forward hook per path, collects the outputs while
the block runs and always removes its hooks when the block ends, whether it ends normally or with an exception::

    with capture_features(model, ["vit.encoder.layer.1", "vit.layernorm"]) as features:
        model(pixel_values=pixels)
    features["vit.layernorm"]  # [B, L, H]

Objectives ask for features with a ``requires`` entry ``"features:<path>"`` (`hf_distill.signals.feature_request`);
the task adapters capture them around their forward pass and put them in ``Signals.features``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .registry import did_you_mean
from .sharding import runnable

__all__ = ["capture_features", "find_module", "has_module", "probe_features", "first_tensor"]


def has_module(model: nn.Module, path: str) -> bool:
    """Whether ``model`` has a submodule at the dotted ``path`` (``""`` is the model itself)."""
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True


def find_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at the dotted ``path``; a `ValueError` naming the path, with the closest existing paths, when
    there is none."""
    if not isinstance(path, str):
        raise ValueError(f"A module path must be a dotted string like 'encoder.layer.0', got {path!r}.")
    try:
        return model.get_submodule(path)
    except AttributeError:
        hint = did_you_mean(path, [name for name, _ in model.named_modules() if name])
        parts = path.split(".")
        parent = next((".".join(parts[:n]) for n in range(len(parts) - 1, 0, -1)
                       if has_module(model, ".".join(parts[:n]))), "")  # the deepest part of the path that exists
        children = [f"{parent}.{name}" if parent else name
                    for name, _ in model.get_submodule(parent).named_children()]
        listing = f" Submodules of {parent!r}: " if parent else " Top-level modules: "
        listing += f"{', '.join(children[:12])}{', ...' if len(children) > 12 else ''}."
        raise ValueError(
            f"{type(model).__name__} has no module at path {path!r}.{hint}{listing} Paths are the names of "
            "`model.named_modules()`."
        ) from None


def first_tensor(output: Any) -> torch.Tensor:
    """The tensor a module produced: the output itself, or the first tensor of a tuple / list / ModelOutput (as
    returned by transformer layers, whose first element is the hidden state)."""
    if isinstance(output, torch.Tensor):
        return output
    values = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else ()
    for value in values:
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"The captured module output holds no tensor (got {type(output).__name__}).")


@contextmanager
def capture_features(model: nn.Module, paths: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Capture the outputs of the submodules at ``paths`` during the ``with`` block.

    Yields a dict, filled as the model runs, mapping each path to that module's output tensor (the first tensor when
    the module returns a tuple or a ModelOutput). A module called several times in one block keeps its last output.
    Outputs are kept as they are, attached to the autograd graph, so a loss on a student's features trains the
    student. Every path is checked before any hook is registered (`find_module`: a clear error with close matches),
    and the hooks are removed when the block exits, also on an exception.
    """
    modules = {path: find_module(model, path) for path in dict.fromkeys(paths)}
    captured: dict[str, torch.Tensor] = {}
    handles = []

    def hook_for(path: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            captured[path] = first_tensor(output)

        return hook

    try:
        for path, module in modules.items():
            handles.append(module.register_forward_hook(hook_for(path)))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def probe_features(model: nn.Module, paths: Sequence[str], inputs: dict[str, Any], **forward_kwargs: Any
                   ) -> tuple[dict[str, torch.Tensor], Any]:
    """Run ``model`` once on ``inputs`` in eval mode without gradients and return ``(features at paths, outputs)``;
    used to learn feature shapes before training (e.g. to size a projection). The training mode is restored. Under
    DeepSpeed ZeRO-3 every process must call it (the parameters are gathered)."""
    was_training = model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    model.eval()
    try:  # a ZeRO-3-partitioned model (not yet in its engine) is gathered whole for this one forward
        with runnable(model), capture_features(model, paths) as features:
            outputs = model(**inputs, **forward_kwargs)
    finally:
        model.train(was_training)
    return dict(features), outputs
