"""Checks that make bad input fail fast, with a message naming the problem and one fix, before any work is done.

Three moments:

* when the trainer is built (`check_models`, `check_output_dir_writable`, `check_dtype_supported`): what can be
  seen on the models and the config alone;
* before the first optimizer step (`DistillationTrainer.train` runs one batch of the training data through the
  teacher, the student and every objective, without gradients, dropout or touching any random state): what only
  a real batch shows (sequences longer than the model's positions, labels missing or out of range, a teacher or a
  cache that produces NaN/Inf, an objective asking for signals a model does not return);
* at every training step (`NonFiniteLossError`): a NaN/Inf loss, with the objective that produced it named.

Every message is listed, with its cause and fix, in docs/troubleshooting.md.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .signals import Signals

__all__ = [
    "NonFiniteLossError",
    "NONFINITE_POLICIES",
    "check_models",
    "check_dtype_supported",
    "check_output_dir_writable",
    "check_positions",
    "check_image_size",
    "check_labels",
    "check_signals_present",
    "nonfinite_report",
    "save_atomically",
    "remote_code_guard",
]

#: What the trainer does when a training step's loss is NaN or infinite (`DistillationConfig.nonfinite_loss`).
NONFINITE_POLICIES = ("error", "skip", "ignore")

_STAGING_PREFIX = ".hf_distill-saving-"

#: Signals fields whose non-finite values are reported (the rest are masks, labels and indices).
_FLOAT_FIELDS = ("logits", "topk_logits", "tail_mass", "embeddings", "scores", "batch_scores")


class NonFiniteLossError(FloatingPointError):
    """A training step produced a NaN or infinite loss (`DistillationConfig.nonfinite_loss="error"`)."""


@contextmanager
def remote_code_guard(reference: str, fix: str) -> Iterator[None]:
    """Turn transformers' refusal to run a model's own Python code (``trust_remote_code`` not set) into an error that
    says which setting allows it. Code from a model repository runs on this machine, so it is never allowed by
    default; ``fix`` names the explicit setting (a recipe key or a keyword argument)."""
    try:
        yield
    except ValueError as err:
        if "trust_remote_code" not in str(err):
            raise
        raise ValueError(
            f"{reference!r} needs its own Python code to load (its config maps the model to files in the repository), "
            f"and running a repository's code is off by default. Read that code first; if you trust it, {fix}."
        ) from err


def _meta_parameters(model: nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.is_meta][:3]


def check_models(student: nn.Module, teacher: nn.Module | None) -> None:
    """The student and teacher are real, distinct models with weights in memory."""
    if teacher is not None and teacher is student:
        raise ValueError(
            "`teacher_model` is the student itself: freezing the teacher would freeze the student. Pass a separate "
            "copy (`copy.deepcopy(model)`), or for self-distillation into an adapter a PEFT student with "
            "`teacher_is_student_base=True`."
        )
    for role, model in (("student", student), ("teacher", teacher)):
        if model is None:
            continue
        meta = _meta_parameters(model)
        if meta:
            raise ValueError(
                f"The {role}'s weights are on the meta device (e.g. {', '.join(meta)}): it was built without loading "
                "weights (`init_empty_weights`, `device_map='meta'`). Load it with `from_pretrained(...)` without a "
                "meta device map, or materialise it (`model.to_empty(device=...)` then load a state dict)."
            )


def check_dtype_supported(dtype: str, device: torch.device | str) -> None:
    """Refuse a teacher dtype the training device cannot compute in (bfloat16 on a GPU older than Ampere)."""
    device = torch.device(device)
    if dtype == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(
            "`teacher_dtype='bfloat16'`: this GPU does not support bfloat16 (it needs compute capability 8.0, "
            "Ampere or newer). "
            "Use teacher_dtype='float16' (watch for overflow) or 'float32'."
        )


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_dir_writable(output_dir: str | os.PathLike) -> None:
    """``output_dir`` (or, when it does not exist yet, its nearest existing parent) accepts new files. Probed with a
    temporary file that is removed at once, so nothing is left behind."""
    target = Path(output_dir)
    base = _nearest_existing(target)
    if not base.is_dir():
        raise ValueError(
            f"`output_dir`: {str(target)!r} cannot be created because {str(base)!r} is a file. Choose another "
            "output_dir."
        )
    try:
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as err:
        raise PermissionError(
            f"`output_dir`: cannot write in {str(base)!r} ({err.strerror or err}), so {str(target)!r} cannot hold "
            "the student. Choose a writable output_dir (or fix the folder's permissions) before training."
        ) from None


def check_positions(model: nn.Module, batch: dict[str, Any], role: str) -> None:
    """Sequences no longer than the model's learned position table (a longer one fails deep inside the model with
    an index error)."""
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None)
    ids = batch.get("input_ids")
    if not isinstance(limit, int) or not isinstance(ids, torch.Tensor) or ids.dim() < 2:
        return
    if getattr(config, "position_embedding_type", "absolute") not in ("absolute", None) or getattr(
        config, "rope_theta", None
    ) is not None or getattr(config, "rope_parameters", None) is not None:
        return  # relative / rotary positions have no hard table limit
    length = ids.shape[-1]
    if length > limit:
        raise ValueError(
            f"The training batches hold sequences of {length} tokens but the {role} ({type(model).__name__}) has "
            f"{limit} positions (`max_position_embeddings`). Truncate the data to at most {limit} tokens (e.g. "
            f"`tokenizer(..., truncation=True, max_length={limit})`, or `data.max_length` in a recipe)."
        )


def check_image_size(model: nn.Module, batch: dict[str, Any], role: str) -> None:
    """Images of the size and channel count a patch-embedding model (ViT, DeiT, ...) was built for; CNNs accept any
    size and are not checked."""
    config = getattr(model, "config", None)
    pixels = batch.get("pixel_values")
    if not isinstance(pixels, torch.Tensor) or pixels.dim() != 4 or config is None:
        return
    channels = getattr(config, "num_channels", None)
    if isinstance(channels, int) and pixels.shape[1] != channels:
        raise ValueError(
            f"The training images have {pixels.shape[1]} channels but the {role} ({type(model).__name__}) expects "
            f"{channels}. Convert the images (e.g. `image.convert('RGB')`) or build the model with "
            f"num_channels={pixels.shape[1]}."
        )
    size = getattr(config, "image_size", None)
    if getattr(config, "patch_size", None) is None or size is None:
        return
    expected = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    if tuple(pixels.shape[-2:]) != expected:
        raise ValueError(
            f"The training images are {pixels.shape[-2]}x{pixels.shape[-1]} pixels but the {role} "
            f"({type(model).__name__}) was built for {expected[0]}x{expected[1]} (`image_size`). Resize them to that "
            "size (the model's image processor does), or use a model configured for your image size."
        )


def check_labels(student: Signals, objectives: Iterable[Any]) -> None:
    """Objectives that read labels find some, and class labels index a real class."""
    needing = [item.key for item in objectives if "labels" in item.objective.requires]
    if not needing:
        return
    labels = student.labels
    if labels is None:
        raise ValueError(
            f"Objective(s) {needing} need labels but the training batches have none (no `labels` / `label` "
            "column). Add the label column to the data, or drop those objectives."
        )
    counted = labels[labels != -100]
    if counted.numel() == 0:
        raise ValueError(
            f"Objective(s) {needing} need labels but every label in the first training batch is -100 (ignored). "
            "Check the data's label column and the collator."
        )
    width = student.logits.shape[-1] if student.logits is not None else None
    if width is not None and counted.dtype != torch.bool and not torch.is_floating_point(counted):
        bad = counted[(counted < 0) | (counted >= width)]
        if bad.numel():
            raise ValueError(
                f"Label {int(bad[0])} is outside the student's {width} outputs (valid: 0 to {width - 1}, or -100 to "
                "ignore). Build the student (and teacher) with num_labels covering every label, or fix the data."
            )


def check_signals_present(signals: Signals | None, requires: Iterable[str], objectives: Iterable[Any], role: str,
                          model: nn.Module | None) -> None:
    """The hidden states / attentions an objective reads were produced: some models leave them out silently
    (attentions under SDPA or flash attention); the rows' positives' embeddings exist only when the data gives each
    row a positive. Other signals are checked where they are used."""
    if signals is None:
        return
    objectives = list(objectives)
    for name in sorted(set(requires) & {"hidden_states", "attentions", "positive_embeddings"}):
        if getattr(signals, name, None) is not None:
            continue
        users = [item.key for item in objectives
                 if name in (item.objective.requires if role == "student" else item.objective.teacher_signals())]
        if not users:
            continue
        fix = {
            "positive_embeddings": "Give each training row a relevant `positive` text (recipes: a `positive` column, "
            "`data.columns.positive`, or `bundled: corpus_pairs`; in code: "
            "`hf_distill.tasks.embedding.add_positive_tokens(dataset, tokenizer)`).",
            "attentions": "Load the model with attn_implementation='eager' (SDPA and flash attention return no "
            "attention weights).",
            "hidden_states": "Use a model whose forward accepts `output_hidden_states=True`, or drop the objective.",
        }[name]
        what = type(model).__name__ if model is not None else "the teacher source"
        raise ValueError(f"Objective(s) {users} need the {role}'s `{name}` but {what} returned none. {fix}")


def _count_nonfinite(tensor: torch.Tensor) -> tuple[int, int]:
    tensor = tensor.detach()
    return int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())


def nonfinite_report(signals: Signals | None, role: str) -> list[str]:
    """``["the teacher's logits hold 3 NaN and 0 Inf values", ...]`` for each float signal that is not finite."""
    if signals is None:
        return []
    found = []
    for name in _FLOAT_FIELDS:
        value = getattr(signals, name, None)
        if isinstance(value, torch.Tensor) and torch.is_floating_point(value) and not torch.isfinite(value).all():
            nans, infs = _count_nonfinite(value)
            found.append(f"the {role}'s {name} hold {nans} NaN and {infs} Inf values")
    for name in ("hidden_states", "attentions"):
        for layer, value in enumerate(getattr(signals, name, None) or ()):
            if isinstance(value, torch.Tensor) and not torch.isfinite(value).all():
                nans, infs = _count_nonfinite(value)
                found.append(f"the {role}'s {name}[{layer}] hold {nans} NaN and {infs} Inf values")
                break
    return found


def save_atomically(output_dir: str | os.PathLike, write: Callable[[str], None],
                    last: tuple[str, ...] = ("config.json",)) -> None:
    """Run ``write(staging_dir)`` in a fresh folder inside ``output_dir``, then move what it wrote into place.

    A model folder "looks complete" when it has its ``config.json``: that file is removed from ``output_dir`` before
    anything moves and moved in last, and every file moves with one ``os.replace`` (atomic on one filesystem). So an
    interrupted save leaves either the previous model or no ``config.json``, never a half-written model that loads.
    A failed write (e.g. the disk is full) moves nothing, removes the staging folder and says so.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for stale in output_dir.glob(f"{_STAGING_PREFIX}*"):  # left by a killed save (only the writing process calls this)
        shutil.rmtree(stale, ignore_errors=True)
    staging = output_dir / f"{_STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        try:
            write(str(staging))
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise OSError(
                    errno.ENOSPC,
                    f"No space left on the device while saving the model to {str(output_dir)!r}: nothing was moved "
                    "into place (what the folder held before is unchanged). Free some space, or set another "
                    "output_dir, and save again.",
                ) from err
            raise
        written = sorted(p.relative_to(staging) for p in staging.rglob("*") if p.is_file())
        for name in last:
            if (staging / name).exists():
                (output_dir / name).unlink(missing_ok=True)
        ordered = [p for p in written if str(p) not in last] + [p for p in written if str(p) in last]
        for relative in ordered:
            target = output_dir / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / relative, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
