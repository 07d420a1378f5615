"""`DistillationConfig`: `transformers.TrainingArguments` plus what distillation needs.

Each field is documented once, in its ``metadata["help"]``; docs and ``--help`` are generated from there.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from .checks import NONFINITE_POLICIES
from .objectives import normalize_objective_specs
from .registry import did_you_mean
from .signals import TEACHER_COMBINE_MODES
from .tasks import TASKS

__all__ = ["DistillationConfig", "TEACHER_DTYPES"]

TEACHER_DTYPES = ("auto", "float32", "bfloat16", "float16")
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _default_objectives() -> list[dict[str, Any]]:
    return [{"name": "kl", "weight": 1.0, "temperature": 1.0}]


def _from_json(value: Any, name: str, example: str) -> Any:
    """Parse a JSON string (as given on a command line); other values pass through."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as err:
        raise ValueError(f"`{name}` given as a string must be JSON, e.g. '{example}'; got {value!r} ({err}).") from err


@dataclass
class DistillationConfig(TrainingArguments):
    """Training arguments for `DistillationTrainer`. All `TrainingArguments` fields work as usual.

    Example::

        config = DistillationConfig(
            output_dir="runs/gpt2-kd",
            objectives=[{"name": "kl", "weight": 0.5, "temperature": 2.0}, {"name": "ce", "weight": 0.5}],
            teacher_dtype="bfloat16",
        )
    """

    # `| str | None`: HfArgumentParser then parses the command-line value as a string (JSON), as for `fsdp_config`.
    objectives: list[dict[str, Any]] | str | None = field(
        default_factory=_default_objectives,
        metadata={
            "help": "The weighted distillation objectives, a list of mappings {name, weight, **parameters}, e.g. "
            "[{'name': 'kl', 'weight': 0.5, 'temperature': 2.0}, {'name': 'ce', 'weight': 0.5}] (a JSON string "
            "is accepted too). The loss is the weighted sum; each term is logged as `loss/<name>`. Registered "
            "objectives: see `hf_distill.objectives.OBJECTIVES.names()`."
        },
    )
    task: str = field(
        default="auto",
        metadata={
            "help": "How batches are turned into signals: 'auto' (detected from the student's class), "
            "'language' (causal or masked LM, per token), 'classification' (per example), 'embedding' (pooled "
            "sentence embeddings of a base AutoModel, per text), 'ranking' (bi- or cross-encoder scores of each "
            "query's candidates, per query; never detected, always explicit) or 'vision' (image classifiers, "
            "AutoModelForImageClassification incl. DeiT with its distillation token, `pixel_values` batches, per "
            "image)."
        },
    )
    teacher_dtype: str = field(
        default="auto",
        metadata={
            "help": "dtype of the teacher's weights: 'auto' (as loaded/given), 'float32', 'bfloat16' or "
            "'float16' (aliases fp32, bf16, fp16). Losses are always computed in float32."
        },
    )
    teacher_compile: bool = field(
        default=False,
        metadata={"help": "Wrap the teacher's forward in `torch.compile` (worth it for long runs on GPU)."},
    )
    teacher_is_student_base: bool = field(
        default=False,
        metadata={
            "help": "Self-distillation into an adapter: the teacher is the PEFT student's own base model with its "
            "adapters disabled (`teacher_model` must then be None; no second copy of the model is loaded). The "
            "student keeps close to what the base model predicted while it learns, e.g. with `ce` on new data."
        },
    )
    teacher_ema_decay: float | None = field(
        default=None,
        metadata={
            "help": "Self-distillation from a moving average of the student (mean teacher): the teacher starts as a "
            "copy of the student and after every optimizer step becomes decay * teacher + (1 - decay) * student "
            "(parameters; buffers are copied), e.g. 0.999. `teacher_model` must then be None. The average is saved "
            "in checkpoints and next to the student (`ema_teacher.safetensors`), so resuming is exact."
        },
    )
    teacher_cache: list[str] | str | None = field(
        default=None,
        metadata={
            "help": "A teacher-signal cache folder (written by `hf-distill cache-teacher` or "
            "`hf_distill.cache.cache_teacher`): training reads the teacher's signals from it instead of running the "
            "teacher, and `teacher_model` may be None. A teacher given as well must be the one the cache was built "
            "with (its weights are checked). Datasets are matched to the cached splits by content; evaluation data "
            "that was not cached uses the live teacher when there is one, else is evaluated without teacher "
            "signals. Several teachers (`teacher_model` a list, or none): a list of cache folders, one per teacher "
            "in the same order, each built by `cache_teacher` for its teacher on the same data; their signals are "
            "combined like live teachers' (a JSON list string is accepted too). See docs/cache.md."
        },
    )
    teacher_weights: list[float] | str | None = field(
        default=None,
        metadata={
            "help": "Several teachers (`teacher_model` a list): one weight per teacher, numbers >= 0 with a positive "
            "sum, normalised to sum to 1, e.g. [0.7, 0.3] (a JSON string is accepted too); unset = equal weights. A "
            "teacher of weight 0 is loaded and checked but not run. See docs/multi-teacher.md."
        },
    )
    teacher_combine: str = field(
        default="probs",
        metadata={
            "help": "Several teachers: how their logits become one teacher's. 'probs' (default): the logits of the "
            "weighted mixture of their distributions, T * log(sum_k w_k softmax(z_k / T)) with T = "
            "`teacher_mix_temperature`; 'logits': the weighted mean of their logits. Embeddings, scores and hidden "
            "states are always averaged with the weights (embeddings of different widths are concatenated)."
        },
    )
    teacher_mix_temperature: float | None = field(
        default=None,
        metadata={
            "help": "Several teachers, teacher_combine='probs': the temperature T at which the teachers' "
            "distributions are mixed, so that an objective at temperature T sees exactly the mixture of their "
            "softmax(z_k / T). Unset = the `temperature` of the objectives that read the teacher's logits when they "
            "share one fixed value, else 1.0 (with a warning: an objective at another temperature tempers the "
            "mixture instead)."
        },
    )
    teacher_model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": "Keyword arguments for `from_pretrained` when `teacher_model` is a path or hub id, e.g. "
            "{'revision': 'main'} (a JSON string is accepted too). `dtype` comes from `teacher_dtype`."
        },
    )

    embedding_pooling: str = field(
        default="auto",
        metadata={
            "help": "Embedding task: how token states become a sentence embedding, 'mean', 'cls' or 'last' (token); "
            "'auto' reads each model's sentence-transformers folder (1_Pooling/config.json), else the teacher's, "
            "else mean."
        },
    )
    embedding_normalize: bool | None = field(
        default=None,
        metadata={
            "help": "Embedding task: L2-normalise the pooled embeddings (true/false); unset = as the model's "
            "sentence-transformers folder says (a Normalize module), else not."
        },
    )

    ranking_similarity: str = field(
        default="auto",
        metadata={
            "help": "Ranking task: how a bi-encoder scores a query against a passage, 'dot' or 'cosine' of their "
            "pooled embeddings; 'auto' = cosine when the model's pooling normalises, else dot. Cross-encoders "
            "score with their one logit."
        },
    )
    ranking_query_max_length: int = field(
        default=64, metadata={"help": "Ranking task: tokens per query for bi-encoders (the default collator)."}
    )
    ranking_max_length: int = field(
        default=256, metadata={"help": "Ranking task: tokens per passage for bi-encoders (the default collator)."}
    )
    ranking_pair_max_length: int | None = field(
        default=None,
        metadata={
            "help": "Ranking task: tokens per query+passage pair for cross-encoders; unset = ranking_query_max_length "
            "+ ranking_max_length, so a cross-encoder reads as much of each text as a bi-encoder does."
        },
    )
    ranking_num_negatives: int | None = field(
        default=None,
        metadata={
            "help": "Ranking task: train on the first n negatives of each row; unset = all of them (then every row "
            "of a batch must have the same number). Evaluation always ranks every candidate of a row."
        },
    )
    teacher_scores_column: str | None = field(
        default=None,
        metadata={
            "help": "Ranking task: read the teacher's scores from this dataset column (one per candidate, positive "
            "first, as sentence-transformers' MarginMSELoss labels) instead of running a teacher; `teacher_model` "
            "must then be None."
        },
    )

    nonfinite_loss: str = field(
        default="error",
        metadata={
            "help": "What a training step with a NaN or infinite loss does: 'error' stops at that step, naming the "
            "objective(s) and signals that were not finite (`NonFiniteLossError`); 'skip' drops that batch's "
            "contribution (zero gradient), counts it (logged as `nonfinite_skipped`) and goes on; 'ignore' does not "
            "check (no per-step synchronisation with the device)."
        },
    )
    preflight: bool = field(
        default=True,
        metadata={
            "help": "Before the first step, run one training batch through the teacher, the student and every "
            "objective (no gradients, no dropout, random state untouched) so that bad data or models fail at once "
            "with a clear message: sequences longer than the model's positions, missing or out-of-range labels, "
            "NaN/Inf teacher or cached signals, signals a model does not return. See docs/troubleshooting.md."
        },
    )

    def __post_init__(self) -> None:
        # Our fields are checked first, so a typo fails before TrainingArguments sets up devices.
        if self.objectives is None:
            self.objectives = _default_objectives()
        self.objectives = _from_json(self.objectives, "objectives", '[{"name": "kl", "weight": 1.0}]')
        self.teacher_model_init_kwargs = _from_json(
            self.teacher_model_init_kwargs, "teacher_model_init_kwargs", '{"revision": "main"}'
        )
        self.objectives = normalize_objective_specs(self.objectives)
        allowed_tasks = ["auto", *TASKS.names()]
        if self.task not in allowed_tasks:
            raise ValueError(
                f"`task` must be one of {', '.join(allowed_tasks)}, got {self.task!r}."
                f"{did_you_mean(self.task, allowed_tasks)}"
            )
        pooling_choices = ("auto", "mean", "cls", "last")
        if self.embedding_pooling not in pooling_choices:
            raise ValueError(
                f"`embedding_pooling` must be one of {', '.join(pooling_choices)}, got {self.embedding_pooling!r}."
                f"{did_you_mean(self.embedding_pooling, pooling_choices)}"
            )
        similarity_choices = ("auto", "dot", "cosine")
        if self.ranking_similarity not in similarity_choices:
            raise ValueError(
                f"`ranking_similarity` must be one of {', '.join(similarity_choices)}, got "
                f"{self.ranking_similarity!r}.{did_you_mean(self.ranking_similarity, similarity_choices)}"
            )
        for name in ("ranking_query_max_length", "ranking_max_length", "ranking_pair_max_length",
                     "ranking_num_negatives"):
            value = getattr(self, name)
            if value is None and name in ("ranking_pair_max_length", "ranking_num_negatives"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        if self.teacher_ema_decay is not None and (
            isinstance(self.teacher_ema_decay, bool) or not isinstance(self.teacher_ema_decay, (int, float))
            or not 0 <= self.teacher_ema_decay < 1
        ):
            raise ValueError(f"`teacher_ema_decay` must be a number in [0, 1) (e.g. 0.999), got "
                             f"{self.teacher_ema_decay!r}.")
        if isinstance(self.teacher_cache, str) and self.teacher_cache.lstrip().startswith("["):
            self.teacher_cache = _from_json(self.teacher_cache, "teacher_cache", '["caches/a", "caches/b"]')
        if isinstance(self.teacher_cache, (list, tuple)):
            paths = [os.fspath(p) if isinstance(p, os.PathLike) else p for p in self.teacher_cache]
            if not paths or not all(isinstance(p, str) and p for p in paths):
                raise ValueError(f"`teacher_cache` must be a cache folder, or a non-empty list of cache folders (one "
                                 f"per teacher), got {self.teacher_cache!r}; e.g. ['caches/a', 'caches/b'].")
            self.teacher_cache = paths if len(paths) > 1 else paths[0]
        elif isinstance(self.teacher_cache, os.PathLike):
            self.teacher_cache = os.fspath(self.teacher_cache)
        self.teacher_weights = _from_json(self.teacher_weights, "teacher_weights", "[0.7, 0.3]")
        if self.teacher_weights is not None:
            weights = self.teacher_weights
            numbers = isinstance(weights, (list, tuple)) and len(weights) > 0 and all(
                not isinstance(w, bool) and isinstance(w, (int, float)) and 0 <= w < float("inf") for w in weights
            )
            if not numbers or not sum(weights) > 0:
                raise ValueError(f"`teacher_weights` must be a non-empty list of finite numbers >= 0 with a positive "
                                 f"sum, one per teacher, got {weights!r}; e.g. [0.7, 0.3] (or unset for equal "
                                 "weights).")
            self.teacher_weights = [float(w) for w in weights]
        if self.teacher_combine not in TEACHER_COMBINE_MODES:
            raise ValueError(
                f"`teacher_combine` must be one of {', '.join(TEACHER_COMBINE_MODES)}, got {self.teacher_combine!r}."
                f"{did_you_mean(str(self.teacher_combine), TEACHER_COMBINE_MODES)}"
            )
        if self.teacher_mix_temperature is not None and (
            isinstance(self.teacher_mix_temperature, bool) or not isinstance(self.teacher_mix_temperature, (int, float))
            or not 0 < self.teacher_mix_temperature < float("inf")
        ):
            raise ValueError(f"`teacher_mix_temperature` must be a finite number > 0 (e.g. the `temperature` of your "
                             f"`kl` objective), or unset, got {self.teacher_mix_temperature!r}.")
        if self.nonfinite_loss not in NONFINITE_POLICIES:
            raise ValueError(
                f"`nonfinite_loss` must be one of {', '.join(NONFINITE_POLICIES)}, got {self.nonfinite_loss!r}."
                f"{did_you_mean(str(self.nonfinite_loss), NONFINITE_POLICIES)}"
            )
        self.teacher_dtype = _DTYPE_ALIASES.get(self.teacher_dtype, self.teacher_dtype)
        if self.teacher_dtype not in TEACHER_DTYPES:
            raise ValueError(
                f"`teacher_dtype` must be one of {', '.join(TEACHER_DTYPES)}, got {self.teacher_dtype!r}."
                f"{did_you_mean(self.teacher_dtype, TEACHER_DTYPES)}"
            )
        if self.teacher_model_init_kwargs is not None:
            if not isinstance(self.teacher_model_init_kwargs, dict):
                raise ValueError(
                    f"`teacher_model_init_kwargs` must be a mapping, got {self.teacher_model_init_kwargs!r}."
                )
            for key in ("dtype", "torch_dtype"):
                if key in self.teacher_model_init_kwargs:
                    raise ValueError(
                        f"`teacher_model_init_kwargs` sets {key!r}; set `teacher_dtype` instead so that one "
                        "option decides the teacher's dtype."
                    )
        super().__post_init__()
