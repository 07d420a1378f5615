"""Student initialisation by layer selection (the DistilBERT recipe).

DistilBERT (Sanh et al., 2019, arXiv:1910.01108) keeps the teacher's architecture but halves the number of
transformer layers, and starts the student from the teacher's own weights: "initialize the student from the
teacher by taking one layer out of two". Starting from a copy of the teacher instead of from random weights is
one of the ingredients the paper credits for the student's quality, and it works for any model built as one
stack of identical blocks (BERT, RoBERTa, GPT-2, Llama, Qwen2, Mistral, ViT, DeiT, ...).

:func:`make_student` builds such a student for a Hugging Face model:

* the student has the teacher's exact class and a deep copy of its config, with the layer count reduced to the
  number of kept layers (per-layer config entries such as ``layer_types`` are sub-selected to match);
* everything outside the layer stack (embeddings, final norm, pooler, task head, tied weights) is copied from
  the teacher, and student layer ``j`` is a copy of teacher layer ``layers[j]``.

:func:`select_layers` picks evenly spread layers, always keeping the first and the last one. For a 12-layer
teacher and 6 student layers it returns ``[0, 2, 4, 7, 9, 11]``, the selection used to build the original
DistilBERT checkpoint from BERT-base.
"""

from __future__ import annotations

import copy
import itertools
import operator
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.utils import logging

from .sharding import is_partitioned, load_whole_state_dict, whole_state_dict

logger = logging.get_logger(__name__)

__all__ = ["make_student", "select_layers"]

_SUPPORTED_HINT = (
    "make_student supports models whose transformer layers form a single stack (decoder-only and encoder-only "
    "models such as BERT, RoBERTa, DistilBERT, GPT-2, Llama, Qwen2, Mistral, ViT, DeiT, ...). For other "
    "architectures, build the student yourself (for example `type(teacher)(smaller_config)` or any other "
    "PreTrainedModel) and pass that student model explicitly instead of using make_student."
)

# Config lists that can have as many entries as the model has layers without being per-layer settings.
_NOT_PER_LAYER_ATTRIBUTES = frozenset(
    {
        "architectures",
        "bad_words_ids",
        "begin_suppress_tokens",
        "crop_size",
        "depths",
        "forced_decoder_ids",
        "image_size",
        "input_size",
        "out_features",
        "out_indices",
        "patch_size",
        "stage_names",
        "suppress_tokens",
    }
)

# Config lists that hold layer *indices* (not one value per layer); they are renumbered, not sub-selected.
_LAYER_INDEX_ATTRIBUTES = frozenset({"mlp_only_layers", "moe_layers"})


def select_layers(total: int, num_layers: int) -> list[int]:
    """Pick ``num_layers`` evenly spread layer indices out of ``total``, keeping the first and the last layer.

    The selection is defined as ``[round(i * (total - 1) / (num_layers - 1)) for i in range(num_layers)]`` using
    Python's :func:`round` (ties go to the even integer), and as ``[0]`` when ``num_layers == 1``. The indices are
    always strictly increasing, and ``num_layers == total`` selects every layer.

    Examples::

        select_layers(12, 6) == [0, 2, 4, 7, 9, 11]  # DistilBERT's choice for BERT-base
        select_layers(6, 3) == [0, 2, 5]  # 2.5 rounds to 2 (ties to even)
        select_layers(4, 2) == [0, 3]
        select_layers(5, 5) == [0, 1, 2, 3, 4]

    Args:
        total: Number of layers of the teacher (at least 1).
        num_layers: Number of layers to keep, between 1 and ``total``.

    Raises:
        ValueError: if ``total`` or ``num_layers`` is out of range.
    """
    total = _as_int(total, "total")
    num_layers = _as_int(num_layers, "num_layers")
    if total < 1:
        raise ValueError(f"`total` must be at least 1, got {total}.")
    if not 1 <= num_layers <= total:
        raise ValueError(f"`num_layers` must be between 1 and the teacher's {total} layers, got {num_layers}.")
    if num_layers == 1:
        return [0]
    return [round(i * (total - 1) / (num_layers - 1)) for i in range(num_layers)]


def make_student(
    teacher: PreTrainedModel,
    layers: Sequence[int] | None = None,
    num_layers: int | None = None,
) -> PreTrainedModel:
    """Build a shallower copy of ``teacher`` that keeps only some of its layers (DistilBERT-style initialisation).

    DistilBERT initialises its student "from the teacher by taking one layer out of two". This function
    generalises that: pass the teacher layers to keep explicitly (``layers``) or how many to keep
    (``num_layers``, chosen with :func:`select_layers`, so the first and last layers are always kept).

    The student:

    * is a new instance of ``type(teacher)`` built from a deep copy of ``teacher.config`` whose
      ``num_hidden_layers`` is the number of kept layers. Config lists with one entry per layer (for example
      ``layer_types`` in Qwen2/Gemma-style configs) are sub-selected to the kept layers, and lists of layer
      indices (``mlp_only_layers``, ``moe_layers``) are renumbered;
    * gets student layer ``j`` from teacher layer ``layers[j]`` and every weight outside the layer stack
      (embeddings, final norm, pooler, task head) from the teacher. Weights that are tied in the teacher
      (input/output embeddings) stay tied;
    * has the teacher's dtype and device (that of the teacher's first parameter; a teacher dispatched over
      several devices yields a student on a single device), the teacher's train/eval mode and a copy of its
      ``generation_config``. All student parameters are trainable, whatever the teacher's ``requires_grad``.

    The teacher itself is not modified and shares no tensors with the student.

    The layer stack is found generically: it is the one ``nn.ModuleList`` whose length equals the layer count
    (``bert.encoder.layer``, ``transformer.h``, ``model.layers``, ``vit.layers``, ...). ModuleLists nested
    inside another candidate (for example per-layer expert lists) are ignored.

    Args:
        teacher: The model to shrink.
        layers: Teacher layer indices to keep, strictly increasing, each in ``[0, num_hidden_layers)``.
        num_layers: Number of layers to keep; the indices are chosen with :func:`select_layers`.
            Exactly one of ``layers`` and ``num_layers`` must be given.

    Returns:
        The student model.

    Raises:
        ValueError: if both or neither of ``layers`` and ``num_layers`` are given, if ``layers`` is invalid, or if
            the architecture has no single layer stack (for example encoder-decoder models such as T5 or BART).
        TypeError: if ``teacher`` is not a ``PreTrainedModel`` or ``layers`` contains non-integers.
    """
    if not isinstance(teacher, PreTrainedModel):
        raise TypeError(f"`teacher` must be a transformers PreTrainedModel, got {type(teacher).__name__}.")
    if (layers is None) == (num_layers is None):
        raise ValueError(
            "Pass exactly one of `layers` (the teacher layer indices to keep) and `num_layers` (how many evenly "
            f"spread layers to keep); got layers={layers!r} and num_layers={num_layers!r}."
        )

    total = _teacher_layer_count(teacher)
    if layers is None:
        kept = select_layers(total, num_layers)
    else:
        kept = _check_layers(layers, total)

    stack_name = _find_layer_stack(teacher, total)
    # The same ModuleList may be reachable under several names (aliases); state_dict lists every one of them.
    stack = teacher.get_submodule(stack_name)
    stack_prefixes = sorted(
        {f"{name}." for name, module in teacher.named_modules(remove_duplicate=False) if module is stack}
    )

    if getattr(teacher.config, "scale_attn_by_inverse_layer_idx", False):
        logger.warning(
            "The teacher config sets `scale_attn_by_inverse_layer_idx=True`: attention scaling depends on the layer "
            "position, so student layers will not compute exactly what the teacher layers they were copied from did."
        )

    config = _student_config(teacher.config, kept, total)
    # A teacher partitioned by DeepSpeed ZeRO-3 holds empty placeholders: its weights are gathered to be copied.
    teacher_state = whole_state_dict(teacher) if is_partitioned(teacher) else teacher.state_dict()
    state_dict = _student_state_dict(teacher_state, stack_prefixes, kept)

    device = teacher.device
    with torch.device(device):
        student = type(teacher)._from_config(config, dtype=teacher.dtype)  # partitioned too under ZeRO-3

    # Match each student tensor's dtype to its teacher source before copying (some models keep selected modules in
    # float32 while the rest is in half precision); `load_state_dict` would otherwise cast silently. Assigning
    # `.data` keeps tied parameters tied. Devices are left alone: the whole student lives on `device`.
    partitioned = is_partitioned(student)
    student_tensors = student.state_dict(keep_vars=True)
    for key, source in state_dict.items():
        target = student_tensors.get(key)
        if target is not None and target.dtype != source.dtype and not partitioned:
            target.data = target.data.to(dtype=source.dtype)

    try:
        if partitioned:
            load_whole_state_dict(student, state_dict)
        else:
            student.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"Could not copy the weights of the kept layers {kept} of {type(teacher).__name__} into a "
            f"{len(kept)}-layer student: the layers of this model are not interchangeable (their shapes or "
            f"structure depend on their position). {_SUPPORTED_HINT}\nOriginal error: {err}"
        ) from err

    if _embeddings_tied(teacher) and not _embeddings_tied(student):
        raise RuntimeError(
            f"The teacher's input and output embeddings are tied but the {type(teacher).__name__} student's are not; "
            "please report this as a bug in hf_distill."
        )

    student.train(teacher.training)
    if getattr(teacher, "generation_config", None) is not None:
        student.generation_config = copy.deepcopy(teacher.generation_config)

    logger.info(
        f"Built a {len(kept)}-layer student from the {total}-layer {type(teacher).__name__} teacher, keeping teacher "
        f"layers {kept}; parameters: teacher {_num_parameters(teacher):,}, student {_num_parameters(student):,}."
    )
    return student


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"`{name}` must be an integer, got {value!r}.")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"`{name}` must be an integer, got {value!r} ({type(value).__name__}).") from None


def _unsupported(teacher: PreTrainedModel, reason: str) -> ValueError:
    return ValueError(
        f"Cannot build a layer-selected student from {type(teacher).__name__}: {reason}. {_SUPPORTED_HINT}"
    )


def _teacher_layer_count(teacher: PreTrainedModel) -> int:
    # `num_hidden_layers` is the standard name; configs such as GPT2Config (`n_layer`) or DistilBertConfig
    # (`n_layers`) map it to their own attribute through `attribute_map`.
    total = getattr(teacher.config, "num_hidden_layers", None)
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:
        raise _unsupported(teacher, "its config has no usable `num_hidden_layers` (it may be a composite model)")
    return total


def _check_layers(layers: Sequence[int], total: int) -> list[int]:
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
        raise TypeError(f"`layers` must be a sequence of integers, got {type(layers).__name__}.")
    kept = [_as_int(index, "layers entry") for index in layers]
    if not kept:
        raise ValueError("`layers` is empty: keep at least one teacher layer.")
    for index in kept:
        if not 0 <= index < total:
            raise ValueError(f"`layers` contains {index} but the teacher has {total} layers (valid: 0..{total - 1}).")
    for previous, current in itertools.pairwise(kept):
        if current == previous:
            raise ValueError(f"`layers` contains {current} more than once; every teacher layer can be kept only once.")
        if current < previous:
            raise ValueError(
                f"`layers` must be strictly increasing, but {current} comes after {previous} (got {kept}); student "
                "layers keep the teacher's layer order."
            )
    return kept


def _find_layer_stack(teacher: PreTrainedModel, total: int) -> str:
    """Return the module name of the single ``nn.ModuleList`` holding the teacher's ``total`` layers."""
    if getattr(teacher.config, "is_encoder_decoder", False):
        raise _unsupported(teacher, "it is an encoder-decoder model with separate encoder and decoder layer stacks")
    candidates = [
        name
        for name, module in teacher.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) == total and name
    ]
    # Drop lists living inside another candidate (e.g. a per-layer list of experts that happens to have `total`
    # entries): only the outermost list can be the layer stack.
    outermost = [name for name in candidates if not any(name.startswith(f"{other}.") for other in candidates)]
    if len(outermost) != 1:
        found = ", ".join(f"`{name}`" for name in outermost) if outermost else "none"
        raise _unsupported(
            teacher,
            f"expected exactly one nn.ModuleList with {total} entries (config.num_hidden_layers) holding the layers, "
            f"found {len(outermost)} ({found})",
        )
    return outermost[0]


def _student_config(teacher_config: PreTrainedConfig, kept: list[int], total: int) -> PreTrainedConfig:
    """Deep-copy the teacher config and shrink everything that is indexed by layer to the kept layers."""
    config = copy.deepcopy(teacher_config)
    per_layer_overrides = None
    if getattr(config, "is_heterogeneous", False):
        # Heterogeneous configs (transformers 5) store per-layer overrides keyed by layer index.
        per_layer_overrides = teacher_config.to_dict().get("per_layer_config") or {}
        per_layer_overrides = {int(index): overrides for index, overrides in per_layer_overrides.items()}

    for name, value in list(vars(config).items()):
        if name.startswith("_") or not isinstance(value, (list, tuple)):
            continue
        if name in _LAYER_INDEX_ATTRIBUTES:
            old_indices = set(value)
            renumbered = [new for new, old in enumerate(kept) if old in old_indices]
            setattr(config, name, type(value)(renumbered))
        elif (
            len(value) == total
            and name not in _NOT_PER_LAYER_ATTRIBUTES
            and not name.endswith(("token_id", "token_ids"))
        ):
            setattr(config, name, type(value)(value[index] for index in kept))

    config.num_hidden_layers = len(kept)
    if per_layer_overrides is not None:
        student_overrides = {
            new: per_layer_overrides[old] for new, old in enumerate(kept) if old in per_layer_overrides
        }
        config.per_layer_config = student_overrides or None
    return config


def _student_state_dict(
    teacher_state: dict[str, torch.Tensor], stack_prefixes: list[str], kept: list[int]
) -> dict[str, torch.Tensor]:
    """Rename ``<stack>.<kept[j]>.*`` to ``<stack>.<j>.*``, drop the other layers and keep everything else."""
    new_index = {old: new for new, old in enumerate(kept)}
    state: dict[str, torch.Tensor] = {}
    for key, tensor in teacher_state.items():
        prefix = next((p for p in stack_prefixes if key.startswith(p)), None)
        if prefix is None:
            state[key] = tensor
            continue
        index, _, rest = key[len(prefix) :].partition(".")
        old = int(index)
        if old in new_index:
            state[f"{prefix}{new_index[old]}.{rest}"] = tensor
    return state


def _embeddings_tied(model: PreTrainedModel) -> bool:
    try:
        input_embeddings = model.get_input_embeddings()
        output_embeddings = model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return False
    if input_embeddings is None or output_embeddings is None:
        return False
    input_weight = getattr(input_embeddings, "weight", None)
    return input_weight is not None and getattr(output_embeddings, "weight", None) is input_weight


def _num_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())
