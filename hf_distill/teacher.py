"""Loading and preparing the teacher, checking it against the student, and the live teacher source."""

from __future__ import annotations

import copy
from typing import Any

import torch
from accelerate.utils import DistributedType
from torch import nn
from transformers import PreTrainedTokenizerBase
from transformers.utils import logging

from .checks import remote_code_guard
from .signals import Signals, combine_signals
from .tasks import TaskAdapter, base_model_of

logger = logging.get_logger(__name__)

__all__ = [
    "load_teacher",
    "freeze_teacher",
    "prepare_teacher",
    "deepspeed_teacher_config",
    "shared_logit_width",
    "LiveTeacher",
    "NoTeacher",
    "ScoresColumnTeacher",
    "StudentBaseTeacher",
    "EnsembleTeacher",
]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_teacher(
    teacher: nn.Module | str, task: TaskAdapter, dtype: str = "auto", init_kwargs: dict[str, Any] | None = None
) -> nn.Module:
    """The teacher as a module: loaded with the task's auto class when given as a path or hub id, cast to
    ``dtype`` unless ``"auto"``."""
    if isinstance(teacher, str):
        kwargs = dict(init_kwargs or {})
        kwargs["dtype"] = _DTYPES.get(dtype, "auto")
        try:
            with remote_code_guard(teacher, "set teacher_model_init_kwargs={'trust_remote_code': True} (in a recipe: "
                                   "teacher.init_kwargs.trust_remote_code: true)"):
                teacher = task.load_model(teacher, **kwargs)
        except OSError as err:
            raise OSError(
                f"Could not load the teacher {teacher!r} ({err}). Give a local folder written by "
                "`save_pretrained`, a hub id reachable from this machine, or a loaded model."
            ) from err
    elif not isinstance(teacher, nn.Module):
        raise TypeError(
            f"`teacher_model` must be a model, a local path or a hub id, got {type(teacher).__name__}."
        )
    elif dtype != "auto":
        teacher = teacher.to(_DTYPES[dtype])
    return teacher


def tokenizer_beside(reference: Any, trust_remote_code: bool = False) -> Any:
    """The tokenizer saved with a teacher given as a local folder or hub id (to compare its vocabulary with the
    student's), else None: a model object, or a folder without a tokenizer."""
    if not isinstance(reference, str):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(reference, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return None


def freeze_teacher(teacher: nn.Module) -> nn.Module:
    """Eval mode (no dropout) and no gradients, so it is never trained nor given optimizer state."""
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


# ---- placing the teacher under each distributed strategy ---------------------------------------------------------

#: Top-level keys of a DeepSpeed config that only concern training; the teacher's engine gets none of them.
_DEEPSPEED_TRAINING_KEYS = ("optimizer", "scheduler", "gradient_clipping", "train_batch_size",
                            "gradient_accumulation_steps", "torch_autocast")


def _hidden_size(teacher: nn.Module) -> int | None:
    """The teacher's width for DeepSpeed's bucket sizes: the largest of ``config.hidden_sizes`` (conv nets such as
    ResNet list one per stage) or ``config.hidden_size``; None when the model has no such config."""
    config = getattr(base_model_of(teacher), "config", None)
    sizes = getattr(config, "hidden_sizes", None)
    if sizes:
        return int(max(sizes))
    size = getattr(config, "hidden_size", None)
    return int(size) if isinstance(size, int) else None


def _without_auto(value: Any) -> Any:
    """``value`` with every ``"auto"`` entry of its dicts removed (DeepSpeed then uses its own default)."""
    if isinstance(value, dict):
        return {k: _without_auto(v) for k, v in value.items() if v != "auto"}
    return value


def deepspeed_teacher_config(student_config: dict[str, Any], hidden_size: int | None, micro_batch_size: int,
                             teacher_dtype: str = "auto", bf16: bool = False, fp16: bool = False) -> dict[str, Any]:
    """The DeepSpeed config that shards a frozen teacher under ZeRO-3, derived from the student's.

    Kept from ``student_config``: the ZeRO-3 settings (parameter offload, live-parameter limits, ...) and every other
    section DeepSpeed reads at inference (communication dtype, ...). Dropped: what only training uses (optimizer,
    scheduler, gradient clipping and accumulation, total batch size, optimizer offload, DeepSpeed's autocast, which
    would only apply to calls through the engine). Set:

    - ``train_micro_batch_size_per_gpu = micro_batch_size`` (DeepSpeed requires a batch size);
    - with ``hidden_size = h`` (the teacher's width): ``reduce_bucket_size = h·h``,
      ``stage3_prefetch_bucket_size = int(0.9·h·h)``, ``stage3_param_persistence_threshold = 10·h`` — the values
      transformers gives a ZeRO-3 student and TRL a ZeRO-3 reference model, here from the teacher's width (parameters
      smaller than 10·h stay whole on every process);
    - ``bf16.enabled`` / ``fp16.enabled``: from ``teacher_dtype`` when it is not ``"auto"`` (``"float32"`` turns both
      off), else from the student's config, where ``"auto"`` means the ``bf16`` / ``fp16`` arguments.

    Any ``"auto"`` still left (it would be filled from the student's training arguments) is removed, so DeepSpeed
    uses its default. ``student_config`` is not changed.

    Raises ``ValueError`` unless ``student_config`` is a ZeRO stage 3 config: under stages 0-2 the teacher is
    replicated, not sharded, and needs no DeepSpeed engine.
    """
    stage = student_config.get("zero_optimization", {}).get("stage", 0)
    if stage != 3:
        raise ValueError(
            f"The DeepSpeed config has `zero_optimization.stage={stage!r}`; only ZeRO stage 3 shards the teacher. "
            "Under stages 0-2 every process holds a whole teacher: place it with `teacher.to(device)`."
        )
    config = copy.deepcopy({k: v for k, v in student_config.items() if k not in _DEEPSPEED_TRAINING_KEYS})
    zero = {k: v for k, v in config["zero_optimization"].items() if k != "offload_optimizer"}
    if hidden_size is not None:
        zero["reduce_bucket_size"] = hidden_size * hidden_size
        zero["stage3_prefetch_bucket_size"] = int(0.9 * hidden_size * hidden_size)
        zero["stage3_param_persistence_threshold"] = 10 * hidden_size
    config["zero_optimization"] = zero
    config["train_micro_batch_size_per_gpu"] = micro_batch_size
    precision = {"bf16": bf16, "fp16": fp16}
    for name in precision:
        given = config.get(name, {}).get("enabled", False)
        precision[name] = precision[name] if given == "auto" else bool(given)
    if teacher_dtype != "auto":
        precision = {"bf16": teacher_dtype == "bfloat16", "fp16": teacher_dtype == "float16"}
    for name, enabled in precision.items():
        config[name] = {**config.get(name, {}), "enabled": enabled}
    return _without_auto(config)


def prepare_teacher(teacher: nn.Module, accelerator: Any, args: Any) -> tuple[nn.Module, Any]:
    """Place a frozen teacher for the run's distributed strategy; returns ``(model to run, owner)``.

    - DeepSpeed ZeRO-3: sharded like the student through ``deepspeed.initialize`` with `deepspeed_teacher_config`
      (no optimizer); the model to run is the engine's module, whose hooks gather each layer's parameters for its
      forward. ``owner`` is the engine: keep a reference to it for the run.
    - DeepSpeed ZeRO-1/2: a whole replica on the process's device (those stages shard only training state).
    - FSDP: wrapped with the student's FSDP settings and auto-wrap policy (FSDP1: ``FullyShardedDataParallel``;
      FSDP2: ``fully_shard`` on each policy-matched module, then the root), so every process holds a shard and the
      forward gathers parameters on the device. A copy of the plugin is used: its auto-wrap policy is resolved
      for the teacher's layer classes without changing the student's. Every group reshards after its forward (the
      teacher has no backward pass to do it later).
    - Otherwise (one process, DDP, CPU processes): placed by ``accelerator.prepare_model(evaluation_mode=True)``,
      never wrapped in ``DistributedDataParallel``.

    In every case the teacher stays in eval mode with ``requires_grad=False`` and is never given to the optimizer.
    """
    owner = None
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        plugin = accelerator.state.deepspeed_plugin
        if plugin.zero_stage == 3:
            teacher, owner = _deepspeed_zero3(teacher, plugin.deepspeed_config, args)
        else:
            teacher = teacher.to(accelerator.device)
    elif accelerator.distributed_type == DistributedType.FSDP:
        plugin = copy.copy(accelerator.state.fsdp_plugin)  # set_auto_wrap_policy rewrites the plugin's fields
        plugin.set_auto_wrap_policy(teacher)
        if getattr(plugin, "fsdp_version", 1) == 2:
            teacher = _fully_shard(teacher, plugin, accelerator)
        else:
            teacher = _fsdp1_wrap(teacher, plugin, accelerator)
    else:
        teacher = accelerator.prepare_model(teacher, evaluation_mode=True)
    return freeze_teacher(teacher), owner


def _deepspeed_zero3(teacher: nn.Module, student_config: dict[str, Any], args: Any) -> tuple[nn.Module, Any]:
    try:
        import deepspeed
    except ImportError as err:  # the student's engine needs it too, so this is rare
        raise ImportError("A live teacher under DeepSpeed ZeRO-3 needs the `deepspeed` package: "
                          "`pip install hf_distill[deepspeed]`, or train from a teacher cache.") from err
    config = deepspeed_teacher_config(student_config, _hidden_size(teacher), args.per_device_train_batch_size,
                                      args.teacher_dtype, bool(args.bf16), bool(args.fp16))
    engine, *_ = deepspeed.initialize(model=teacher, config=config)
    engine.eval()
    return engine.module, engine


def _fsdp1_wrap(teacher: nn.Module, plugin: Any, accelerator: Any) -> nn.Module:
    from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy

    if isinstance(teacher, FullyShardedDataParallel):
        return teacher
    # ZeRO-2-like strategies keep parameters gathered from forward to backward; the teacher has no backward, so
    # they would stay gathered for the whole run: the teacher takes the resharding counterpart.
    strategy = plugin.sharding_strategy or plugin.reshard_after_forward
    strategy = {ShardingStrategy.SHARD_GRAD_OP: ShardingStrategy.FULL_SHARD,
                ShardingStrategy._HYBRID_SHARD_ZERO2: ShardingStrategy.HYBRID_SHARD}.get(strategy, strategy)
    return FullyShardedDataParallel(
        teacher,
        sharding_strategy=strategy,
        cpu_offload=plugin.cpu_offload,
        auto_wrap_policy=plugin.auto_wrap_policy,
        mixed_precision=plugin.mixed_precision_policy,
        sync_module_states=plugin.sync_module_states,  # a teacher loaded on rank 0 only gets its weights from there
        param_init_fn=plugin.param_init_fn,
        forward_prefetch=plugin.forward_prefetch,
        use_orig_params=plugin.use_orig_params,
        limit_all_gathers=plugin.limit_all_gathers,
        device_id=accelerator.device,
    )


def _fully_shard(teacher: nn.Module, plugin: Any, accelerator: Any) -> nn.Module:
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    if isinstance(teacher, FSDPModule):
        return teacher
    on_meta = torch.tensor([float(any(p.is_meta for p in teacher.parameters()))], device=accelerator.device)
    if torch.distributed.is_initialized():  # every process must take the same branch
        torch.distributed.all_reduce(on_meta, op=torch.distributed.ReduceOp.MAX)
    if on_meta.item():
        raise ValueError(
            "The teacher's weights are on the meta device in some process: FSDP's `cpu_ram_efficient_loading` loads "
            "a model given as a path on process 0 only, and the FSDP2 teacher is not filled from there. Set "
            "`fsdp_config={..., 'cpu_ram_efficient_loading': False}` (in an accelerate config: "
            "`fsdp_cpu_ram_efficient_loading: false`), use FSDP1 (`'version': 1`, whose `sync_module_states` copies "
            "process 0's weights), or train from a teacher cache."
        )
    mesh = getattr(accelerator, "torch_device_mesh", None)
    options = {
        "reshard_after_forward": True,
        "offload_policy": plugin.cpu_offload,
        "mp_policy": plugin.mixed_precision_policy or MixedPrecisionPolicy(),
        "mesh": mesh[tuple(accelerator.parallelism_config.fsdp_dim_names)] if mesh is not None else None,
    }
    if options["offload_policy"] is None:
        del options["offload_policy"]
    policy = fsdp2_prepare_auto_wrap_policy(plugin, teacher)
    if policy is not None:
        for module in reversed(list(teacher.modules())[1:]):  # innermost first; the root is sharded last
            if policy(module) and not isinstance(module, FSDPModule):
                fully_shard(module, **options)
    fully_shard(teacher, **options)
    return teacher


def _same_vocabulary(student_tokenizer: Any, teacher_tokenizer: Any) -> bool:
    return student_tokenizer.get_vocab() == teacher_tokenizer.get_vocab()


def shared_logit_width(
    task: TaskAdapter,
    student: nn.Module,
    teacher: nn.Module,
    tokenizer: PreTrainedTokenizerBase | None = None,
    teacher_tokenizer: PreTrainedTokenizerBase | None = None,
) -> int | None:
    """Check that teacher and student logits can be compared; return the width to slice the teacher's logits
    to (its vocabulary is padded beyond the student's), or None when they are equal or have no logits.

    Raises ``ValueError`` naming both sizes for any other mismatch, before training starts.
    """
    student_width = task.logit_width(base_model_of(student))
    teacher_width = task.logit_width(base_model_of(teacher))
    if student_width is None or teacher_width is None or student_width == teacher_width:
        if tokenizer is not None and teacher_tokenizer is not None and hasattr(tokenizer, "get_vocab"):
            if not _same_vocabulary(tokenizer, teacher_tokenizer):
                raise ValueError(
                    "The teacher's tokenizer differs from the student's, so their logits index different tokens. "
                    "Use a teacher and student that share a tokenizer (cross-tokenizer distillation is not "
                    "supported)."
                )
        return None
    if not task.allows_padded_teacher:
        raise ValueError(
            f"The student has {student_width} outputs but the teacher has {teacher_width}; {task.name} logits must "
            f"match one to one. Build the student with num_labels={teacher_width} (and the teacher's id2label)."
        )
    if teacher_width < student_width:
        raise ValueError(
            f"The student's vocabulary ({student_width}) is larger than the teacher's ({teacher_width}); logit "
            "distillation needs the same vocabulary. Resize the student with "
            f"`student.resize_token_embeddings({teacher_width})` or pick a teacher with the student's tokenizer."
        )
    if tokenizer is not None and len(tokenizer) > student_width:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the student's vocabulary is {student_width} and the "
            f"teacher's {teacher_width}; they do not share a tokenizer. Resize the student to the tokenizer or "
            "use matching models."
        )
    if tokenizer is not None and teacher_tokenizer is not None and not _same_vocabulary(tokenizer, teacher_tokenizer):
        raise ValueError(
            f"The teacher's vocabulary ({teacher_width}) is wider than the student's ({student_width}) and their "
            "tokenizers differ, so the shared range does not hold the same tokens. Use a teacher and student that "
            "share a tokenizer."
        )
    logger.warning(
        f"The teacher's vocabulary ({teacher_width}) is padded beyond the student's ({student_width}); logits are "
        f"compared on the shared range [0, {student_width})"
        + ("." if teacher_tokenizer is not None else ", assuming both models use the same tokenizer there.")
    )
    return student_width


class LiveTeacher:
    """A teacher source that runs the frozen teacher on each batch under ``torch.no_grad()``."""

    def __init__(self, model: nn.Module, task: TaskAdapter, logit_width: int | None = None) -> None:
        self.model = model
        self.task = task
        self.logit_width = logit_width

    @torch.no_grad()
    def __call__(self, batch: dict[str, Any], requires: frozenset[str]) -> Signals:
        signals = self.task.run(self.model, self.task.teacher_view(batch), requires)
        if self.logit_width is not None and signals.logits is not None:
            signals.logits = signals.logits[..., : self.logit_width]
        return signals


class ScoresColumnTeacher:
    """A teacher source that reads precomputed scores from the batch (``teacher_scores``, put there by the ranking
    collator from ``teacher_scores_column``) instead of running a model. Evaluation data without the column gives
    no teacher signals (the teacher's metrics are then not reported); training data must have it."""

    def __init__(self, task: TaskAdapter) -> None:
        self.task = task

    def __call__(self, batch: dict[str, Any], requires: frozenset[str]) -> Signals | None:
        if "teacher_scores" not in batch:
            return None
        return Signals(scores=batch["teacher_scores"].float(), mask=self.task.item_mask(batch))


class NoTeacher:
    """The teacher source of a run whose objectives need no teacher (e.g. a label-only baseline): no signals."""

    def __call__(self, batch: dict[str, Any], requires: frozenset[str]) -> None:
        return None


class StudentBaseTeacher:
    """The teacher source of self-distillation into an adapter: the PEFT student's own base model, run with its
    adapters disabled, in eval mode (no dropout) and under ``torch.no_grad()``; no second copy of the model."""

    def __init__(self, student: nn.Module, task: TaskAdapter) -> None:
        self.student = student
        self.task = task

    @torch.no_grad()
    def __call__(self, batch: dict[str, Any], requires: frozenset[str]) -> Signals:
        was_training = self.student.training
        self.student.eval()
        try:
            with self.student.disable_adapter():
                return self.task.run(self.student, batch, requires)
        finally:
            self.student.train(was_training)


class EnsembleTeacher:
    """A teacher source made of several teacher sources (e.g. one `LiveTeacher` per teacher model), whose signals
    for each batch are combined into one teacher's `Signals` by `hf_distill.signals.combine_signals`, so objectives
    and metrics see a single teacher.

    Args:
        sources: the teacher sources, each called as ``source(batch, requires)``.
        weights: one number >= 0 per source with a positive sum (normalised). A source of weight 0 is not run.
        combine: ``"probs"`` (logits of the weighted mixture of the teachers' distributions, `mixture_logits`) or
            ``"logits"`` (the weighted mean of their logits).
        temperature: with ``"probs"``, the temperature T at which the distributions are mixed: the combined logits
            ``T · log Σ_k w_k softmax(z_k / T)`` give exactly ``Σ_k w_k softmax(z_k / T)`` to an objective at
            temperature T. An objective at another temperature T' tempers that mixture (``∝ q^(T / T')``), which is
            not the mixture of the teachers' distributions at T'.
        names: how errors name each source (default ``teacher_model[k]``).

    A batch for which every source has no signals (e.g. evaluation data missing from a cache) gets None.
    """

    def __init__(self, sources: list[Any], weights: list[float], combine: str = "probs", temperature: float = 1.0,
                 names: list[str] | None = None) -> None:
        if len(weights) != len(sources):
            raise ValueError(f"`teacher_weights` has {len(weights)} entries but there are {len(sources)} teachers; "
                             "give one weight per teacher.")
        self.sources = list(sources)
        self.weights = [float(w) for w in weights]
        self.combine = combine
        self.temperature = temperature
        self.names = names or [f"`teacher_model[{k}]`" for k in range(len(sources))]

    @torch.no_grad()
    def __call__(self, batch: dict[str, Any], requires: frozenset[str]) -> Signals | None:
        active = [k for k, w in enumerate(self.weights) if w > 0]
        outputs = [self.sources[k](batch, requires) for k in active]
        if all(out is None for out in outputs):
            return None
        missing = [self.names[k] for k, out in zip(active, outputs, strict=True) if out is None]
        if missing:
            raise ValueError(f"{', '.join(missing)} gave no signals for this batch while the other teachers did; every "
                             "teacher must cover the same data.")
        return combine_signals(outputs, [self.weights[k] for k in active], self.combine, self.temperature,
                               [self.names[k] for k in active])
