"""Choosing a student from measured numbers: ``hf-distill plan``.

For a teacher and a list of candidate students (subsets of its layers, DistilBERT-style, and optionally narrower
randomly initialised models), :func:`plan_students` measures on this machine, side by side in one run:

* **parameters** — ``model.num_parameters()`` (shared tensors counted once);
* **size on disk** — the bytes of the ``*.safetensors`` file(s) that ``save_pretrained`` writes for the model,
  saved to a temporary folder and measured (weights plus the safetensors header; config files excluded);
* **latency** — seconds per forward pass on one batch of ``batch_size`` sequences of ``seq_len`` tokens (random
  token ids from a fixed seed, every position attended; vision models get random ``pixel_values`` of the
  config's image size), in eval mode under ``torch.inference_mode``, with a fixed number of torch threads, after
  ``warmup`` untimed passes; the median of ``repeats`` timed passes, with the interquartile range. All models are
  timed in turns (teacher, student 1, student 2, ..., teacher, ...) so that a change in the machine's load
  affects every candidate alike (`hf_distill.report.forward_times`);
* **speed-up** — the teacher's median latency divided by the candidate's, both from this run;
* optionally **fidelity** (``quick_distill=N``) — each layer-subset candidate is distilled for N optimizer steps
  with a recipe's data, objectives and training arguments (`DistillationTrainer`, as ``hf-distill train`` builds
  it) and evaluated on the recipe's evaluation data before and after those steps, with the metric the task's
  evaluation reports (mean cosine to the teacher's embeddings, top-1 agreement with the teacher, MRR@10).

The numbers answer "what do I gain and lose with k layers" before a full run. Two papers motivate looking
before training: DistilBERT (Sanh et al. 2019, arXiv:1910.01108) keeps 97 % of BERT's GLUE score with 6 of its 12
layers, initialised from every other teacher layer; "Towards the Law of Capacity Gap in Distilling Language
Models" (Zhang et al. 2023, arXiv:2311.07052) finds that the best teacher for a student is not the largest one,
so the student's size is a choice worth measuring rather than guessing.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = ["PlanError", "PlanRow", "Plan", "plan_students", "default_layer_counts", "format_plan",
           "parse_int_list", "parse_float_list", "machine_description", "FIDELITY_METRICS"]

# The fidelity a quick distillation reports, per task: (key of `DistillationTrainer.evaluate()`, the teacher's own
# value's key or None, what it is). Every one of them is higher-is-better.
FIDELITY_METRICS: dict[str, tuple[str, str | None, str]] = {
    "embedding": ("eval_cosine_to_teacher", None, "mean cosine similarity of student and teacher embeddings"),
    "classification": ("eval_top1_agreement", None, "share of examples where student and teacher predict alike"),
    "language": ("eval_top1_agreement", None, "share of tokens where student and teacher predict alike"),
    "ranking": ("eval_mrr@10", "eval_teacher_mrr@10", "MRR@10 of the student's ranking (teacher's in its row)"),
}


class PlanError(ValueError):
    """A `hf-distill plan` option (or `plan_students` argument) is invalid; the message names it and the fix."""


@dataclass
class PlanRow:
    """One measured model: the teacher or a candidate student. Latencies in milliseconds, sizes in bytes."""

    name: str  #: "teacher", "3 layers", "3 layers, width 0.5"
    kind: str  #: "teacher", "layers" (teacher layers copied) or "width" (narrower, randomly initialised)
    num_layers: int
    layers: list[int] | None  #: teacher layers the row's model has (copied ones for a student; None: random init)
    hidden_size: int
    init: str  #: "teacher" (the teacher itself), "copied" (from the teacher's weights) or "random"
    parameters: int
    size_bytes: int
    latency_ms: float  #: median of the timed forward passes
    latency_iqr_ms: float  #: interquartile range of the timed forward passes
    speedup: float  #: teacher latency / this row's latency, both from the same run
    compression: float  #: teacher parameters / this row's parameters
    fidelity_before: float | None = None  #: fidelity metric before the quick distillation (step 0)
    fidelity: float | None = None  #: fidelity metric after ``quick_distill_steps`` steps
    eval_metrics: dict[str, float] = field(default_factory=dict)  #: every metric of the evaluation after the steps
    note: str | None = None


@dataclass
class Plan:
    """Everything `plan_students` measured, with the conditions needed to read (and reproduce) the numbers."""

    teacher: str
    architecture: str
    task: str | None
    teacher_layers: int
    dtype: str
    device: str
    machine: str
    threads: int
    batch_size: int
    seq_len: int
    warmup: int
    repeats: int
    rows: list[PlanRow]
    quick_distill_steps: int = 0
    fidelity_metric: str | None = None
    recipe: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain JSON-able data (``rows`` as a list of dicts with the `PlanRow` fields)."""
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


# ---- options ------------------------------------------------------------------------------------------------------


def _parse_list(text: str, option: str, convert: Any, what: str, item_kind: str, example: str) -> list[Any]:
    """``text`` split at commas, each item through ``convert``; a `PlanError` naming ``option`` for a bad item."""
    values = []
    for item in text.split(","):
        item = item.strip()
        try:
            values.append(convert(item))
        except ValueError:
            raise PlanError(f"`{option}` takes {what}, got {text!r} ({item!r} is not {item_kind}). Example: "
                            f"{option} {example}.") from None
    return values


def parse_int_list(text: str, option: str) -> list[int]:
    """``"2,3,4"`` → ``[2, 3, 4]``; a `PlanError` naming ``option`` for anything else."""
    return _parse_list(text, option, int, "whole numbers separated by commas", "an integer", "2,3,4")


def parse_float_list(text: str, option: str) -> list[float]:
    """``"1,0.5"`` → ``[1.0, 0.5]``; a `PlanError` naming ``option`` for anything else."""
    return _parse_list(text, option, float, "numbers separated by commas", "a number", "1,0.5")


def default_layer_counts(total: int) -> list[int]:
    """Layer counts tried when none are given: about 2/3, 1/2, 1/3 and 1/4 of the teacher's layers (rounded,
    at least 1, without repeats, largest first); ``[4, 3, 2]`` for a 6-layer teacher, ``[8, 6, 4, 3]`` for 12."""
    counts = {max(1, round(total * share)) for share in (2 / 3, 1 / 2, 1 / 3, 1 / 4)}
    return sorted((c for c in counts if c < total), reverse=True) or [total]


def _check_layer_counts(counts: Sequence[int], total: int, option: str) -> list[int]:
    counts = list(counts)
    if not counts:
        raise PlanError(f"`{option}` is empty: give at least one layer count, e.g. {option} 2,3,4.")
    for count in counts:
        if isinstance(count, bool) or not isinstance(count, int):
            raise PlanError(f"`{option}` takes whole numbers, got {count!r}. Example: {option} 2,3,4.")
        if not 1 <= count <= total:
            example = ",".join(map(str, default_layer_counts(total)))
            raise PlanError(f"`{option}` got {count}, but a student keeps between 1 and the teacher's {total} layers. "
                            f"Use values from 1 to {total}, e.g. {option} {example}.")
    repeated = sorted({c for c in counts if counts.count(c) > 1})
    if repeated:
        raise PlanError(f"`{option}` lists {repeated[0]} more than once ({counts}); give each layer count once.")
    return counts


def _check_widths(widths: Sequence[float], option: str) -> list[float]:
    widths = list(widths)
    for width in widths:
        if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 1:
            raise PlanError(f"`{option}` takes fractions of the teacher's width in (0, 1], got {width!r}. "
                            f"Example: {option} 1,0.5 (1 = the teacher's width, layers copied from it).")
    if len(set(widths)) != len(widths):
        raise PlanError(f"`{option}` lists a width more than once ({widths}); give each width once.")
    return widths or [1.0]


def _check_positive(value: int, option: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PlanError(f"`{option}` must be an integer >= {minimum}, got {value!r}.")
    return value


# ---- machine ------------------------------------------------------------------------------------------------------


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def machine_description(device: str = "cpu") -> str:
    """One line: OS, CPU model, CPUs this process may use, the 1-minute load average, python and torch versions,
    torch threads, device."""
    load = _load_average()
    line = (f"{platform.platform()}, {_cpu_name()}, {_cpus()} CPUs"
            f"{'' if load is None else f' (load average {load:.1f})'}, python {platform.python_version()}, torch "
            f"{torch.__version__} ({torch.get_num_threads()} threads); device: {device}")
    if device.startswith("cuda"):
        line += f" ({torch.cuda.get_device_name(torch.device(device))})"
    return line


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ---- models -------------------------------------------------------------------------------------------------------


def _detect_task(architecture: str) -> str | None:
    from .tasks import TASKS

    for name in TASKS.names():
        cls = TASKS.get(name)
        if cls.auto_detect and cls.from_architecture(architecture) is not None:
            return name
    return None


def _load_config(reference: str, option: str) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(reference)
    except Exception as err:  # OSError, ValueError, ...: the user needs the option and the fix
        where = "" if Path(reference).exists() else " (no such local folder; as a Hub id it could not be loaded)"
        raise PlanError(f"`{option}`: cannot load a model config from {reference!r}{where}: {type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''} Give a model folder (config.json and weights) "
                        "or a Hub id that is downloaded or reachable.") from None


def _load_teacher(reference: str, config: Any, task: str | None, option: str, **kwargs: Any) -> nn.Module:
    """The teacher with the task's model class (``task=None``: the class in ``config.architectures``)."""
    import transformers

    architecture = (getattr(config, "architectures", None) or [""])[0]
    try:
        if task is not None:
            from .pipeline import _adapter

            return _adapter(task, architecture).load_model(reference, **kwargs)
        cls = getattr(transformers, architecture, None) or transformers.AutoModel
        return cls.from_pretrained(reference, **kwargs)
    except Exception as err:
        raise PlanError(f"`{option}`: cannot load the model in {reference!r} ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''}). Check that the folder holds the weights, "
                        "or pass --task to load it with another model class.") from None


def _narrow_config(config: Any, width: float) -> Any:
    """A copy of ``config`` about ``width`` times as wide: fewer attention heads of the same size (hidden size =
    heads × head size), the feed-forward size scaled alike, key/value heads scaled and kept a divisor of heads."""
    config = copy.deepcopy(config)
    hidden, heads = config.hidden_size, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    new_heads = max(1, round(heads * width))
    new_hidden = new_heads * head_dim
    for name in ("intermediate_size", "n_inner", "ffn_dim", "hidden_dim", "decoder_ffn_dim", "encoder_ffn_dim"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and name in config.to_dict():
            setattr(config, name, max(1, round(value * new_hidden / hidden)))
    kv_heads = getattr(config, "num_key_value_heads", None)
    if isinstance(kv_heads, int):
        new_kv = max(1, round(kv_heads * width))
        while new_heads % new_kv:
            new_kv -= 1
        config.num_key_value_heads = new_kv
    config.num_attention_heads = new_heads
    config.hidden_size = new_hidden
    return config


def _build_candidate(teacher: nn.Module, num_layers: int, width: float) -> tuple[nn.Module, list[int] | None]:
    from .students import _student_config, make_student, select_layers

    total = teacher.config.num_hidden_layers
    kept = select_layers(total, num_layers)
    if width == 1.0:
        return make_student(teacher, layers=kept), kept
    config = _narrow_config(_student_config(teacher.config, kept, total), width)
    try:
        with torch.device(teacher.device):
            student = type(teacher)._from_config(config, dtype=teacher.dtype)
    except Exception as err:
        raise PlanError(f"`--widths`: cannot build a {type(teacher).__name__} {width} times as wide as the teacher "
                        f"({type(err).__name__}: {err}). Drop --widths for this teacher (layer subsets need no new "
                        "shapes).") from None
    student.train(teacher.training)
    return student, None


def _latency_inputs(config: Any, batch_size: int, seq_len: int) -> dict[str, torch.Tensor]:
    """A fixed batch every model gets: ``batch_size`` × ``seq_len`` random token ids (seed 0) with a full attention
    mask, or random ``pixel_values`` for a vision config (``seq_len`` is then unused)."""
    generator = torch.Generator().manual_seed(0)
    vocab = getattr(config, "vocab_size", None)
    if isinstance(vocab, int) and vocab > 0:
        ids = torch.randint(0, vocab, (batch_size, seq_len), generator=generator)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    image_size, channels = getattr(config, "image_size", None), getattr(config, "num_channels", None)
    if image_size and channels:
        height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)[:2]
        return {"pixel_values": torch.randn(batch_size, channels, height, width, generator=generator)}
    raise PlanError(f"`--teacher`: cannot build a typical batch for {type(config).__name__} (it has neither "
                    "`vocab_size` nor `image_size`); plan measures text and vision models.")


def _max_positions(config: Any) -> int | None:
    for name in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _saved_size(model: nn.Module, folder: Path) -> int:
    """Bytes of the ``*.safetensors`` file(s) ``save_pretrained`` writes for ``model`` (weights and header)."""
    model.save_pretrained(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise RuntimeError(f"save_pretrained wrote no safetensors file in {folder}; please report this as a bug.")
    return sum(f.stat().st_size for f in files)


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], 0.0
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return statistics.median(values), q3 - q1


# ---- the plan -----------------------------------------------------------------------------------------------------


def plan_students(
    teacher: str | nn.Module | None,
    layers: Sequence[int] | None = None,
    widths: Sequence[float] = (1.0,),
    *,
    task: str | None = "auto",
    batch_size: int = 32,
    seq_len: int = 128,
    repeats: int = 5,
    warmup: int = 1,
    threads: int | None = None,
    device: str = "cpu",
    quick_distill: int = 0,
    recipe: Any = None,
    eval_samples: int | None = 128,
    echo: Callable[[str], None] | None = None,
) -> Plan:
    """Measure the teacher and candidate students side by side on this machine (see the module docstring).

    Args:
        teacher: A model folder, Hub id or ``package:<name>``, or a loaded `PreTrainedModel` (not with ``recipe``;
            it is moved to ``device``). None with ``recipe``: the recipe's ``teacher.model``.
        layers: Student layer counts; each student keeps that many evenly spread teacher layers
            (`hf_distill.students.select_layers`, first and last kept) and copies their weights
            (`hf_distill.students.make_student`). Default: `default_layer_counts` of the teacher.
        widths: Fractions of the teacher's width. 1 = the layer-subset students above; each value below 1 adds,
            for every layer count, a narrower student with fewer attention heads of the same size. Such a student
            cannot copy the teacher's weights: it is randomly initialised and gets no fidelity.
        task: ``"auto"`` (detected from the teacher's architecture), a task name, or None (load the teacher with
            the class its config names). With ``recipe``, the recipe's task.
        batch_size, seq_len: The timed batch: ``batch_size`` sequences of ``seq_len`` tokens.
        repeats, warmup: Timed and untimed forward passes per model.
        threads: torch intra-op threads while timing (default: torch's current setting).
        device: Where the models run ("cpu", "cuda", "cuda:1", ...).
        quick_distill: Distil each layer-subset candidate for this many steps with ``recipe`` and report its
            fidelity before and after (0 = skip).
        recipe: A `hf_distill.recipes.Recipe` (from `load_recipe`): task, teacher (when ``teacher`` is a reference
            it replaces ``teacher.model``), and for ``quick_distill`` data, objectives and training arguments.
        eval_samples: Evaluate the quick distillation on at most this many evaluation examples (None: all the
            recipe's).
        echo: Where progress lines go (default: the module logger at INFO level).

    Returns:
        A `Plan` whose first row is the teacher, then one row per (layer count, width), in the order given.

    Raises:
        PlanError: for an invalid option (naming it, with the value received and a fix), before any model loads.
    """
    started = time.perf_counter()
    say = echo or logger.info
    _check_positive(batch_size, "--batch-size")
    _check_positive(seq_len, "--seq-len")
    _check_positive(repeats, "--repeats")
    _check_positive(warmup, "--warmup", minimum=0)
    _check_positive(quick_distill, "--quick-distill", minimum=0)
    if threads is not None:
        _check_positive(threads, "--threads")
    if eval_samples is not None:
        _check_positive(eval_samples, "--eval-samples")
    widths = _check_widths(widths, "--widths")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PlanError(f"`--device`: {device!r} was asked for but torch sees no CUDA device. Use --device cpu.")
    if quick_distill and recipe is None:
        raise PlanError("`--quick-distill` needs a recipe for its data, objectives and training arguments: add "
                        "--recipe quickstart (or your recipe file).")

    # Everything checkable from configs, before any weights load.
    recipe, reference, teacher_config, task = _resolve_teacher(teacher, recipe, task, quick_distill, eval_samples)
    architecture = (getattr(teacher_config, "architectures", None) or [type(teacher).__name__])[0]
    if task == "auto":
        task = _detect_task(architecture)
    elif task is not None:
        from .tasks import TASKS

        if task not in TASKS.names():
            raise PlanError(f"`--task` must be one of {', '.join(TASKS.names())}, got {task!r}.")
    total = getattr(teacher_config, "num_hidden_layers", None)
    if not isinstance(total, int) or total < 1:
        raise PlanError(f"`--teacher`: {architecture} has no single stack of layers (`num_hidden_layers` is "
                        f"{total!r}); plan builds students from layer subsets of such models.")
    counts = _check_layer_counts(default_layer_counts(total) if layers is None else layers, total, "--layers")
    positions = _max_positions(teacher_config)
    if positions is not None and getattr(teacher_config, "vocab_size", None) and seq_len > positions:
        raise PlanError(f"`--seq-len` is {seq_len} but {architecture} takes at most {positions} positions; use "
                        f"--seq-len {min(128, positions)} (or any value up to {positions}).")
    if quick_distill and recipe.teacher.get("finetune"):
        raise PlanError("`--quick-distill`: the recipe fine-tunes its teacher first (teacher.finetune). Train it "
                        "once with `hf-distill train`, then give --teacher RUN_DIR/teacher and --set "
                        "teacher.finetune=null.")
    inputs = _latency_inputs(teacher_config, batch_size, seq_len)

    # Models.
    run = None
    if recipe is not None and quick_distill:
        from .pipeline import _load_run

        say(f"Loading the recipe's data and teacher ({reference})")
        run = _load_run(recipe, say, training=False)
        model = run.teacher
    elif isinstance(teacher, nn.Module):
        model = teacher
    else:
        say(f"Loading the teacher ({reference})")
        kwargs = dict(recipe.teacher.get("init_kwargs") or {}) if recipe is not None else {}
        model = _load_teacher(reference, teacher_config, task, "--teacher", **kwargs)
    model = model.to(device)
    candidates: list[tuple[str, str, int, float, nn.Module, list[int] | None]] = []
    for width in widths:
        for count in counts:
            student, kept = _build_candidate(model, count, width)
            name = f"{count} layers" if width == 1.0 else f"{count} layers, width {width:g}"
            candidates.append((name, "layers" if width == 1.0 else "width", count, width, student, kept))

    threads = threads or torch.get_num_threads()
    load = _load_average()
    if device == "cpu" and load is not None and load >= _cpus():  # this process itself adds up to about 1
        say(f"Note: this machine is busy (load average {load:.1f} on {_cpus()} CPUs): latencies will be noisy, and "
            f"{threads} torch threads may wait on each other (try --threads 1, or a quieter moment).")
    with _torch_threads(threads):
        machine = machine_description(device)
        models = [model, *(c[4] for c in candidates)]
        say(f"Timing {len(models)} models: {warmup} warm-up + {repeats} timed forward passes each, on a batch of "
            f"{batch_size} x {seq_len} ({threads} threads)")
        from .report import forward_times

        times = forward_times(models, [inputs] * len(models), repeats=repeats, warmup=warmup)
    sizes = []
    with tempfile.TemporaryDirectory(prefix="hf-distill-plan-") as folder:
        for i, m in enumerate(models):
            sizes.append(_saved_size(m, Path(folder) / str(i)))

    latencies = [_quartiles([t * 1000 for t in samples]) for samples in times]  # (median, IQR) in ms
    teacher_ms, teacher_parameters = latencies[0][0], model.num_parameters()
    rows = []
    described = [("teacher", "teacher", total, model, list(range(total))), *[c[:3] + c[4:] for c in candidates]]
    for (name, kind, count, m, kept), (median, iqr), size in zip(described, latencies, sizes, strict=True):
        parameters = m.num_parameters()
        rows.append(PlanRow(
            name=name, kind=kind, num_layers=count, layers=kept, hidden_size=int(m.config.hidden_size),
            init="teacher" if kind == "teacher" else "copied" if kind == "layers" else "random",
            parameters=parameters, size_bytes=size, latency_ms=median, latency_iqr_ms=iqr,
            speedup=teacher_ms / median, compression=teacher_parameters / parameters,
        ))

    plan = Plan(
        teacher=str(reference), architecture=architecture, task=task, teacher_layers=total,
        dtype=str(model.dtype).removeprefix("torch."), device=device, machine=machine, threads=threads,
        batch_size=batch_size, seq_len=seq_len, warmup=warmup, repeats=repeats, rows=rows,
        recipe=str(recipe.source) if recipe is not None and recipe.source else None,
    )
    if run is not None:
        _quick_distill(plan, run, recipe, [(rows[i + 1], c[4]) for i, c in enumerate(candidates)], quick_distill, say)
    plan.seconds = time.perf_counter() - started
    return plan


def _resolve_teacher(teacher: Any, recipe: Any, task: str | None, quick_distill: int,
                     eval_samples: int | None) -> tuple[Any, str, Any, str | None]:
    """(the recipe the plan runs or None, the teacher's reference, its config, the task), from configs only."""
    from .recipes import RecipeError, resolve_model_reference

    if recipe is not None:
        if not isinstance(teacher, (str, os.PathLike)) and teacher is not None:
            raise PlanError("`teacher`: with a recipe, give the teacher as a folder or Hub id (the recipe loads it), "
                            f"not a {type(teacher).__name__} object.")
        recipe = _plan_recipe(recipe, teacher, quick_distill, eval_samples)
        if "model" not in recipe.teacher:
            raise PlanError("`--teacher` is required: the recipe's teacher is built from `teacher.config` and trained "
                            "by `hf-distill train`; give --teacher with a trained model folder.")
        from .pipeline import _resolve_task

        reference = resolve_model_reference(recipe.teacher["model"], recipe)
        teacher_config = _load_config(reference, "--teacher")
        recipe_task = _resolve_task(recipe)
        if task not in (None, "auto", recipe_task):
            raise PlanError(f"`--task` is {task!r} but the recipe's task is {recipe_task!r}; drop --task (the recipe "
                            "decides) or use another recipe.")
        return recipe, reference, teacher_config, recipe_task
    if isinstance(teacher, (str, os.PathLike)):
        try:
            reference = resolve_model_reference(str(teacher))
        except RecipeError as err:
            raise PlanError(f"`--teacher`: {err.problems[0]}") from None
        return None, reference, _load_config(reference, "--teacher"), task
    if isinstance(teacher, nn.Module) and hasattr(teacher, "config"):
        return None, getattr(teacher, "name_or_path", "") or type(teacher).__name__, teacher.config, task
    raise PlanError(f"`teacher` must be a model folder, a Hub id or a PreTrainedModel, got {type(teacher).__name__}.")


def _plan_recipe(recipe: Any, teacher: Any, steps: int, eval_samples: int | None) -> Any:
    """The recipe a plan runs: ``teacher.model`` replaced by ``teacher`` when given; for a quick distillation,
    ``max_steps`` = ``steps``, no saving, logging, evaluation during training, pushing or reporting, and at most
    ``eval_samples`` evaluation examples (`_quick_distill` gives each run a temporary output directory)."""
    from .recipes import Recipe, RecipeError, apply_overrides, validate_recipe

    if not isinstance(recipe, Recipe):
        raise PlanError(f"`recipe` must be a Recipe (hf_distill.recipes.load_recipe), got {type(recipe).__name__}.")
    raw = copy.deepcopy(recipe.raw)
    if teacher is not None:
        # The given teacher is the one to measure and distil from: a recipe's random `config` teacher and its
        # `finetune` step describe another one.
        # With several teachers (a list) the given one replaces the primary (first) teacher.
        listed = raw.get("teacher") if isinstance(raw.get("teacher"), list) else None
        primary = (listed[0] if listed else raw.get("teacher")) or {}
        spec = {k: v for k, v in primary.items() if k not in ("config", "finetune")}
        if listed:
            raw["teacher"] = [{**spec, "model": str(teacher)}, *listed[1:]]
        else:
            raw["teacher"] = {**spec, "model": str(teacher)}
    if steps:
        raw.setdefault("training", {})
        raw["training"] = {**raw["training"], "max_steps": steps, "num_train_epochs": 1, "save_strategy": "no",
                           "eval_strategy": "no", "logging_strategy": "no", "report_to": "none",
                           "disable_tqdm": True, "dataloader_pin_memory": torch.cuda.is_available()}
        raw["hub"] = {**(raw.get("hub") or {}), "push": False}
        limit = (raw.get("data") or {}).get("max_eval_samples")
        if eval_samples is not None and (limit is None or limit > eval_samples):
            raw = apply_overrides(raw, [f"data.max_eval_samples={eval_samples}"])
        if not (raw.get("data") or {}).get("eval"):
            raise PlanError("`--quick-distill` measures fidelity on the recipe's evaluation data, but it has no "
                            "`data.eval`; add one with --set data.eval.path=... (datasets.load_dataset arguments).")
    try:
        return validate_recipe(raw, source=recipe.source)
    except RecipeError as err:
        raise PlanError(f"`--recipe`: {err}") from None


def _quick_distill(plan: Plan, run: Any, recipe: Any, candidates: list[tuple[PlanRow, nn.Module]], steps: int,
                   say: Callable[[str], None]) -> None:
    """Distil each layer-subset candidate for ``steps`` steps as ``hf-distill train`` would (its `DistillationTrainer`
    on the recipe's data, objectives and arguments), evaluating before and after; fills ``fidelity_before``,
    ``fidelity`` and ``eval_metrics`` of the rows. Randomly initialised candidates, and candidates the recipe's
    objectives refuse (e.g. an explicit layer map deeper than the candidate), are skipped with a note."""
    key, teacher_key, _ = FIDELITY_METRICS.get(run.task_name, (None, None, ""))
    plan.quick_distill_steps = steps
    plan.fidelity_metric = key.removeprefix("eval_") if key else None
    teacher_row = plan.rows[0]
    with tempfile.TemporaryDirectory(prefix="hf-distill-plan-") as folder:
        for row, student in candidates:
            if row.kind != "layers":
                row.note = "random init: no quick distillation (a few steps say nothing about it)"
                continue
            say(f"Quick distillation: {row.name}, {steps} steps")
            try:
                before, after = _distil(student, run, recipe, folder)
            except _Refused as err:
                row.note = f"no quick distillation: the recipe's objectives do not fit it ({err})"
                continue
            if key is not None:
                row.fidelity_before, row.fidelity = before.get(key), after.get(key)
                if teacher_key and teacher_row.fidelity is None:
                    teacher_row.fidelity_before = teacher_row.fidelity = after.get(teacher_key)
            row.eval_metrics = {k: float(v) for k, v in after.items() if isinstance(v, (int, float))
                                and k != "epoch" and not k.endswith(("_runtime", "_per_second"))}


class _Refused(Exception):
    """The trainer refused a candidate student with the recipe's objectives (before any work)."""


def _distil(student: nn.Module, run: Any, recipe: Any, output_dir: str) -> tuple[dict[str, float], dict[str, float]]:
    """``trainer.evaluate()`` before and after ``trainer.train()`` for ``student``, with the trainer `hf-distill
    train` builds for the recipe (a fresh config: same seed, data order and schedule for every candidate)."""
    from transformers import PrinterCallback, ProgressCallback

    from .recipes import build_config
    from .trainer import DistillationTrainer

    config = build_config(recipe, task=run.task_name, output_dir=output_dir)
    try:  # the trainer checks the objectives against this candidate before any work
        trainer = DistillationTrainer(
            model=student, teacher_model=None if config.teacher_scores_column else run.teacher, args=config,
            train_dataset=run.data["train"], eval_dataset=run.data["eval"], data_collator=run.collator,
            processing_class=run.tokenizer,
        )
    except ValueError as err:
        raise _Refused(str(err)) from err
    for callback in (PrinterCallback, ProgressCallback):  # plan prints its own progress and table
        trainer.remove_callback(callback)
    before = trainer.evaluate()
    trainer.train()
    return before, trainer.evaluate()


# ---- output -------------------------------------------------------------------------------------------------------


def format_plan(plan: Plan) -> str:
    """The plan as a text table, with the conditions of the measurement above it and how to read it below."""

    def fidelity(row: PlanRow) -> str:
        if row.fidelity is None:
            return "-"
        if row.fidelity_before is None or row.kind == "teacher":
            return f"{row.fidelity:.4f}"
        return f"{row.fidelity_before:.4f} -> {row.fidelity:.4f}"

    with_fidelity = plan.quick_distill_steps > 0
    header = ["candidate", "teacher layers kept", "init", "parameters", "size (MB)", "latency (ms)", "speed-up"]
    if with_fidelity:
        header.append(f"{plan.fidelity_metric} (step 0 -> {plan.quick_distill_steps})")
    table = []
    for row in plan.rows:
        kept = "all" if row.kind == "teacher" else "-" if row.layers is None else ",".join(map(str, row.layers))
        cells = [row.name, kept, row.init, f"{row.parameters:,}", f"{row.size_bytes / 1e6:.1f}",
                 f"{row.latency_ms:.1f} ± {row.latency_iqr_ms / 2:.1f}", f"{row.speedup:.2f}x"]
        if with_fidelity:
            cells.append(fidelity(row))
        table.append(cells)
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header))]
    left = {0, 1, 2}

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths,
                                                                                               strict=True)))

    lines = [
        f"teacher: {plan.teacher} ({plan.architecture}, {plan.teacher_layers} layers, {plan.dtype}); task: "
        f"{plan.task or 'none'}",
        f"machine: {plan.machine}",
        f"latency: one forward pass on a batch of {plan.batch_size} x {plan.seq_len} tokens, median ± half the "
        f"interquartile range of {plan.repeats} passes after {plan.warmup} warm-up, models timed in turns, "
        f"{plan.threads} threads",
        "",
        line(header),
        line(["-" * w for w in widths]),
        *map(line, table),
        "",
        "size: the safetensors file save_pretrained writes; speed-up: teacher latency / candidate latency (same run).",
    ]
    if with_fidelity:
        _, _, meaning = FIDELITY_METRICS.get(plan.task or "", (None, None, "the task's evaluation metric"))
        lines.append(f"{plan.fidelity_metric}: {meaning}, on the recipe's evaluation data before and after "
                     f"{plan.quick_distill_steps} distillation steps (higher is better).")
    notes = [f"{row.name}: {row.note}" for row in plan.rows if row.note]
    if any(row.init == "random" for row in plan.rows):
        notes.append("width < 1: a narrower student cannot copy the teacher's weights; it starts from random "
                     "weights and needs a full distillation (or pre-training) to be useful.")
    lines.extend(notes)
    lines.append(f"measured in {plan.seconds:.1f} s")
    return "\n".join(lines)
