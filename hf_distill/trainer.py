"""`DistillationTrainer`: a `transformers.Trainer` that distils a teacher into the student.

The trainer only orchestrates: the task adapter turns a batch into student and teacher `Signals`, the weighted
objectives turn those into loss terms, and the trainer normalises, sums and logs them.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import random
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import DistributedType
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, PreTrainedModel, Trainer, TrainerCallback
from transformers.trainer_utils import EvalLoopOutput
from transformers.utils import logging

from .cache import ROW_COLUMN, CachedTeacher, RowIdCollator, StaleCacheError, TeacherCache, trainer_default_collator
from .checks import (
    NonFiniteLossError,
    check_dtype_supported,
    check_image_size,
    check_labels,
    check_models,
    check_output_dir_writable,
    check_positions,
    check_signals_present,
    nonfinite_report,
    remote_code_guard,
    save_atomically,
)
from .config import DistillationConfig
from .objectives import OBJECTIVES, build_objectives
from .objectives.logits import JointLogitTerms
from .sharding import DEEPSPEED, ZERO3, shards_parameters
from .sharding import accelerator_shards_parameters as _shards_parameters
from .sharding import strategy as sharding_strategy
from .signals import Signals, feature_paths
from .tasks import TaskAdapter, base_model_of, resolve_task
from .tasks.base import unwrap_model
from .teacher import (
    EnsembleTeacher,
    LiveTeacher,
    NoTeacher,
    ScoresColumnTeacher,
    StudentBaseTeacher,
    freeze_teacher,
    load_teacher,
    prepare_teacher,
    shared_logit_width,
    tokenizer_beside,
)

logger = logging.get_logger(__name__)

__all__ = ["DistillationTrainer", "OBJECTIVES_WEIGHTS_NAME", "EMA_TEACHER_NAME", "last_complete_checkpoint"]

#: File holding the trainable parameters of the objectives (e.g. projections), next to the student's weights.
OBJECTIVES_WEIGHTS_NAME = "distill_objectives.safetensors"
#: File holding a moving-average teacher (`teacher_ema_decay`), in checkpoints and next to the student.
EMA_TEACHER_NAME = "ema_teacher.safetensors"


class DistillationTrainer(Trainer):
    """A `Trainer` whose loss is a weighted sum of distillation objectives between a frozen teacher and the
    student being trained.

    Args:
        model: the student (a model, or a local path / hub id loaded with the task's auto class).
        teacher_model: the teacher, as a model, a local path or a hub id. It is put in eval mode, frozen, placed
            on the training device (never wrapped in DDP, never given optimizer state) and run under
            ``torch.no_grad()``. A list of teachers (models, paths or hub ids) distils their ensemble: each is loaded
            and checked like one teacher, and their signals are combined per batch (`teacher_weights`,
            `teacher_combine`, `teacher_mix_temperature`; see `teacher.EnsembleTeacher` and docs/multi-teacher.md).
            None with `teacher_cache` (the teacher's signals were cached) or
            `teacher_scores_column` (ranking: the teacher's scores are in the data), or when no objective needs a
            teacher (a label-only baseline through the same machinery).
        args: a `DistillationConfig` (objectives, task, teacher options and all `TrainingArguments`).
        peft_config: a `peft` config (e.g. ``LoraConfig(...)``): the student is wrapped with ``get_peft_model`` and
            only its adapter is trained (as in TRL). A student that already is a `PeftModel` works as well. With
            ``teacher_is_student_base`` in the config, the teacher is the student's base model (adapters off).
        teacher_processing_class: the teacher's own tokenizer, for a teacher of another architecture whose
            vocabulary differs from the student's: every text is then tokenised twice, once for each model (ranking:
            by the collator; embedding, classification: the data's ``teacher_input_ids`` columns,
            `tasks.tokens.add_teacher_tokens`). A teacher given as a path or hub id, or loaded from a local folder
            with its tokenizer, whose tokenizer differs gets its own without this. Only tasks whose signals are one
            per text accept it (`ranking`, `embedding`, `classification`), and only objectives on those signals
            (docs/teacher-tokenizer.md).
        **kwargs: everything else `Trainer` accepts (``train_dataset``, ``eval_dataset``, ``data_collator``,
            ``processing_class``, ``compute_metrics``, ``callbacks``, ...).

    Loss normalisation: each objective returns a sum over counted items (tokens for language models, examples
    for classifiers); the trainer divides by the number of items in the whole accumulated batch (across
    processes when ``average_tokens_across_devices``), so gradient accumulation gives the same update as one
    large batch.

    Logging: each weighted term is logged as ``loss/<name>`` (their sum is ``loss``), averaged over the logging
    window; evaluation reports ``eval_loss/<name>`` plus the task's metrics (e.g. ``eval_kl_to_teacher``,
    ``eval_perplexity``, ``eval_accuracy``, ``eval_top1_agreement``).
    """

    # Our loss is normalised by the item count of the whole accumulated batch (see `compute_loss`).
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model: PreTrainedModel | nn.Module | str | os.PathLike | None = None,
        teacher_model: PreTrainedModel | nn.Module | str | os.PathLike | list | tuple | None = None,
        args: DistillationConfig | None = None,
        peft_config: Any = None,
        teacher_processing_class: Any = None,
        **kwargs: Any,
    ) -> None:
        if args is None:
            args = DistillationConfig()
        if not isinstance(args, DistillationConfig):
            raise TypeError(
                f"`args` must be a DistillationConfig, got {type(args).__name__}. Build it with "
                "`DistillationConfig(output_dir=..., objectives=[...], ...)`; it accepts every TrainingArguments "
                "field."
            )
        if model is None:
            raise ValueError("`model` (the student) is required.")
        scores_column = args.teacher_scores_column
        ema = args.teacher_ema_decay is not None
        cache_paths = self._cache_paths(args)
        teacher_inputs = self._teacher_inputs(teacher_model, args, len(cache_paths))
        ensemble = len(teacher_inputs) > 1 or len(cache_paths) > 1
        if ensemble and scores_column:
            raise ValueError(f"`teacher_model` holds {len(teacher_inputs)} teachers; `teacher_scores_column` stands "
                             "for one teacher and cannot be combined with an ensemble. Unset it to run the teachers.")
        if len(cache_paths) > 1 and teacher_inputs and len(teacher_inputs) != len(cache_paths):
            raise ValueError(f"`teacher_cache` lists {len(cache_paths)} caches but `teacher_model` has "
                             f"{len(teacher_inputs)} teacher(s); give one cache per teacher, in the same order (or "
                             "teacher_model=None to train from the caches alone).")
        if len(cache_paths) == 1 and len(teacher_inputs) > 1:
            raise ValueError(f"`teacher_cache` is one cache but `teacher_model` has {len(teacher_inputs)} teachers; "
                             "give a list of cache folders, one per teacher, in the same order.")
        teacher_model = teacher_inputs[0] if len(teacher_inputs) == 1 else teacher_model
        if ema and (teacher_model is not None or args.teacher_cache or scores_column or args.teacher_is_student_base):
            raise ValueError("`teacher_ema_decay` makes a moving average of the student the teacher; do not also give "
                             "`teacher_model`, `teacher_cache`, `teacher_scores_column` or `teacher_is_student_base`.")
        if args.teacher_is_student_base and (teacher_model is not None or args.teacher_cache or scores_column):
            raise ValueError("`teacher_is_student_base` makes the student's own base model the teacher; do not also "
                             "give `teacher_model`, `teacher_cache` or `teacher_scores_column`.")
        if teacher_model is None and scores_column is None and args.teacher_cache is None and \
                not args.teacher_is_student_base and not ema and any(
            OBJECTIVES.get(spec["name"]).uses_teacher for spec in args.objectives
        ):
            raise ValueError("`teacher_model` is required: a model, a local path or a hub id (or `teacher_cache` in "
                             "the config, a folder of cached teacher signals; or, for ranking, "
                             "`teacher_scores_column` naming a column of precomputed teacher scores). "
                             "Only objectives that need no teacher (e.g. `ce`, `ranking_ce`) run without one.")
        if args.teacher_cache is not None and scores_column is not None:
            raise ValueError("Both `teacher_cache` and `teacher_scores_column` are set; the teacher's scores come from "
                             "one of them. Unset one.")
        if teacher_model is not None and scores_column is not None:
            raise ValueError(
                f"Both `teacher_model` and `teacher_scores_column={scores_column!r}` are given; the teacher is "
                "either a model or a column of precomputed scores. Pass teacher_model=None to use the column."
            )

        for k, given in enumerate(teacher_inputs):
            if given is model:
                with _naming_teacher(k, ensemble):
                    check_models(model, given)  # the same object: refused before anything is loaded
        check_dtype_supported(args.teacher_dtype, args.device)
        check_output_dir_writable(args.output_dir)
        if isinstance(model, os.PathLike):
            model = os.fspath(model)
        if isinstance(model, str):
            with remote_code_guard(model, "load the student yourself with "
                                   "`from_pretrained(..., trust_remote_code=True)` and pass the model"):
                architectures = getattr(AutoConfig.from_pretrained(model), "architectures", None) or [""]
                self.task: TaskAdapter = resolve_task(args.task, architecture=architectures[0])
                model = self.task.load_model(model)
        else:
            self.task = resolve_task(args.task, model=model)
        if peft_config is not None:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
        if args.teacher_is_student_base and not callable(getattr(model, "disable_adapter", None)):
            raise ValueError(
                "`teacher_is_student_base` needs a PEFT student (a `PeftModel`, or pass `peft_config=LoraConfig(...)`"
                f"), whose adapters can be switched off to run its base model as the teacher; got "
                f"{type(model).__name__}."
            )
        if scores_column is not None and not self.task.accepts_score_columns:
            raise ValueError(f"`teacher_scores_column` is only used by `task='ranking'`; this run's task is "
                             f"{self.task.name!r}. Unset it and pass a `teacher_model`.")

        self.objectives = build_objectives(args.objectives)
        self._student_requires = frozenset().union(*(o.objective.requires for o in self.objectives))
        teacher_objectives = [o.objective for o in self.objectives if o.objective.uses_teacher]
        self._teacher_requires = frozenset().union(*(o.teacher_signals() for o in teacher_objectives))
        #: The objectives that read the teacher's embeddings of each row's positive (`aligned_contrastive`).
        self._positive_readers = [item.key for item in self.objectives
                                  if "positive_embeddings" in item.objective.teacher_signals()]
        self._uses_teacher = bool(teacher_objectives)
        #: A divergence + `ce` computed in one pass (and, with `fused: true`, from the student's hidden states).
        self._joint = JointLogitTerms.find(self.objectives, language=self.task.name == "language")
        self._fused_requires = self._student_requires
        if self._joint is not None and self._joint.fused:
            check_head = getattr(self.task, "check_fused_head", None)
            if check_head is None:
                raise ValueError(f"`fused: true` ({self._joint.divergence_item.key!r}) is for causal language models; "
                                 f"this run's task is {self.task.name!r}. Remove `fused`.")
            check_head(model)
            if shards_parameters(args):
                sharded = sharding_strategy(args)
                raise ValueError(
                    f"`fused: true` ({self._joint.divergence_item.key!r}) reads the student's LM head weight outside "
                    f"its forward pass, and {sharded} holds that weight sharded across processes there. Remove "
                    f"`fused` (the one-pass path computes the same loss from the logits), or train without {sharded}.")
            self._fused_requires = self._joint.student_requires(self._student_requires)
        several = len(cache_paths) > 1
        caches = [self._open_cache(path, f"teacher_cache[{k}]" if several else "teacher_cache")
                  for k, path in enumerate(cache_paths)]
        cache = caches[0] if caches else None
        #: The teacher-signal cache (the first one with several teachers; all of them in `teacher_caches`).
        self.teacher_cache = cache
        self.teacher_caches: list[TeacherCache] = caches
        if caches:
            self.task.cached_signals = frozenset.intersection(*(c.provides() for c in caches))

        teachers: list[nn.Module] = []
        if ema:  # the mean teacher starts as an exact copy of the student (PEFT wrapper and all)
            teachers = [freeze_teacher(copy.deepcopy(model))]
        for k, given in enumerate(teacher_inputs):  # every teacher of an ensemble gets the checks of one teacher
            with _naming_teacher(k, ensemble):
                loaded = freeze_teacher(load_teacher(given, self.task, args.teacher_dtype,
                                                     args.teacher_model_init_kwargs))
                self.task.check_teacher(loaded)
                check_models(model, loaded)
            if caches:
                caches[k].check_teacher(loaded)  # names `teacher_cache[k]` itself
            teachers.append(loaded)
        teacher = teachers[0] if teachers else None
        check_models(model, None)  # the student (each loaded teacher was checked above; a moving average is a copy)
        if cache is not None and teacher is None:
            self.task.teacher_widths = dict(cache.metadata.get("widths", {}))
            widths = [c.metadata.get("widths", {}).get("embeddings") for c in caches]
            if several and None not in widths and len(set(widths)) > 1:  # concatenated, as live teachers would be
                self.task.teacher_widths["embeddings"] = sum(widths)
        for prepared in reversed(teachers):  # the first teacher prepared last: it decides the student's defaults
            self.task.prepare(model, prepared, args)
        if not teachers:
            self.task.prepare(model, None, args)
        weights = self._ensemble_weights(args, max(len(teachers), len(caches)))
        setup_teacher = self._setup_teacher(teachers, weights) if teachers else None
        for item in self.objectives:
            item.objective.setup(self.task, model, setup_teacher)
        linked = [item.objective for item in self.objectives]
        for objective in linked:
            objective.link(linked)
        trained = [item.key for item in self.objectives if any(p.requires_grad for p in item.objective.parameters())]
        if trained and sharding_strategy(args) in (ZERO3, DEEPSPEED):
            raise ValueError(
                f"Objective(s) {', '.join(map(repr, trained))} train parameters of their own (a projection), and "
                "DeepSpeed's optimizer takes only the model's. Set `projection: false` where student and teacher "
                "widths match, or train without DeepSpeed (DDP: `torchrun` alone)."
            )
        tokenizer = kwargs.get("processing_class")
        # the tokenizer next to each teacher given as a path or hub id, loaded once for the checks below
        path_tokenizers = [None if teacher_processing_class is not None
                           else tokenizer_beside(given, _trusts_remote_code(args)) for given in teacher_inputs]
        teacher_tokenizer = self._own_teacher_tokenizer(teacher_processing_class, teacher_inputs, path_tokenizers,
                                                        teachers, model, getattr(tokenizer, "tokenizer", tokenizer),
                                                        ensemble, args)
        #: The teacher's own tokenizer when it reads its own tokens (`teacher_processing_class`), else None.
        self.teacher_processing_class = teacher_tokenizer
        logit_widths: list[int | None] = []
        for k, prepared in enumerate(teachers):
            with _naming_teacher(k, ensemble):
                logit_widths.append(shared_logit_width(
                    self.task, model, prepared, getattr(tokenizer, "tokenizer", tokenizer),
                    None if teacher_tokenizer is not None or k >= len(path_tokenizers) else path_tokenizers[k],
                ))
        logit_width = logit_widths[0] if logit_widths else None
        if cache is not None and teacher is None:
            logit_widths = [self._cached_logit_width(c, model) for c in caches]
            logit_width = logit_widths[0]
        self._eval_collator = None
        if kwargs.get("data_collator") is None:
            text_tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
            own = {"teacher_tokenizer": teacher_tokenizer} if teacher_tokenizer is not None else {}
            collator = self.task.default_collator(text_tokenizer, args, model, teacher, **own)
            if collator is not None:
                kwargs["data_collator"] = collator
                self._eval_collator = self.task.default_collator(text_tokenizer, args, model, teacher, training=False,
                                                                 **own)
        if cache is not None:
            self._attach_cache_rows(caches, kwargs, tokenizer, live_teacher=teacher is not None)
        columns = getattr(kwargs.get("train_dataset"), "column_names", None)
        if scores_column is not None and isinstance(columns, list) and scores_column not in columns:
            raise ValueError(f"`teacher_scores_column={scores_column!r}` is not a column of the training data (its "
                             f"columns: {columns}). Name the column that holds one teacher score per candidate.")

        # Trainer creates output_dir at once; if the first-batch check then fails, the empty folder is removed again.
        self._made_output_dir = args.output_dir is not None and not os.path.exists(args.output_dir)
        super().__init__(model=model, args=args, **kwargs)

        #: Every teacher model, prepared (one, or several for an ensemble); `teacher_model` is the first (or None).
        self.teacher_models: list[nn.Module] = []
        self._teacher_engines: list[Any] = []  # DeepSpeed engines whose modules are the ZeRO-3 teachers
        if args.teacher_is_student_base:
            self.teacher_model = None
            self.teacher_source = StudentBaseTeacher(model, self.task)
        elif teacher is None:  # precomputed scores, or a label-only run (a baseline, or fine-tuning a teacher)
            self.teacher_model = None
            self.teacher_source = ScoresColumnTeacher(self.task) if scores_column else NoTeacher()
        else:
            if ema and _shards_parameters(self.accelerator):
                raise ValueError(
                    "`teacher_ema_decay` keeps a moving average of the student's whole weights, which DeepSpeed ZeRO-3 "
                    "and FSDP shard across processes. Use DDP or ZeRO-1/2 for a mean teacher, or unset "
                    "`teacher_ema_decay`."
                )
            self.teacher_models = [self._prepare_teacher(t) for t in teachers]
            self.teacher_model = self.teacher_models[0]
            self.teacher_source = LiveTeacher(self.teacher_model, self.task, logit_width)
            if ensemble:
                sources = [LiveTeacher(m, self.task, w) for m, w in zip(self.teacher_models, logit_widths, strict=True)]
                self.teacher_source = EnsembleTeacher(
                    sources, weights, args.teacher_combine, _mix_temperature(self.objectives, args),
                )
        if several:  # one cached source per teacher (falling back to that teacher live), combined as live ones are
            sources = [CachedTeacher(c, self.task, LiveTeacher(self.teacher_models[k], self.task, logit_widths[k])
                                     if self.teacher_models else None, logit_widths[k])
                       for k, c in enumerate(caches)]
            self.teacher_source = EnsembleTeacher(sources, weights, args.teacher_combine,
                                                  _mix_temperature(self.objectives, args),
                                                  names=[f"`teacher_cache[{k}]`" for k in range(len(caches))])
        elif cache is not None:  # cached rows come from the cache; others from the live teacher, if any
            fallback = self.teacher_source if teacher is not None else None
            self.teacher_source = CachedTeacher(cache, self.task, fallback, logit_width)
        self.objectives.to(self.args.device)
        if self._objective_parameters():
            self.add_callback(_ZeroObjectiveGradients(self.objectives))
        if ema:
            self.add_callback(_MovingAverageTeacher(self))
        self._preflight_pending = False  # set by `train` when the check must wait for the student's placement
        self.add_callback(_DeferredPreflight(self))

        self._train_parts: dict[str, torch.Tensor] = {}
        self._train_parts_since = 0
        self.nonfinite_skipped = 0  # training batches dropped under `nonfinite_loss="skip"`
        self._scheduled: dict[str, float] = {}  # current values of scheduled weights / parameters, logged
        self._eval_sums = self._empty_eval_sums()

    # ---- teacher -----------------------------------------------------------------------------------------------

    def _prepare_teacher(self, teacher: nn.Module) -> nn.Module:
        """Placed for the run's strategy by `hf_distill.teacher.prepare_teacher` (sharded under ZeRO-3, wrapped
        under FSDP, a replica otherwise), then compiled if asked."""
        teacher, owner = prepare_teacher(teacher, self.accelerator, self.args)
        if owner is not None:  # a DeepSpeed engine whose module is the teacher: kept for the run
            self._teacher_engines.append(owner)
        if self.args.teacher_compile:
            teacher = torch.compile(teacher)
        return teacher

    def _own_teacher_tokenizer(self, given: Any, teacher_inputs: list[Any], path_tokenizers: list[Any],
                               teachers: list[nn.Module], student: nn.Module, tokenizer: Any, ensemble: bool,
                               args: DistillationConfig) -> Any:
        """The tokenizer the teacher reads its own tokens with, or None when it reads the student's: the given
        `teacher_processing_class`, else (tasks with `own_teacher_tokens`) the one next to a teacher given as a path
        or hub id, or loaded from a local folder, whose vocabulary differs from the student's. Refuses, before any
        work, a teacher whose vocabulary is smaller than the student's with no tokenizer of its own (the student's
        ids do not all exist for it), and warns when it is larger (a padded embedding table, or another tokenizer:
        only the user can tell)."""
        given = getattr(given, "tokenizer", given)
        if given is not None:
            if not self.task.own_teacher_tokens:
                raise ValueError(
                    f"`teacher_processing_class` gives the teacher its own tokens, which only tasks whose signals are "
                    f"one per text accept (ranking, embedding, classification); this run's task is "
                    f"{self.task.name!r}. Use a teacher that shares the student's tokenizer and drop "
                    "`teacher_processing_class`."
                )
            if ensemble or len(teachers) != 1:
                raise ValueError(
                    "`teacher_processing_class` is the tokenizer of one live teacher; this run has "
                    f"{len(teachers)} teacher model(s). Give exactly one `teacher_model` with it."
                )
            self._check_own_tokens(args)
            return given
        if not self.task.own_teacher_tokens:
            return None
        one = not ensemble and len(teachers) == 1
        if one and teacher_inputs and hasattr(tokenizer, "get_vocab"):
            # a path or hub id, or a model loaded from a local folder that holds its tokenizer
            folder = getattr(base_model_of(teachers[0]), "name_or_path", None)
            own = path_tokenizers[0] if isinstance(teacher_inputs[0], str) else (
                tokenizer_beside(folder, _trusts_remote_code(args))
                if isinstance(folder, str) and folder and os.path.isdir(folder) else None)
            if own is not None and own.get_vocab() != tokenizer.get_vocab():
                logger.info("The teacher's tokenizer differs from the student's: the teacher reads its own tokens.")
                self._check_own_tokens(args)
                return own
        size = getattr(base_model_of(student).config, "vocab_size", None)
        for k, teacher in enumerate(teachers):
            theirs = getattr(base_model_of(teacher).config, "vocab_size", None)
            if size is None or theirs is None or theirs == size:
                continue
            fix = ("Pass the teacher's own tokenizer as `teacher_processing_class=AutoTokenizer.from_pretrained("
                   "<teacher>)`." if one else "A teacher with its own tokenizer must be the only teacher.")
            named = f"`teacher_model[{k}]`: " if ensemble else ""
            if theirs < size:
                raise ValueError(
                    f"{named}The teacher's vocabulary has {theirs} tokens and the student's {size}: they do not share "
                    f"a tokenizer, so the teacher would read the student's token ids as other tokens. {fix}"
                )
            logger.warning(f"{named}The teacher's vocabulary has {theirs} tokens and the student's {size}; it reads "
                           f"the student's tokens, as if its table were the same tokenizer's, padded. If its tokenizer "
                           f"is another one: {fix}")
        return None

    def _check_own_tokens(self, args: DistillationConfig) -> None:
        """What a teacher reading its own tokens cannot do: objectives comparing token positions, and (except for
        ranking, whose rows stay text) a teacher cache, whose builder tokenises with one tokenizer."""
        self._check_token_free_objectives()
        if self.task.name != "ranking" and args.teacher_cache is not None:
            raise ValueError(f"`teacher_cache` with a teacher of its own tokenizer is not supported for the "
                             f"{self.task.name} task yet: unset `teacher_cache` (the teacher runs live) or use a "
                             "teacher with the student's tokenizer.")

    def _check_token_free_objectives(self) -> None:
        """A teacher reading its own tokens has other token positions than the student: refuse objectives that
        compare hidden states, attentions or module features position by position."""
        if self._positive_readers:
            raise ValueError(
                f"Objective(s) {self._positive_readers} read the teacher's embeddings of each row's positive, which "
                "are tokenised with the student's tokenizer, but this teacher reads its own tokens (its tokenizer "
                "differs). Use a teacher that shares the student's tokenizer for them, or drop them.")
        free = self.task.token_free_signals
        by_token = {item.key: sorted(item.objective.requires - free) for item in self.objectives
                    if item.objective.uses_teacher and item.objective.requires - free}
        if by_token:
            compared = sorted({signal for signals in by_token.values() for signal in signals})
            raise ValueError(
                f"The teacher reads its own tokens (its tokenizer differs from the student's), so token positions do "
                f"not match, but objective(s) {sorted(by_token)} compare {compared} token by token. Use objectives "
                "on what is one per text (pooled embeddings, ranking scores, a classifier's logits), or a teacher "
                "that shares the student's tokenizer."
            )

    @staticmethod
    def _cache_paths(args: DistillationConfig) -> list[str]:
        """`teacher_cache` as a list of folders (empty when unset)."""
        given = args.teacher_cache
        return [] if given is None else list(given) if isinstance(given, (list, tuple)) else [given]

    @staticmethod
    def _teacher_inputs(teacher_model: Any, args: DistillationConfig, caches: int = 0) -> list[Any]:
        """``teacher_model`` as a list (empty for None; paths as strings), with the ensemble options checked against
        the number of teachers before any model is loaded."""
        if isinstance(teacher_model, (list, tuple)):
            if not teacher_model:
                raise ValueError("`teacher_model` is an empty list; give one teacher (a model, a local path or a hub "
                                 "id) or a list of several, or None.")
            given = list(teacher_model)
        else:
            given = [] if teacher_model is None else [teacher_model]
        given = [os.fspath(t) if isinstance(t, os.PathLike) else t for t in given]
        for k, entry in enumerate(given):
            if entry is None or isinstance(entry, (list, tuple)):
                raise TypeError(f"`teacher_model[{k}]` must be a model, a local path or a hub id, got {entry!r}.")
        weights = args.teacher_weights
        if weights is not None and given and len(weights) != len(given):
            raise ValueError(f"`teacher_weights` has {len(weights)} entries ({weights}) but `teacher_model` has "
                             f"{len(given)} teacher(s); give one weight per teacher, in the same order.")
        if weights is not None and not given and caches > 1 and len(weights) != caches:
            raise ValueError(f"`teacher_weights` has {len(weights)} entries ({weights}) but `teacher_cache` lists "
                             f"{caches} caches; give one weight per cache, in the same order.")
        if len(given) <= 1 and caches <= 1:
            unused = [name for name, default in (("teacher_weights", None), ("teacher_mix_temperature", None),
                                                 ("teacher_combine", "probs")) if getattr(args, name) != default]
            if unused:
                logger.warning(f"{', '.join(f'`{n}`' for n in unused)} only apply to several teachers "
                               "(`teacher_model` a list); with one teacher they have no effect. Unset them.")
        return given

    @staticmethod
    def _ensemble_weights(args: DistillationConfig, count: int) -> list[float]:
        """Each teacher's share, summing to 1 (equal when `teacher_weights` is unset, or does not apply: no teacher
        model, a moving-average teacher)."""
        given = args.teacher_weights
        weights = given if given is not None and len(given) == count else [1.0] * count
        total = sum(weights)
        return [w / total for w in weights]

    def _setup_teacher(self, teachers: list[nn.Module], weights: list[float]) -> nn.Module | None:
        """The teacher model the objectives size themselves by (`Objective.setup`): the first teacher that is run
        (weight > 0). For an ensemble whose embeddings have different widths — the combined embedding is their
        weighted concatenation (`signals.combine_signals`) — None, with the summed width in the task's
        ``teacher_widths``, so a projection is sized to the concatenation."""
        active = [t for t, w in zip(teachers, weights, strict=True) if w > 0]
        if len(active) <= 1 or "embeddings" not in self._teacher_requires:
            return active[0] if active else None
        width_of = getattr(self.task, "embedding_width", None)
        widths = [width_of(t) for t in active] if callable(width_of) else []
        if len(set(widths)) <= 1:
            return active[0]
        internal = self._teacher_requires & {"hidden_states", "attentions"} or feature_paths(self._teacher_requires)
        if internal:
            raise ValueError(f"The teachers' embedding widths differ ({widths}), so their embeddings are "
                             "concatenated, but objectives that read internal states need teachers of one "
                             "architecture. Use teachers of one width, or drop those objectives.")
        self.task.teacher_widths = {**self.task.teacher_widths, "embeddings": sum(widths)}
        return None

    # ---- teacher-signal cache ------------------------------------------------------------------------------------

    def _open_cache(self, path: str, key: str = "teacher_cache") -> TeacherCache:
        """Open the cache and check, before any model is loaded, that it suits this run's task and objectives."""
        cache = TeacherCache(path, key)
        if cache.task != self.task.name:
            raise ValueError(f"`{key}`: {path!r} holds a {cache.task!r} teacher's signals but this run's task "
                             f"is {self.task.name!r}. Use a cache built for this task.")
        missing = self._teacher_requires - cache.provides() - {"labels", "mask"}
        if missing:
            raise ValueError(
                f"`{key}`: the objectives need the teacher's {sorted(missing)} but {path!r} holds "
                f"{sorted(cache.provides())}. Rebuild the cache with them (hidden states: `hidden_layers`), or use a "
                "live teacher." + (" In-batch negatives (`batch_scores`) need a live bi-encoder teacher or a cache "
                                   "built with `in_batch_negatives=True` (recipes: `teacher.cache.in_batch_negatives`)."
                                   if "batch_scores" in missing else "")
                + (" A cache keeps no embeddings of the rows' positives (`positive_embeddings`, read by "
                   "`aligned_contrastive`): run that teacher live." if "positive_embeddings" in missing else "")
            )
        return cache

    def _cached_logit_width(self, cache: TeacherCache, student: nn.Module) -> int | None:
        """As `shared_logit_width` for a cached teacher: its logits must match the student's (or be a padded
        vocabulary, for full logits)."""
        teacher_width = cache.metadata.get("widths", {}).get("vocab")
        student_width = self.task.logit_width(student)
        if teacher_width is None or student_width is None or teacher_width == student_width:
            return None
        if teacher_width > student_width and self.task.allows_padded_teacher and cache.top_k is None:
            logger.warning(f"The cached teacher's vocabulary ({teacher_width}) is padded beyond the student's "
                           f"({student_width}); logits are compared on the shared range.")
            return student_width
        raise ValueError(f"`{cache.key}`: the cached teacher has {teacher_width} outputs but the student has "
                         f"{student_width}; they must match (a top-k cache cannot be cut to a smaller vocabulary). "
                         "Use a student with the teacher's vocabulary / labels.")

    def _attach_cache_rows(self, caches: list[TeacherCache], kwargs: dict[str, Any], tokenizer: Any,
                           live_teacher: bool) -> None:
        """Number the rows of the datasets the caches hold (`ROW_COLUMN`) and wrap the collators so the row numbers
        reach the teacher source. The training data must be cached; evaluation data may not be.

        Several caches (one per teacher) share the one row column: a row code is the cached split and the row's
        position in it, so every cache must hold each dataset as the same split (built from the same datasets); a
        cache that does not is named by its index. Evaluation data is read from the caches only when all hold it."""
        from .cache import dataset_fingerprint

        def split_in_all(dataset: Any) -> tuple[str | None, list[str | None]]:
            fingerprint = dataset_fingerprint(dataset)
            splits = [c.split_of(dataset, fingerprint) for c in caches]
            found = {split for split in splits if split is not None}
            if len(found) > 1:
                named = ", ".join(f"`{c.key}`: {split!r}" for c, split in zip(caches, splits, strict=True))
                raise StaleCacheError(f"The caches hold this data as different splits ({named}); the teachers' "
                                      "caches must be built from the same train and eval datasets. Rebuild them so.")
            return (found.pop() if found and None not in splits else None), splits

        train = kwargs.get("train_dataset")
        if train is not None:
            split, splits = split_in_all(train)
            if split is None:
                stale = caches[splits.index(None)]
                cached = ", ".join(f"{k} ({v['rows']} rows)" for k, v in stale.metadata["splits"].items())
                raise StaleCacheError(
                    f"`{stale.key}`: the training data does not match any split cached in {str(stale.path)!r} "
                    f"(cached: {cached}; "
                    f"this data: {len(train)} rows). The cache is stale: rebuild it with this data (same rows, "
                    "order, columns and tokenisation)."
                )
            kwargs["train_dataset"] = train.add_column(ROW_COLUMN, caches[0].row_codes(split, len(train)))
        evals = kwargs.get("eval_dataset")
        named = evals if isinstance(evals, dict) else {None: evals}
        for name, dataset in list(named.items()):
            split, splits = split_in_all(dataset) if dataset is not None else (None, [])
            if split is not None:
                named[name] = dataset.add_column(ROW_COLUMN, caches[0].row_codes(split, len(dataset)))
            elif dataset is not None and not live_teacher:
                some = len(caches) > 1 and any(s is not None for s in splits)
                logger.warning("The evaluation data is not in " + ("every teacher cache" if some else "the teacher "
                               "cache") + " and no teacher model is given: it is evaluated without teacher signals "
                               "(no distillation loss or fidelity metrics).")
        kwargs["eval_dataset"] = named if isinstance(evals, dict) else named[None]
        collator = kwargs.get("data_collator") or trainer_default_collator(tokenizer)
        kwargs["data_collator"] = RowIdCollator(collator)
        if self._eval_collator is not None:
            self._eval_collator = RowIdCollator(self._eval_collator)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if self.teacher_cache is not None and ROW_COLUMN not in self._signature_columns:
            self._signature_columns.append(ROW_COLUMN)
        if self.teacher_processing_class is not None:  # the teacher's own tokens
            self._signature_columns.extend(c for c in self.task.teacher_columns if c not in self._signature_columns)
        # what the task's collator reads besides the model's inputs (the embedding task: each row's positive)
        self._signature_columns.extend(c for c in self.task.extra_columns if c not in self._signature_columns)

    # ---- data: tasks whose collator builds batches from raw rows keep every column -------------------------------

    def _get_dataloader(self, dataset: Any, description: str, batch_size: int, sampler_fn: Any = None,
                        is_training: bool = False, dataloader_key: str | None = None) -> Any:
        """Evaluation batches come from the task's evaluation collator when it has its own (ranking: every
        candidate of a row, whatever `ranking_num_negatives` keeps for training)."""
        if is_training or self._eval_collator is None:
            return super()._get_dataloader(dataset, description, batch_size, sampler_fn, is_training, dataloader_key)
        training_collator, self.data_collator = self.data_collator, self._eval_collator
        try:
            return super()._get_dataloader(dataset, description, batch_size, sampler_fn, is_training, dataloader_key)
        finally:
            self.data_collator = training_collator

    def _remove_unused_columns(self, dataset: Any, description: str | None = None) -> Any:
        if self.task.raw_rows:
            return dataset
        return super()._remove_unused_columns(dataset, description)

    def _get_collator_with_removed_columns(self, data_collator: Any, description: str | None = None) -> Any:
        if self.task.raw_rows:
            return data_collator
        return super()._get_collator_with_removed_columns(data_collator, description)

    # ---- loss ----------------------------------------------------------------------------------------------------

    def _items_are_global(self) -> bool:
        """Whether `num_items_in_batch` counts the items of all processes (then the loss is scaled back up by the
        world size, because DDP averages gradients over processes)."""
        return bool(self.args.average_tokens_across_devices and self.args.world_size > 1)

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | None:
        """Counted items (as defined by the task adapter) in all micro-batches of one optimizer step."""
        if not batch_samples:
            return None
        count = sum(self.task.item_mask(batch).sum() for batch in batch_samples).to(device)
        if self._items_are_global():
            count = self.accelerator.gather(count).sum()
        return count

    def distillation_terms(
        self, model: nn.Module, inputs: dict[str, Any]
    ) -> tuple[dict[str, torch.Tensor], Signals, Signals | None]:
        """Run student and teacher on ``inputs`` and return each weighted objective's **sum** over items."""
        student_inputs = {k: v for k, v in inputs.items() if k != ROW_COLUMN}  # cache row numbers are the teacher's
        # Fused training asks the student for its LM head's inputs instead of its logits; evaluation always has logits.
        requires = self._fused_requires if model.training else self._student_requires
        student = self.task.run(model, student_inputs, requires)
        # In evaluation the teacher always runs, so that fidelity metrics exist even for a CE-only baseline.
        run_teacher = self._uses_teacher or not model.training
        teacher = self.teacher_source(inputs, self._teacher_requires | {"logits"}) if run_teacher else None
        terms: dict[str, torch.Tensor] = {}
        joint = self._joint is not None and self._joint.applies(student, teacher)
        if joint:
            terms.update(self._joint.terms(student, teacher))
        for item in self.objectives:
            if joint and item.key in self._joint.keys:
                continue
            if teacher is None and item.objective.uses_teacher:
                if model.training:
                    raise ValueError(f"Objective {item.key!r} needs the teacher, but this batch has no teacher "
                                     "signals (no `teacher_scores`, or rows that are not in the teacher cache); every "
                                     "training row needs its teacher's signals.")
                continue  # evaluation data without precomputed/cached teacher signals: only the student's terms
            value = item.objective(student, teacher)
            parts = value if isinstance(value, dict) else {"": value}
            for part, tensor in parts.items():
                terms[f"{item.key}/{part}" if part else item.key] = item.weight * tensor
        return terms, student, teacher

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        if model.training:
            self._apply_schedules()
        terms, student, teacher = self.distillation_terms(model, inputs)
        items = num_items_in_batch if num_items_in_batch is not None else student.mask.sum()
        scale = 1.0 / torch.clamp(torch.as_tensor(items, device=student.mask.device, dtype=torch.float32), min=1)
        if model.training and num_items_in_batch is not None and self._items_are_global():
            scale = scale * self.args.world_size
        terms = {key: value * scale for key, value in terms.items()}
        loss = sum(terms.values()) if terms else scale.new_zeros(())
        if model.training and self.args.nonfinite_loss != "ignore" and not self._finite(loss):
            loss, terms = self._nonfinite_step(model, loss, terms, student, teacher), {}
        if model.training:
            for key, value in terms.items():
                self._train_parts[key] = self._train_parts.get(key, 0) + value.detach()
        else:
            local_items = student.mask.sum().detach()
            for key, value in terms.items():
                self._accumulate_eval(f"loss/{key}", value.detach() * local_items, local_items)
            for key, (total, count) in self.task.eval_sums(student, teacher).items():
                self._accumulate_eval(key, total.detach().float(), count)
        return (loss, student) if return_outputs else loss

    # ---- schedules ---------------------------------------------------------------------------------------------

    def _apply_schedules(self) -> None:
        """Set scheduled weights / temperatures for the optimizer step about to be taken (`hf_distill.schedules`):
        progress = steps taken / max_steps, so the values depend on the step count alone (exact on resume)."""
        total = max(self.state.max_steps or 0, 1)
        progress = self.state.global_step / total
        for item in self.objectives:
            for name, value in item.apply_schedules(progress).items():
                self._scheduled[f"schedule/{item.key}.{name}"] = value

    # ---- reliability: non-finite losses, the first-batch check, resuming -----------------------------------------

    def _finite(self, loss: torch.Tensor) -> bool:
        """Whether this step's loss is finite on every process (one flag, so that all processes decide alike)."""
        bad = (~torch.isfinite(loss.detach())).float().reshape(1)
        if self.args.world_size > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")
        return not bool(bad.item())

    def _nonfinite_step(self, model: nn.Module, loss: torch.Tensor, terms: dict[str, torch.Tensor],
                        student: Signals, teacher: Signals | None) -> torch.Tensor:
        """Name what was not finite; raise (``nonfinite_loss="error"``) or return a zero loss whose gradient is zero
        for every trainable parameter (``"skip"``: the batch contributes nothing, and under DDP every process still
        takes part in the gradient all-reduce)."""
        step = self.state.global_step + 1
        culprits = [key for key, value in terms.items() if not torch.isfinite(value.detach()).all()]
        sources = nonfinite_report(teacher, "teacher") + nonfinite_report(student, "student")
        where = (f"objective(s) {culprits}" if culprits else "another process's batch")
        detail = f" ({'; '.join(sources)})" if sources else ""
        if self.args.nonfinite_loss == "error":
            raise NonFiniteLossError(
                f"Step {step}: the loss is {loss.detach().float().item()}, from {where}{detail}. Usual causes: a "
                "float16 teacher overflowing (use teacher_dtype='bfloat16' or 'float32'), a learning rate too high "
                "(lower it, keep max_grad_norm), or bad rows in the data / cache. To drop such batches and go on, "
                "set nonfinite_loss='skip'."
            )
        self.nonfinite_skipped += 1
        logger.warning(f"Step {step}: non-finite loss from {where}{detail}; this batch is skipped "
                       f"({self.nonfinite_skipped} so far).")
        params = [p for p in model.parameters() if p.requires_grad] + self._objective_parameters()
        return sum((p.sum() * 0.0 for p in params), loss.new_zeros(()))

    def train(self, resume_from_checkpoint: str | bool | None = None, trial: Any = None,
              ignore_keys_for_eval: list[str] | None = None, **kwargs: Any) -> Any:
        """`Trainer.train`, plus: ``resume_from_checkpoint=True`` resumes from the last *complete* checkpoint (one a
        kill interrupted while it was being written is passed over), and with ``args.preflight`` one batch is first
        checked through the teacher, the student and every objective (`preflight`): here, before any work, when the
        student is already where the batches go; else (FSDP, DeepSpeed, a model spread over devices: `Trainer`
        places the student inside `train`) as soon as it is placed, before the first step."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
        self._preflight_pending = bool(self.args.preflight) and not self.place_model_on_device
        if self.args.preflight and self.place_model_on_device:
            self._checked_preflight()
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial,
                             ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)

    def _checked_preflight(self) -> None:
        """`preflight`; when it fails, an output folder this trainer made and nothing has been written to is removed
        (bad input leaves nothing behind)."""
        try:
            self.preflight()
        except Exception:
            if self._made_output_dir and os.path.isdir(self.args.output_dir) and not os.listdir(self.args.output_dir):
                with contextlib.suppress(OSError):  # every process checks; another may have removed it already
                    os.rmdir(self.args.output_dir)
            raise

    def preflight(self) -> None:
        """Run the first rows of the training data through the teacher, the student and every objective, without
        gradients or dropout and with every random generator restored afterwards, so a bad batch fails here with a
        clear message instead of deep inside the first step (or hours later in an evaluation)."""
        dataset = self.train_dataset
        if dataset is None or not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            return  # Trainer itself refuses a missing dataset; iterable datasets are not peeked at
        if len(dataset) == 0:
            raise ValueError("`train_dataset` is empty: there is nothing to train on. Check the data files and any "
                             "filtering or `max_train_samples`.")
        dataset = self._remove_unused_columns(dataset, description="training")
        collator = self._get_collator_with_removed_columns(self.data_collator, description="training")
        rows = [dataset[i] for i in range(min(len(dataset), self.args.per_device_train_batch_size))]
        model = self.model
        with _preserved_random_state():
            batch = self._prepare_inputs(collator(rows))
            checked_models = [("student", model), *(("teacher", t) for t in self.teacher_models)]
            for role, checked in checked_models:
                if checked is not None:
                    inputs = self.task.teacher_view(batch) if role == "teacher" else batch  # its own tokens, if any
                    check_positions(base_model_of(unwrap_model(checked)), inputs, role)
                    check_image_size(base_model_of(unwrap_model(checked)), inputs, role)
            was_training = model.training
            model.eval()
            try:
                with torch.no_grad():
                    student_inputs = {k: v for k, v in batch.items() if k != ROW_COLUMN}
                    student = self.task.run(model, student_inputs, self._student_requires)
                    if self._fused_requires != self._student_requires:  # the fused run's own checks (LM head)
                        self.task.run(model, student_inputs, self._fused_requires)
                    teacher = (self.teacher_source(batch, self._teacher_requires | {"logits"})
                               if self._uses_teacher else None)
                    check_signals_present(student, self._student_requires, self.objectives, "student", model)
                    check_signals_present(teacher, self._teacher_requires, self.objectives, "teacher",
                                          self.teacher_model)
                    check_labels(student, self.objectives)
                    broken = nonfinite_report(teacher, "teacher")
                    if broken:
                        source = "cache" if self.teacher_cache is not None else "model"
                        raise ValueError(
                            f"The first training batch's teacher signals are not finite: {'; '.join(broken)}. "
                            + ("Rebuild the teacher cache (it holds NaN/Inf)." if source == "cache" else
                               "A float16 teacher may overflow: use teacher_dtype='bfloat16' or 'float32'; else "
                               "check the teacher's weights.")
                        )
                    # The objectives as training computes them: a one-pass divergence + ce chunk by chunk, so the
                    # check's memory peak is no higher than a training step's (the dense objectives' would be).
                    joint = self._joint is not None and self._joint.applies(student, teacher)
                    if joint:
                        self._joint.terms(student, teacher)
                    for item in self.objectives:
                        if (teacher is not None or not item.objective.uses_teacher) and \
                                not (joint and item.key in self._joint.keys):
                            item.objective(student, teacher)
            finally:
                model.train(was_training)

    # ---- optimizer and saving: trainable objective parameters (e.g. projections) ----------------------------------
    # Trainer only looks after `model.parameters()`: it zeroes, clips (and DDP averages) those alone. The objectives'
    # parameters get the same treatment here: averaged over processes after the last micro-batch of a step, clipped
    # together with the student's, zeroed after each optimizer step (`_ZeroObjectiveGradients`).

    def _objective_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.objectives.parameters() if p.requires_grad]

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.args.world_size > 1 and self.accelerator.sync_gradients:
            for param in self._objective_parameters():
                if param.grad is not None:
                    param.grad = self.accelerator.reduce(param.grad, reduction="mean")
        return loss

    def _clip_grad_norm(self, model: nn.Module) -> Any:
        params = self._objective_parameters()
        if not params or self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            return super()._clip_grad_norm(model)
        return self.accelerator.clip_grad_norm_([*model.parameters(), *params], self.args.max_grad_norm)

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(model)
        params = [p for p in self.objectives.parameters() if p.requires_grad]
        if params and not any(p is q for group in optimizer.param_groups for p in group["params"] for q in params):
            optimizer.add_param_group({"params": params, "weight_decay": self.args.weight_decay})
        return optimizer

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Write the student (and the objectives' trained parameters, and task extras) to a staging folder, then
        move it into place (`checks.save_atomically`): an interrupted save never leaves a model that looks
        complete.

        Only the writing process stages: `Trainer.save_model` calls `_save` on every process, and a second process's
        `save_atomically` would clear the writer's live staging folder as a stale one. The others go through the base
        class, which returns at once or, for a model sharded at load time, joins its gathers and writes nothing."""
        if not self.args.should_save:
            super()._save(output_dir, state_dict)
            return

        def write(staging: str) -> None:
            super(DistillationTrainer, self)._save(staging, state_dict)
            tensors = {k: v.detach().cpu().contiguous() for k, v in self.objectives.state_dict().items()}
            if tensors:
                save_file(tensors, os.path.join(staging, OBJECTIVES_WEIGHTS_NAME))
            self.task.save_extras(staging, self.accelerator.unwrap_model(self.model), self.objectives)
            if self.args.teacher_ema_decay is not None:
                save_file(_state_tensors(self.teacher_model), os.path.join(staging, EMA_TEACHER_NAME))

        save_atomically(output_dir or self.args.output_dir, write,
                        last=("adapter_config.json", "modules.json", "config.json"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = os.path.join(resume_from_checkpoint, OBJECTIVES_WEIGHTS_NAME)
        if os.path.isfile(path):
            self.objectives.load_state_dict(load_file(path, device=str(self.args.device)))
        if self.args.teacher_ema_decay is not None:
            path = os.path.join(resume_from_checkpoint, EMA_TEACHER_NAME)
            if not os.path.isfile(path):
                raise ValueError(f"{resume_from_checkpoint!r} has no {EMA_TEACHER_NAME}: it was not written by a run "
                                 "with `teacher_ema_decay`, so the moving-average teacher cannot be restored.")
            unwrap_model(self.teacher_model).load_state_dict(load_file(path, device=str(self.args.device)))

    # ---- logging ---------------------------------------------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._train_parts:
            steps = max(self.state.global_step - self._train_parts_since, 1)
            keys = sorted(self._train_parts)
            stacked = torch.stack([torch.as_tensor(self._train_parts[k], device=self.args.device) for k in keys])
            if self.args.world_size > 1:
                stacked = self.accelerator.gather(stacked.unsqueeze(0)).mean(0)
            for key, value in zip(keys, (stacked / steps).tolist(), strict=False):
                logs[f"loss/{key}"] = value
            self._train_parts = {}
            self._train_parts_since = self.state.global_step
        if "loss" in logs and self.nonfinite_skipped:
            logs["nonfinite_skipped"] = self.nonfinite_skipped
        if "loss" in logs:
            logs.update(self._scheduled)
        super().log(logs, start_time)

    # ---- evaluation ------------------------------------------------------------------------------------------------

    @staticmethod
    def _empty_eval_sums() -> defaultdict[str, list]:
        """``{metric: [sum, count]}`` accumulated over one evaluation."""
        return defaultdict(lambda: [0, 0])

    def _accumulate_eval(self, key: str, total: torch.Tensor, count: torch.Tensor) -> None:
        entry = self._eval_sums[key]
        entry[0] = entry[0] + total
        entry[1] = entry[1] + count

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """The distillation loss on ``inputs`` (labels are optional) and, for ``compute_metrics``, the student's
        aligned logits and labels. Logits are only returned when ``compute_metrics`` will use them."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, student = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only or self.compute_metrics is None or student.logits is None:
            return loss.detach(), None, None
        return loss.detach(), student.logits.detach(), None if student.labels is None else student.labels.detach()

    def evaluation_loop(
        self,
        dataloader: Any,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> EvalLoopOutput:
        """Run the standard loop, then report the distillation terms and task metrics over the whole set.

        ``<prefix>_loss`` is set to the item-weighted mean of the distillation loss (the sum of the
        ``<prefix>_loss/<name>`` terms), consistent with the training loss; it is left out when no objective could
        be evaluated (teacher objectives on eval data without teacher signals, and no label objective).
        """
        self._eval_sums = self._empty_eval_sums()
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        prefix = metric_key_prefix
        keys = sorted(self._eval_sums)
        if not keys:
            return output
        device = self.args.device
        totals = torch.stack(
            [torch.stack([torch.as_tensor(v, device=device, dtype=torch.float64) for v in self._eval_sums[k]])
             for k in keys]
        )
        if self.args.world_size > 1:
            totals = self.accelerator.reduce(totals, reduction="sum")
        means = {k: (t[0] / t[1].clamp(min=1)).item() for k, t in zip(keys, totals, strict=False)}
        loss_terms = {k: v for k, v in means.items() if k.startswith("loss/")}
        metrics = self.task.finalize_eval({k: v for k, v in means.items() if k not in loss_terms})
        for key, value in loss_terms.items():
            output.metrics[f"{prefix}_{key}"] = value
        if loss_terms:
            output.metrics[f"{prefix}_loss"] = sum(loss_terms.values())
        else:  # no objective could be evaluated (e.g. margin_mse on data without teacher scores): no loss, not 0
            output.metrics.pop(f"{prefix}_loss", None)
        for key, value in metrics.items():
            output.metrics[f"{prefix}_{key}"] = value
        self._eval_sums = self._empty_eval_sums()
        return output

    # ---- Hub -------------------------------------------------------------------------------------------------------

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """Save the student to ``args.output_dir`` and upload it with a distillation model card, in one commit
        (`hf_distill.hub.push_trainer`): teacher as ``base_model`` when it has a Hub id, objectives, training
        arguments, evaluation metrics. The card is built in memory, ``training_args.bin`` is not uploaded.

        Beyond `Trainer.push_to_hub`'s arguments: ``repo_id`` (default ``args.hub_model_id``), ``base_model``,
        ``cache_repo_id`` (push ``args.teacher_cache`` as a dataset repository), ``include_teacher``, ``api`` (an
        ``HfApi`` or stand-in); ``language``, ``license``, ``tags``, ``finetuned_from``, ``dataset_tags`` go to the
        card. ``private`` defaults to ``args.hub_private_repo``, else True. Returns a `hf_distill.hub.PushResult`.
        """
        from .hub import push_trainer

        if not blocking:
            logger.warning("`blocking=False` has no effect here: the push returns when the commit is made.")
        return push_trainer(self, commit_message=commit_message, token=token, revision=revision, private=private,
                            **kwargs)

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
    ) -> None:
        """Write the distillation model card (`hf_distill.hub.build_model_card`) to ``args.output_dir/README.md``,
        in place of `Trainer`'s generic one. ``tasks``, ``dataset`` and ``dataset_args`` are not used."""
        if not self.is_world_process_zero():
            return
        from .hub import build_model_card

        repo_id = self.args.hub_model_id or os.path.basename(os.path.abspath(self.args.output_dir))
        datasets = [dataset_tags] if isinstance(dataset_tags, str) else dataset_tags
        card = build_model_card(self.args.output_dir, repo_id, base_model=finetuned_from, trainer=self,
                                language=language, license=license, tags=[tags] if isinstance(tags, str) else tags,
                                datasets=datasets, model_name=model_name)
        card.save(os.path.join(self.args.output_dir, "README.md"))


@contextmanager
def _naming_teacher(index: int, ensemble: bool) -> Any:
    """Prefix an error raised while loading or checking one teacher of an ensemble with ``teacher_model[index]``, so
    the message says which teacher is wrong (a single teacher's errors pass unchanged)."""
    try:
        yield
    except (ValueError, TypeError, OSError) as err:
        if not ensemble:
            raise
        kind = ValueError if isinstance(err, ValueError) else TypeError if isinstance(err, TypeError) else OSError
        raise kind(f"`teacher_model[{index}]`: {err}") from err


def _trusts_remote_code(args: DistillationConfig) -> bool:
    """Whether the teacher is loaded with ``trust_remote_code`` (its tokenizer then is too)."""
    return bool((args.teacher_model_init_kwargs or {}).get("trust_remote_code"))


def _mix_temperature(objectives: nn.ModuleList, args: DistillationConfig) -> float:
    """The temperature at which an ensemble's distributions are mixed (``teacher_combine="probs"``):
    `teacher_mix_temperature`, else the fixed `temperature` shared by the objectives that read the teacher's logits,
    else 1.0. Warns when an objective's temperature differs: it then tempers the mixture (see
    `signals.mixture_logits`)."""
    temperatures: dict[str, float | None] = {}
    for item in objectives:
        objective = item.objective
        if objective.uses_teacher and "logits" in objective.requires and hasattr(objective, "temperature"):
            fixed = "temperature" not in item.schedules
            temperatures[item.key] = float(objective.temperature) if fixed else None
    if args.teacher_combine != "probs":
        if args.teacher_mix_temperature is not None:
            logger.warning("`teacher_mix_temperature` has no effect with teacher_combine='logits' (the mean of the "
                           "logits is the same rule at every temperature); unset it.")
        return 1.0
    chosen = args.teacher_mix_temperature
    if chosen is None:
        values = set(temperatures.values())
        chosen = values.pop() if len(values) == 1 and None not in values else 1.0
    differing = {k: v for k, v in temperatures.items() if v != chosen}
    if differing:
        shown = ", ".join(f"{k}: {'scheduled' if v is None else v}" for k, v in differing.items())
        logger.warning(f"The teachers' distributions are mixed at temperature {chosen}, but objective(s) use another "
                       f"temperature ({shown}); they see the mixture tempered again, not the mixture of the teachers' "
                       "tempered distributions. Set `teacher_mix_temperature` to the temperature that matters most "
                       "(see docs/multi-teacher.md).")
    return float(chosen)


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str:
    """The newest ``checkpoint-N`` in ``output_dir`` that was completely written. Trainer writes a checkpoint's
    ``trainer_state.json`` last, so a folder whose state file is missing or unreadable (the process was killed while
    saving it) is passed over, with a warning."""
    folder = Path(output_dir)
    found = []
    for path in folder.glob("checkpoint-*") if folder.is_dir() else []:
        suffix = path.name.removeprefix("checkpoint-")
        if path.is_dir() and suffix.isdigit():
            found.append((int(suffix), path))
    for _, path in sorted(found, reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            logger.warning(f"{path} is incomplete (no readable trainer_state.json; the run was probably killed while "
                           "saving it): resuming from an earlier checkpoint.")
            continue
        return str(path)
    raise ValueError(f"`resume_from_checkpoint=True`: {str(folder)!r} holds no complete checkpoint-N folder. Train "
                     "from scratch (drop resume_from_checkpoint), or give a checkpoint path.")


@contextmanager
def _preserved_random_state() -> Any:
    """Restore Python's, NumPy's and torch's (CPU and CUDA) random generators on exit."""
    import numpy as np

    python_state, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


def _state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """A model's state dict as separate contiguous CPU tensors (safetensors refuses tensors that share memory, as
    tied embeddings do; loading fills both names again)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in unwrap_model(model).state_dict().items()}


class _MovingAverageTeacher(TrainerCallback):
    """After each optimizer step: teacher ← decay · teacher + (1 − decay) · student for every parameter (a
    `torch.lerp`), buffers copied; no gradients. Every process does the same update on the same weights."""

    def __init__(self, trainer: DistillationTrainer) -> None:
        self.trainer = trainer

    @torch.no_grad()
    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        decay = self.trainer.args.teacher_ema_decay
        teacher = dict(unwrap_model(self.trainer.teacher_model).named_parameters())
        for name, param in unwrap_model(self.trainer.accelerator.unwrap_model(self.trainer.model)).named_parameters():
            teacher[name].lerp_(param.detach().to(teacher[name].dtype), 1.0 - decay)
        teacher_buffers = dict(unwrap_model(self.trainer.teacher_model).named_buffers())
        for name, buffer in unwrap_model(self.trainer.accelerator.unwrap_model(self.trainer.model)).named_buffers():
            teacher_buffers[name].copy_(buffer)


class _DeferredPreflight(TrainerCallback):
    """The preflight check of a student `Trainer` places only inside `train` (FSDP, DeepSpeed, model parallel): run at
    the start of training, after the student is wrapped and on its device, before the first step. Every process
    runs it, as every process runs a sharded model's forward."""

    def __init__(self, trainer: DistillationTrainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.trainer._preflight_pending:
            self.trainer._preflight_pending = False
            self.trainer._checked_preflight()


class _ZeroObjectiveGradients(TrainerCallback):
    """Trainer zeroes only the model's gradients after an optimizer step; without this, the gradients of an
    objective's parameters (e.g. a projection) would add up over the whole run."""

    def __init__(self, objectives: nn.Module) -> None:
        self.objectives = objectives

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.objectives.zero_grad(set_to_none=True)
