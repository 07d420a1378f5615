"""Feature objectives: the student imitates the teacher's intermediate representations.

- ``hidden_mse``: hidden states of mapped layer pairs, token by token (FitNets hints, TinyBERT), with a learned
  projection when the widths differ;
- ``attention_kl``: attention distributions of mapped layer pairs, row by row (MiniLM, TinyBERT);
- ``feature_mse``: the output of any module, named by its dotted path in each model and captured by a forward hook
  (`hf_distill.hooks`), pooled to one vector per example and projected (e.g. a CNN student and a ViT teacher).

Layer maps (``layers``) pair a student layer with a teacher layer, as indices into the models' ``hidden_states``
(index 0 = the embedding output, ``i`` = the output of layer ``i``) or ``attentions`` (index 0 = the first layer):
``"last"`` (the last of each), ``"uniform"`` (student layer ``m`` of ``M`` ↔ teacher layer ``round(m · N / M)`` of
``N``: the embeddings ↔ the embeddings for hidden states, last ↔ last, TinyBERT's mapping) or an explicit list of
pairs ``[[s, t], ...]`` (negative indices count from the end). See `resolve_layer_map` and docs/features.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from transformers.utils import logging

from .. import losses
from ..hooks import find_module, probe_features
from ..signals import Signals, feature_request
from ..tasks.base import base_model_of
from .base import OBJECTIVES, Objective
from .projection import check_projection_mode, make_projection

logger = logging.get_logger(__name__)

__all__ = ["HiddenMSE", "AttentionKL", "FeatureMSE", "DeepSupervision", "resolve_layer_map", "pool_features"]

LayerSpec = str | Sequence[Sequence[int]]
_LAYER_MODES = ("uniform", "last")
_TOKENS = ("all", "cls")
_POOLS = ("mean", "cls", "flatten")


def _check_layers(layers: Any) -> LayerSpec:
    if isinstance(layers, str):
        if layers not in _LAYER_MODES:
            raise ValueError(f"`layers` must be 'uniform', 'last' or a list of [student, teacher] index pairs, got "
                             f"{layers!r}.")
        return layers
    ok = isinstance(layers, (list, tuple)) and len(layers) > 0 and all(
        isinstance(pair, (list, tuple)) and len(pair) == 2
        and all(isinstance(i, int) and not isinstance(i, bool) for i in pair) for pair in layers
    )
    if not ok:
        raise ValueError(f"`layers` must be 'uniform', 'last' or a non-empty list of [student, teacher] integer index "
                         f"pairs like [[0, 0], [2, 4]], got {layers!r}.")
    return [tuple(pair) for pair in layers]


def resolve_layer_map(layers: LayerSpec, n_student: int, n_teacher: int, embeddings_first: bool = True
                      ) -> list[tuple[int, int]]:
    """``(student index, teacher index)`` pairs into tuples of ``n_student`` / ``n_teacher`` per-layer outputs.

    ``embeddings_first``: index 0 is the embedding output (``hidden_states``); else index 0 is the first layer
    (``attentions``). ``"last"``: ``[(n_s − 1, n_t − 1)]``. ``"uniform"``: with ``M`` student and ``N`` teacher
    layers, student layer ``m`` ↔ teacher layer ``floor(m · N / M + ½)`` for every student layer (``m = 0 … M`` with
    embeddings, the embedding output being layer 0; ``m = 1 … M`` otherwise), so the last layers always meet.
    Explicit pairs are checked against the lengths (negative indices count from the end).

    Example::

        >>> resolve_layer_map("uniform", 3, 7)  # 2 student layers, 6 teacher layers (+ embeddings)
        [(0, 0), (1, 3), (2, 6)]
        >>> resolve_layer_map("uniform", 2, 6, embeddings_first=False)
        [(0, 2), (1, 5)]
    """
    if n_student < 1 or n_teacher < 1:
        raise ValueError(f"Both models must return per-layer outputs, got {n_student} (student) and {n_teacher} "
                         "(teacher).")
    if layers == "last":
        return [(n_student - 1, n_teacher - 1)]
    if layers == "uniform":
        offset = 1 if embeddings_first else 0
        student_layers, teacher_layers = n_student - offset, n_teacher - offset
        if student_layers == 0:
            return [(0, 0)]
        first = 0 if embeddings_first else 1
        return [(m + offset - 1, math.floor(m * teacher_layers / student_layers + 0.5) + offset - 1)
                for m in range(first, student_layers + 1)]
    pairs = []
    for s, t in layers:
        if not (-n_student <= s < n_student and -n_teacher <= t < n_teacher):
            what = "hidden states (index 0 = embeddings)" if embeddings_first else "attention layers"
            raise ValueError(f"`layers` pair [{s}, {t}] is out of range: the student has {n_student} {what} and the "
                             f"teacher {n_teacher}. Use indices in [0, {n_student}) and [0, {n_teacher}).")
        pairs.append((s % n_student, t % n_teacher))
    return pairs


def _sum_over_items(
    loss: Callable[..., torch.Tensor], s: torch.Tensor, t: torch.Tensor, student: Signals, row_dim: int,
    tokens: str = "all",
) -> torch.Tensor:
    """A per-position ``loss`` (`losses.hidden_mse`, `losses.attention_kl`) of ``[B, ..., L, ...]`` tensors as the
    **sum over the batch's items** that objectives return (``row_dim``: the dimension of the positions: 1 for hidden
    states, 2 for attention query rows).

    Items are tokens (``student.mask`` ``[B, L']``, language models): the loss summed over the counted tokens, the
    position ``i`` being the state at token ``i`` (a causal LM's mask is shifted by one and covers the first
    ``L − 1`` positions). Items are examples (``student.mask`` ``[B]``): ``tokens="cls"`` sums over the counted
    examples the loss at position 0; ``tokens="all"`` takes the mean over the batch's real positions
    (``student.token_mask``, else all) times the number of counted examples.
    """
    mask = student.mask
    if s.shape[0] != mask.shape[0]:
        raise ValueError(f"The task's items ({tuple(mask.shape)}) do not line up with the model's per-layer outputs "
                         f"({tuple(s.shape)}); layer objectives need one output row per example.")
    if mask.dim() == 2:  # token items
        if tokens == "cls":
            raise ValueError("`tokens='cls'` needs a task whose items are examples (classification, vision, "
                             "embedding); this task counts tokens. Use tokens: all.")
        length = mask.shape[1]
        if length > s.shape[row_dim]:
            raise ValueError(f"The item mask covers {length} positions but the outputs only {s.shape[row_dim]}.")
        s, t = s.narrow(row_dim, 0, length), t.narrow(row_dim, 0, length)
        return loss(s, t, mask=mask, reduction="sum")
    if tokens == "cls":
        s, t = s.narrow(row_dim, 0, 1), t.narrow(row_dim, 0, 1)
        return loss(s, t, mask=mask.unsqueeze(1), reduction="sum")
    positions = s.shape[row_dim]
    real = student.token_mask
    if real is None or real.shape != (mask.shape[0], positions):
        real = torch.ones(mask.shape[0], positions, dtype=torch.bool, device=mask.device)
    counted = real & mask.unsqueeze(1).to(torch.bool)
    return loss(s, t, mask=counted, reduction="mean") * mask.sum()


def _project(projection: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    if projection is None or isinstance(projection, nn.Identity):
        return x
    return projection(x.to(projection.weight.dtype))


def _live_teacher(name: str, teacher: nn.Module | None) -> nn.Module:
    if teacher is None:
        raise ValueError(f"Objective {name!r} compares the models' internal states, which a teacher cache does not "
                         "hold: give `teacher_model` (a live teacher).")
    return base_model_of(teacher)


@OBJECTIVES.register
class HiddenMSE(Objective):
    """Hidden-state MSE of mapped layer pairs: for each pair ``(i, j)``, `losses.hidden_mse` between
    ``W · h_student[i]`` and ``h_teacher[j]`` (``W`` a learned projection when the widths differ), averaged over the
    pairs (so the weight does not depend on how many layers are mapped).

    ``layers``: ``"uniform"`` (default), ``"last"`` or ``[[s, t], ...]``, indices into ``hidden_states`` (0 = the
    embedding output); see `resolve_layer_map`. ``tokens``: ``"all"`` (every real token/patch) or ``"cls"`` (position
    0 only: BERT's [CLS], ViT's class token; tasks whose items are examples). ``projection``: ``"auto"`` (one
    ``nn.Linear(d_s, d_t)`` per pair when the widths differ), true (always, identity-initialised) or false; trained
    with the student and saved with the objectives' state. Student and teacher must have the same number of
    positions (tokenizer / patch grid). For CNN stages (``[B, C, h, w]``) use ``feature_mse``. Romero et al. 2015
    (FitNets, arXiv:1412.6550), Jiao et al. 2020 (TinyBERT, arXiv:1909.10351).
    """

    name = "hidden_mse"
    requires = frozenset({"hidden_states"})

    def __init__(self, layers: LayerSpec = "uniform", tokens: str = "all", projection: bool | str = "auto") -> None:
        super().__init__()
        self.layers = _check_layers(layers)
        if tokens not in _TOKENS:
            raise ValueError(f"`tokens` must be 'all' or 'cls', got {tokens!r}.")
        self.tokens = tokens
        self.projection_mode = check_projection_mode(projection)
        self.pairs: list[tuple[int, int]] | None = None
        self.counts: tuple[int, int] | None = None
        self.projections = nn.ModuleList()

    def setup(self, task: Any, student: nn.Module, teacher: nn.Module) -> None:
        teacher = _live_teacher(self.name, teacher)
        student = base_model_of(student)
        states = []
        for role, model in (("student", student), ("teacher", teacher)):
            _, outputs = probe_features(model, [], task.example_inputs(model), output_hidden_states=True)
            hidden = getattr(outputs, "hidden_states", None)
            if not hidden:
                raise ValueError(f"Objective {self.name!r}: the {role} ({type(model).__name__}) returns no hidden "
                                 "states. Use `feature_mse` with module paths instead.")
            if hidden[0].dim() != 3:
                raise ValueError(
                    f"Objective {self.name!r}: the {role}'s hidden states have shape {tuple(hidden[0].shape)}, not "
                    "[B, positions, width] (a CNN's stages are [B, C, h, w]). Use `feature_mse` with module paths, "
                    "which pools each to one vector per image."
                )
            states.append(hidden)
        self.counts = (len(states[0]), len(states[1]))
        self.pairs = resolve_layer_map(self.layers, *self.counts, embeddings_first=True)
        self.projections = nn.ModuleList(
            make_projection(states[0][i].shape[-1], states[1][j].shape[-1], self.projection_mode, self.name)
            or nn.Identity() for i, j in self.pairs
        )

    def forward(self, student: Signals, teacher: Signals | None) -> torch.Tensor:
        if self.pairs is None:
            raise ValueError(f"Objective {self.name!r} was not set up: `setup(task, student, teacher)` maps its layers "
                             "(the trainer calls it).")
        if not student.hidden_states or not teacher.hidden_states:
            raise ValueError(f"Objective {self.name!r} needs hidden states from both models; they returned none.")
        got = (len(student.hidden_states), len(teacher.hidden_states))
        if got != self.counts:
            raise ValueError(f"Objective {self.name!r} was set up for {self.counts} hidden states (student, teacher) "
                             f"but got {got}.")
        total = 0
        for (i, j), projection in zip(self.pairs, self.projections, strict=True):
            s, t = _project(projection, student.hidden_states[i]), teacher.hidden_states[j]
            if s.shape != t.shape:
                raise ValueError(f"Objective {self.name!r}, layers [{i}, {j}]: student states {tuple(s.shape)} (after "
                                 f"projection) vs teacher {tuple(t.shape)}; both need the same positions (tokens or "
                                 "patches: same tokenizer, image and patch size).")
            total = total + _sum_over_items(losses.hidden_mse, s, t, student, row_dim=1, tokens=self.tokens)
        return total / len(self.pairs)


def _use_eager_attention(model: nn.Module, role: str, objective: str) -> None:
    config = getattr(model, "config", None)
    implementation = getattr(config, "_attn_implementation", None)
    if implementation in (None, "eager"):
        return
    set_implementation = getattr(model, "set_attn_implementation", None)
    if not callable(set_implementation):
        raise ValueError(f"Objective {objective!r} needs attention probabilities, which the {role}'s "
                         f"{implementation!r} attention does not return; load it with attn_implementation='eager'.")
    logger.warning(f"Objective {objective!r}: switching the {role} from {implementation!r} to 'eager' attention, the "
                   "implementation that returns attention probabilities.")
    set_implementation("eager")


@OBJECTIVES.register
class AttentionKL(Objective):
    """Attention-distribution KL of mapped layer pairs: for each pair ``(i, j)``,
    ``KL(a_teacher[j] || a_student[i])`` row by row (`losses.attention_kl`; heads averaged per model when the head
    counts differ), averaged over the pairs. Needs no parameters; both models must attend over the same positions.

    ``layers``: ``"last"`` (default, MiniLM), ``"uniform"`` or ``[[s, t], ...]``, indices into ``attentions`` (0 = the
    first layer). Attention probabilities exist only with ``eager`` attention: models running ``sdpa`` / flash
    attention are switched to eager in `setup` (with a warning). Wang et al. 2020 (MiniLM, arXiv:2002.10957).
    """

    name = "attention_kl"
    requires = frozenset({"attentions"})

    def __init__(self, layers: LayerSpec = "last") -> None:
        super().__init__()
        self.layers = _check_layers(layers)

    def setup(self, task: Any, student: nn.Module, teacher: nn.Module) -> None:
        _use_eager_attention(base_model_of(student), "student", self.name)
        _use_eager_attention(_live_teacher(self.name, teacher), "teacher", self.name)

    def forward(self, student: Signals, teacher: Signals | None) -> torch.Tensor:
        if not student.attentions or not teacher.attentions:
            raise ValueError(f"Objective {self.name!r} needs attention probabilities from both models; they returned "
                             "none (load them with attn_implementation='eager').")
        pairs = resolve_layer_map(self.layers, len(student.attentions), len(teacher.attentions),
                                  embeddings_first=False)
        total = 0
        for i, j in pairs:
            total = total + _sum_over_items(losses.attention_kl, student.attentions[i], teacher.attentions[j], student,
                                            row_dim=2)
        return total / len(pairs)


def pool_features(x: torch.Tensor, pool: str = "mean", token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """One vector per example from a module's output: ``[B, D]`` as it is; ``[B, L, D]`` (tokens, patches) → the
    mean over positions (``pool="mean"``, only the real ones when ``token_mask`` ``[B, L]`` is given) or position 0
    (``"cls"``); ``[B, C, h, w]`` (a CNN feature map, channels first as transformers' vision models return them)
    → global average pooling over ``h, w``; ``pool="flatten"`` → ``x.reshape(B, -1)`` whatever the shape."""
    if pool == "flatten" or x.dim() == 2:
        return x.reshape(x.shape[0], -1)
    if pool == "cls":
        if x.dim() != 3:
            raise ValueError(f"`pool='cls'` takes position 0 of a [B, positions, width] output, got shape "
                             f"{tuple(x.shape)}. Use pool: mean.")
        return x[:, 0]
    if x.dim() == 3:
        if token_mask is not None and token_mask.shape == x.shape[:2]:
            weights = token_mask.to(x.dtype).unsqueeze(-1)
            return (x * weights).sum(1) / weights.sum(1).clamp_min(1)
        return x.mean(dim=1)
    if x.dim() == 4:
        return x.mean(dim=(2, 3))
    raise ValueError(f"Cannot pool a module output of shape {tuple(x.shape)} to one vector per example; use pool: "
                     "flatten or pick a module whose output is [B, D], [B, L, D] or [B, C, h, w].")


@OBJECTIVES.register
class FeatureMSE(Objective):
    """MSE between the outputs of any two modules, named by dotted path: ``student_module`` in the student,
    ``teacher_module`` in the teacher (as `model.named_modules()` names them, e.g. ``"resnet.encoder.stages.1"``,
    ``"vit.encoder.layer.3"``). Outputs are captured by forward hooks (`hf_distill.hooks.capture_features`; the first
    tensor of a tuple output), pooled to one vector per example (`pool_features`: ``mean`` over positions or spatial
    cells, ``cls`` = position 0, or ``flatten``), the student's projected to the teacher's width (``projection``, as
    in ``hidden_mse``), and compared with `losses.hidden_mse` (mean over features), summed over examples.

    Pooling to vectors is what makes different architectures comparable: a CNN's ``[B, C, h, w]`` map and a ViT's
    ``[B, tokens, D]`` sequence share no spatial layout, but both pool to one descriptor per image. FitNets-style
    hints (Romero et al. 2015, arXiv:1412.6550), by module path as in torchdistill.
    """

    name = "feature_mse"
    requires = frozenset()

    def __init__(self, student_module: str = "", teacher_module: str = "", pool: str = "mean",
                 projection: bool | str = "auto") -> None:
        super().__init__()
        for key, value in (("student_module", student_module), ("teacher_module", teacher_module)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"`{key}` must name a module by its dotted path (e.g. 'vit.encoder.layer.1'), got "
                                 f"{value!r}.")
        if pool not in _POOLS:
            raise ValueError(f"`pool` must be one of {', '.join(_POOLS)}, got {pool!r}.")
        self.student_module, self.teacher_module, self.pool = student_module, teacher_module, pool
        self.projection_mode = check_projection_mode(projection)
        self.projection: nn.Linear | None = None
        self.requires = frozenset({feature_request(student_module), feature_request(teacher_module)})

    def setup(self, task: Any, student: nn.Module, teacher: nn.Module) -> None:
        teacher = _live_teacher(self.name, teacher)
        student = base_model_of(student)
        widths = []
        for key, path, model in (("student_module", self.student_module, student),
                                 ("teacher_module", self.teacher_module, teacher)):
            try:
                find_module(model, path)
            except ValueError as err:
                raise ValueError(f"Objective {self.name!r}, `{key}`: {err}") from None
            features, _ = probe_features(model, [path], task.example_inputs(model))
            if path not in features:
                raise ValueError(f"Objective {self.name!r}, `{key}`: the module {path!r} did not run in a forward "
                                 f"pass of {type(model).__name__}; pick a module on the forward path.")
            widths.append(pool_features(features[path], self.pool).shape[-1])
        self.projection = make_projection(widths[0], widths[1], self.projection_mode, self.name)

    def _vectors(self, signals: Signals, path: str, role: str) -> torch.Tensor:
        if not signals.features or path not in signals.features:
            raise ValueError(f"Objective {self.name!r}: the {role}'s signals hold no features for {path!r}; features "
                             "are captured by the task adapter's `run` (a teacher cache holds none).")
        return pool_features(signals.features[path], self.pool, signals.token_mask)

    def forward(self, student: Signals, teacher: Signals | None) -> torch.Tensor:
        s = _project(self.projection, self._vectors(student, self.student_module, "student"))
        t = self._vectors(teacher, self.teacher_module, "teacher")
        if s.shape != t.shape:
            raise ValueError(f"Objective {self.name!r}: pooled student features {tuple(s.shape)} (after projection) vs "
                             f"teacher {tuple(t.shape)}.")
        if student.mask.dim() == 1:  # one item per example
            return losses.hidden_mse(s, t, mask=student.mask, reduction="sum")
        # items are tokens: the mean over examples with a counted token, times the number of items
        examples = student.mask.reshape(student.mask.shape[0], -1).any(dim=1)
        return losses.hidden_mse(s, t, mask=examples, reduction="mean") * student.mask.sum()


_SUPERVISION_WEIGHTS = ("adaptive", "equal")


@OBJECTIVES.register
class DeepSupervision(Objective):
    """Deeply-supervised KD (DSKD): auxiliary classifier heads on the student's shallow layers, each taught by the
    teacher's predictions, so the early layers learn class-discriminative features directly.

    For each chosen student layer ``l`` (indices into ``hidden_states``; default: every transformer layer but the
    last, whose own head is the student's classifier, trained by ``kl``/``ce``), a linear head reads the layer's
    pooled output (`pool_features`: ``mean`` over real positions or spatial cells, or ``cls``) and

        L_l = T² · KL(p_teacher^T || softmax(head_l(pool(h_l)) / T))       summed over the batch's examples
        loss = Σ_l w_l · L_l

    ``weights="adaptive"``: ``w_l = L_l / Σ_k L_k`` computed from this batch's losses without gradient — layers that
    are still far from the teacher get more of the objective's weight, and the weights follow training (the
    loss-based weight allocation of Luo, Chen & Wang 2022, "Deeply-Supervised Knowledge Distillation",
    arXiv:2202.07846, in the form we implement: proportional to each layer's loss); ``"equal"``: ``w_l = 1 / n``.
    Each layer's weighted term is logged (``loss/deep_supervision/layer<l>``). The heads are trained with the student
    and saved with the objectives' state; they are not part of the saved student. Tasks whose items are examples
    (classification, vision); full teacher logits.
    """

    name = "deep_supervision"
    requires = frozenset({"logits", "hidden_states"})
    schedulable = ("temperature",)

    def __init__(self, layers: str | Sequence[int] = "shallow", temperature: float = 4.0, pool: str = "mean",
                 weights: str = "adaptive") -> None:
        super().__init__()
        if not (layers == "shallow" or (isinstance(layers, (list, tuple)) and layers and all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 1 for i in layers))):
            raise ValueError(f"`layers` must be 'shallow' or a non-empty list of student layer indices >= 1 (into "
                             f"hidden_states, 0 = embeddings), got {layers!r}.")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
            raise ValueError(f"`temperature` must be a finite number > 0, got {temperature!r}.")
        if pool not in ("mean", "cls"):
            raise ValueError(f"`pool` must be 'mean' or 'cls', got {pool!r}.")
        if weights not in _SUPERVISION_WEIGHTS:
            raise ValueError(f"`weights` must be one of {', '.join(_SUPERVISION_WEIGHTS)}, got {weights!r}.")
        self.layers, self.temperature, self.pool, self.weights = layers, float(temperature), pool, weights
        self.layer_ids: list[int] = []
        self.heads = nn.ModuleList()

    def setup(self, task: Any, student: nn.Module, teacher: nn.Module) -> None:
        model = base_model_of(student)
        classes = task.logit_width(model)
        if classes is None:
            raise ValueError(f"Objective {self.name!r} needs a classifier student (its number of classes sizes the "
                             "auxiliary heads).")
        _, outputs = probe_features(model, [], task.example_inputs(model), output_hidden_states=True)
        hidden = getattr(outputs, "hidden_states", None)
        if not hidden or len(hidden) < 3:
            raise ValueError(f"Objective {self.name!r}: the student ({type(model).__name__}) returns "
                             f"{len(hidden or ())} hidden states; deep supervision needs at least two layers.")
        last = len(hidden) - 1
        ids = list(range(1, last)) if self.layers == "shallow" else list(self.layers)
        if any(i > last for i in ids):
            raise ValueError(f"`layers` {list(ids)} of {self.name!r}: the student has hidden states 0..{last}.")
        self.layer_ids = ids
        self.heads = nn.ModuleList(nn.Linear(pool_features(hidden[i], self.pool).shape[-1], classes) for i in ids)

    def forward(self, student: Signals, teacher: Signals | None) -> dict[str, torch.Tensor]:
        if student.mask.dim() != 1:
            raise ValueError(f"Objective {self.name!r} supervises one prediction per example; this task counts tokens. "
                             "Use it with classification or vision.")
        if teacher is None or teacher.logits is None:
            raise ValueError(f"Objective {self.name!r} needs the teacher's full logits.")
        if not student.hidden_states:
            raise ValueError(f"Objective {self.name!r} needs the student's hidden states; it returned none.")
        per_layer = []
        for index, head in zip(self.layer_ids, self.heads, strict=True):
            pooled = pool_features(student.hidden_states[index], self.pool, student.token_mask)
            logits = head(pooled.to(head.weight.dtype))
            per_layer.append(losses.kl_div(logits, teacher.logits, temperature=self.temperature, mask=student.mask,
                                           reduction="sum"))
        stacked = torch.stack(per_layer)
        if self.weights == "adaptive":
            detached = stacked.detach()
            weights = detached / detached.sum().clamp_min(torch.finfo(detached.dtype).tiny)
        else:
            weights = torch.full_like(stacked, 1.0 / len(per_layer))
        return {f"layer{index}": w * term for index, w, term in zip(self.layer_ids, weights, stacked, strict=True)}
