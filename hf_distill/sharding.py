"""Which strategy shards a run (`strategy`), and whole parameters of a model that DeepSpeed ZeRO-3 has partitioned.

With ZeRO-3 in the training arguments, transformers builds every model loaded afterwards (``from_pretrained``,
``_from_config``) under ``deepspeed.zero.Init``: each process keeps only its partition, and a parameter outside a
forward pass of the engine is an empty placeholder (``param.ds_id`` set, ``param.ds_shape`` the real shape). What
hf_distill does with weights outside training — copying a teacher's layers into a student (`make_student`), running
a model once to learn its shapes (`hooks.probe_features`) — reads them through these helpers, which gather the
parameters for the duration (a collective: every process calls them together) and do nothing for other models.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator

import torch
from torch import nn

__all__ = ["ZERO3", "FSDP", "DEEPSPEED", "strategy", "shards_parameters", "accelerator_shards_parameters",
           "is_partitioned", "shape_of", "gathered",
           "runnable", "loaded_whole", "whole_state_dict", "load_whole_state_dict"]

ZERO3, DEEPSPEED, FSDP = "DeepSpeed ZeRO-3", "DeepSpeed", "FSDP"


def strategy(args: object) -> str | None:
    """`ZERO3`, `DEEPSPEED` (stages 0-2), `FSDP` or None, from the training arguments or the environment that
    ``accelerate launch`` sets from its configuration file."""
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    hf_config = getattr(args, "hf_deepspeed_config", None)
    deepspeed = bool(getattr(args, "deepspeed", None)) or os.environ.get("ACCELERATE_USE_DEEPSPEED", "") == "true"
    if (hf_config is not None and hf_config.is_zero3()) or is_deepspeed_zero3_enabled() or \
            os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3":
        return ZERO3
    if deepspeed:
        return DEEPSPEED
    if getattr(args, "fsdp", None) or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        return FSDP
    return None


def shards_parameters(args: object) -> bool:
    """Whether the student's (and a live teacher's) parameters themselves are sharded: ZeRO-3 or FSDP. Then every
    forward pass is a collective, and a weight read outside one is a shard or a placeholder. From the arguments, for
    checks before the `Trainer` exists; after, its accelerator says (`accelerator_shards_parameters`)."""
    return strategy(args) in (ZERO3, FSDP)


def accelerator_shards_parameters(accelerator: object) -> bool:
    """`shards_parameters` as the run's accelerator set it up (ZeRO-3 or FSDP)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    plugin = accelerator.state.deepspeed_plugin if accelerator.distributed_type == DistributedType.DEEPSPEED else None
    return plugin is not None and plugin.zero_stage == 3


def _partitioned(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_id")


def is_partitioned(model: nn.Module) -> bool:
    """Whether any parameter of ``model`` is a ZeRO-3 partition."""
    return any(_partitioned(p) for p in model.parameters())


def shape_of(tensor: torch.Tensor) -> torch.Size:
    """The tensor's shape; for a ZeRO-3 partition's placeholder, the whole parameter's."""
    return getattr(tensor, "ds_shape", tensor.shape)


@contextlib.contextmanager
def gathered(params: Iterable[torch.Tensor], modifier_rank: int | None = None) -> Iterator[None]:
    """Inside the block, the partitioned ones among ``params`` are whole on every process; with ``modifier_rank``,
    what that process writes into them is kept (broadcast, then partitioned again) when the block ends."""
    partitioned = [p for p in params if _partitioned(p)]
    if not partitioned:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=modifier_rank):
        yield


@contextlib.contextmanager
def runnable(model: nn.Module) -> Iterator[None]:
    """Inside the block ``model`` can run a forward pass: a model partitioned outside a ZeRO-3 engine (built under
    ``zero.Init``, not yet trained) is gathered whole; one inside an engine is left alone, its hooks gather each
    layer for its own forward (DeepSpeed marks such modules with ``ds_id``)."""
    with gathered(model.parameters() if not hasattr(model, "ds_id") else ()):
        yield


@contextlib.contextmanager
def loaded_whole(args: object) -> Iterator[None]:
    """Models loaded inside the block are whole on every process even though ``args`` (training arguments) switch
    ZeRO-3 on: for a teacher cached before the distillation (by one process), which the distillation's engine then
    partitions like any model."""
    from transformers.integrations.deepspeed import (
        is_deepspeed_zero3_enabled,
        set_hf_deepspeed_config,
        unset_hf_deepspeed_config,
    )

    config = getattr(args, "hf_deepspeed_config", None)
    if config is None or not is_deepspeed_zero3_enabled():
        yield
        return
    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        set_hf_deepspeed_config(config)


def whole_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with every partitioned parameter gathered and copied out, one at a time (so no more than
    one whole parameter beyond the copies is held at once). Tied parameters stay one tensor under both names."""
    state = model.state_dict(keep_vars=True)
    copies: dict[int, torch.Tensor] = {}
    for key, tensor in state.items():
        if id(tensor) not in copies:
            with gathered([tensor]):
                copies[id(tensor)] = tensor.detach().clone()
        state[key] = copies[id(tensor)]
    return state


def load_whole_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """``model.load_state_dict(state_dict, strict=True)`` for a partitioned model: each parameter is gathered, written
    (cast to its dtype) and partitioned again; the same missing / unexpected keys and shape mismatches raise."""
    targets = model.state_dict(keep_vars=True)
    missing, unexpected = sorted(set(targets) - set(state_dict)), sorted(set(state_dict) - set(targets))
    if missing or unexpected:
        raise RuntimeError(f"Error(s) in loading state_dict: missing keys {missing}, unexpected keys {unexpected}.")
    with torch.no_grad():
        for key, target in targets.items():
            source = state_dict[key]
            with gathered([target], modifier_rank=0):
                if target.shape != source.shape:
                    raise RuntimeError(f"size mismatch for {key}: copying a param with shape {tuple(source.shape)}, "
                                       f"the shape in the current model is {tuple(target.shape)}.")
                target.copy_(source)
