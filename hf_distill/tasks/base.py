"""The task-adapter interface: how a model is run on a batch and turned into `Signals`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from ..hooks import capture_features, has_module
from ..registry import Registry
from ..signals import Signals, feature_paths

__all__ = ["TaskAdapter", "TASKS", "resolve_task", "base_model_of", "unwrap_model", "token_mask_of"]


def base_model_of(model: nn.Module) -> nn.Module:
    """The model inside a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def token_mask_of(batch: dict[str, Any]) -> torch.Tensor | None:
    """``[B, L]`` booleans, the real (not padding) tokens of a text batch: its ``attention_mask``; None if absent."""
    attention_mask = batch.get("attention_mask")
    return attention_mask.to(torch.bool) if isinstance(attention_mask, torch.Tensor) else None


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DDP, then torch.compile, then PEFT wrappers: the object per-model settings are keyed by."""
    inner = getattr(model, "module", model)
    return base_model_of(getattr(inner, "_orig_mod", inner))


class TaskAdapter:
    """Everything task-specific lives in an adapter; the trainer and the objectives stay task-agnostic.

    An adapter knows (1) which models it handles (`detect`) and how to load one from a path (`load_model`),
    (2) which positions of a batch are the counted "items" (`item_mask`: tokens for language models, examples
    for classifiers), (3) how to run a model and align its outputs as `Signals` (`run`), and (4) which
    evaluation metrics it reports (`eval_sums` / `finalize_eval`).

    Module features: every subclass's `run` is wrapped (`__init_subclass__`) so that, when ``requires`` holds
    ``"features:<path>"`` entries (`hf_distill.signals.feature_request`), the outputs of the modules at those paths
    that exist in the model being run are captured by forward hooks (`hf_distill.hooks.capture_features`) during
    the forward pass and returned in ``Signals.features``. Paths are relative to the model inside DDP / compile /
    PEFT wrappers. A path that exists in only one of the two models is captured in that one only (objectives check
    their paths against each model in `setup`). Without feature requests `run` is called as it is.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        run = cls.__dict__.get("run")
        if run is not None and not getattr(run, "_captures_features", False):
            cls.run = _capturing_features(run)  # type: ignore[method-assign]

    name: ClassVar[str] = ""
    #: Whether batches are built from raw dataset rows by this task's collator (then no column is dropped).
    raw_rows: ClassVar[bool] = False
    #: Whether the teacher may be a column of precomputed scores (``teacher_scores_column``).
    accepts_score_columns: ClassVar[bool] = False
    #: Whether ``task="auto"`` may pick this task (False for tasks that reuse another task's models, e.g. ranking).
    auto_detect: ClassVar[bool] = True

    @classmethod
    def detect(cls, model: nn.Module) -> TaskAdapter | None:
        """An adapter for ``model`` if this task handles it, else None."""
        return None

    @classmethod
    def from_architecture(cls, architecture: str) -> TaskAdapter | None:
        """An adapter for a model class name (from ``config.architectures``), else None."""
        return None

    def auto_class(self) -> Any:
        """The transformers auto class for this task's models (e.g. AutoModelForCausalLM)."""
        raise NotImplementedError

    def load_model(self, name_or_path: str, **kwargs: Any) -> nn.Module:
        return self.auto_class().from_pretrained(name_or_path, **kwargs)

    def model_from_config(self, config: Any) -> nn.Module:
        """A randomly initialised model of this task from a config."""
        return self.auto_class().from_config(config)

    def prepare(self, student: nn.Module, teacher: nn.Module, args: Any) -> None:
        """Called once by the trainer with both models and the config before training (e.g. to read each model's
        pooling). Default: nothing."""

    #: Whether the teacher must be a model of the student's kind (both causal LMs, both sequence classifiers);
    #: False for tasks that compare across architectures (a cross-encoder teacher for a bi-encoder student).
    teacher_must_match: ClassVar[bool] = False

    def kind(self) -> str:
        """What kind of model this adapter runs, in words (for error messages)."""
        return f"{self.name} model"

    def check_teacher(self, teacher: nn.Module) -> None:
        """Refuse, before training, a teacher this task cannot compare with the student."""
        if not self.teacher_must_match:
            return
        found = type(self).detect(teacher)
        if found is None:
            try:
                found = resolve_task("auto", model=teacher)
            except ValueError:
                found = None
        if found is None or found.kind() != self.kind():
            what = found.kind() if found is not None else type(base_model_of(teacher)).__name__
            raise ValueError(
                f"The student is a {self.kind()} but the teacher is a {what}; their outputs cannot be compared. Use "
                f"a teacher of the student's kind (the same task head), or set `task` to the task both models share."
            )

    def default_collator(
        self, tokenizer: Any, args: Any, student: nn.Module, teacher: nn.Module | None, training: bool = True,
        teacher_tokenizer: Any = None,
    ) -> Any:
        """The data collator the trainer uses when none is given (``training=False``: the one for evaluation);
        None = Trainer's default. ``teacher_tokenizer`` is only given to tasks with `own_teacher_tokens`."""
        return None

    #: Whether the teacher may read its own tokens (`DistillationTrainer`'s ``teacher_processing_class``): true for
    #: tasks whose signals are one per text (a ranker's scores, pooled embeddings, a classifier's logits), whose
    #: data or collator then holds each text twice and whose `teacher_view` hands the teacher its own copy.
    own_teacher_tokens = False
    #: Dataset columns holding the teacher's own tokens, kept for it when the student's `forward` does not name them.
    teacher_columns: tuple[str, ...] = ()
    #: Other dataset columns this task's collator reads (kept though the student's `forward` does not name them).
    extra_columns: tuple[str, ...] = ()
    #: The signals that are one per text (or pair), so objectives on them work when the teacher has its own tokens.
    token_free_signals: frozenset[str] = frozenset()

    def teacher_view(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch as the teacher reads it (the same batch, unless the teacher has its own tokens)."""
        return batch

    def save_extras(self, output_dir: str, model: nn.Module, objectives: nn.Module) -> None:
        """Called when the student is saved, to write task-specific files next to it. Default: nothing."""

    def logit_width(self, model: nn.Module) -> int | None:
        """Size of the last logits dimension (vocabulary or number of labels), or None if not applicable."""
        return None

    #: Whether a teacher whose logits are wider than the student's may be compared on the shared range
    #: (a vocabulary padded for efficiency). Only sensible for token vocabularies.
    allows_padded_teacher: ClassVar[bool] = False

    #: The `Signals` field the teacher-signal cache stores for this task (None: its teacher cannot be cached).
    cached_signal: ClassVar[str | None] = None
    #: The widths of a cached teacher's signals (``{"embeddings": 384, ...}``), set by the trainer when it trains
    #: from a cache without the teacher model, for objectives that size themselves by the teacher.
    teacher_widths: dict[str, int] = {}  # replaced per instance, never mutated
    #: The `Signals` fields the run's teacher-signal cache(s) give back (`TeacherCache.provides`), set by the trainer,
    #: for objectives that check where the teacher's signals come from.
    cached_signals: frozenset[str] = frozenset()

    def cache_settings(self, teacher: nn.Module) -> dict[str, Any]:
        """What decides the teacher's signals besides its weights and the data (part of a cache's fingerprint,
        e.g. the pooling of an embedding teacher)."""
        return {"task": self.name}

    def fit_cached(self, signals: Signals, batch: dict[str, Any]) -> Signals:
        """Cached teacher signals adjusted to this batch (e.g. a ranker's scores cut to the batch's candidates).
        Default: as they are."""
        return signals

    def item_mask(self, batch: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def model_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch entries to pass to the model's forward (labels are kept out: objectives use them)."""
        return {k: v for k, v in batch.items() if k != "labels"}

    def latency_inputs(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        """What one forward pass of ``model`` takes for this batch (timed for the report)."""
        return self.model_inputs(batch)

    @staticmethod
    def output_kwargs(requires: frozenset[str]) -> dict[str, bool]:
        """Forward kwargs asking for hidden states / attentions only when an objective requires them."""
        kwargs = {}
        if "hidden_states" in requires:
            kwargs["output_hidden_states"] = True
        if "attentions" in requires:
            kwargs["output_attentions"] = True
        return kwargs

    def run(self, model: nn.Module, batch: dict[str, Any], requires: frozenset[str]) -> Signals:
        raise NotImplementedError

    def example_inputs(self, model: nn.Module) -> dict[str, Any]:
        """A tiny batch ``model`` can run (a few token ids by default), used before training to learn the shapes of
        its hidden states or module features (e.g. to size a projection)."""
        input_ids = torch.tensor([[1, 2, 3, 4]])
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}

    def eval_sums(self, student: Signals, teacher: Signals | None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per-batch ``{metric: (sum, count)}``; the trainer adds them up over the evaluation set."""
        return {}

    def finalize_eval(self, means: dict[str, float]) -> dict[str, float]:
        """Turn the evaluation-set means into the reported metrics (e.g. mean CE → perplexity)."""
        return means


def _capturing_features(run: Callable[..., Signals]) -> Callable[..., Signals]:
    """``run`` that also captures the module features requested in ``requires`` (see `TaskAdapter`)."""

    @functools.wraps(run)
    def run_with_features(self: TaskAdapter, model: nn.Module, batch: dict[str, Any], requires: frozenset[str]
                          ) -> Signals:
        paths = feature_paths(requires)
        if not paths:
            return run(self, model, batch, requires)
        inner = unwrap_model(model)
        with capture_features(inner, [p for p in paths if has_module(inner, p)]) as features:
            signals = run(self, model, batch, requires)
        signals.features = {**(signals.features or {}), **features}
        return signals

    run_with_features._captures_features = True  # type: ignore[attr-defined]
    return run_with_features


TASKS: Registry[type[TaskAdapter]] = Registry("task")


def resolve_task(task: str, model: nn.Module | None = None, architecture: str | None = None) -> TaskAdapter:
    """The adapter for ``task``; with ``task="auto"`` it is detected from the model (or its architecture name)."""
    if task != "auto":
        cls = TASKS.get(task)
        adapter = cls.detect(model) if model is not None else cls.from_architecture(architecture or "")
        if adapter is None:
            what = type(base_model_of(model)).__name__ if model is not None else architecture
            raise ValueError(
                f"`task={task!r}` does not handle the model {what!r}. Use a model class this task supports or "
                f"`task='auto'` to detect it; tasks: {', '.join(TASKS.names())}."
            )
        return adapter
    for name in TASKS:
        cls = TASKS.get(name)
        if not cls.auto_detect:
            continue
        adapter = cls.detect(model) if model is not None else cls.from_architecture(architecture or "")
        if adapter is not None:
            return adapter
    what = type(base_model_of(model)).__name__ if model is not None else architecture
    raise ValueError(
        f"Could not detect the task for the student {what!r}. Set `task` in DistillationConfig to one of "
        f"{', '.join(TASKS.names())}, or use a model with a task head (e.g. AutoModelForCausalLM, "
        "AutoModelForSequenceClassification)."
    )
