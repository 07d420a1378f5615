"""The host-side cost of a distillation step, measured where the arithmetic is negligible: GPT-2-style models of
width 16 (teacher 2 layers, student 1) over a 64-token vocabulary, 8 sequences of 32 tokens per step, `kl` + `ce`,
one CPU thread. What is left per step is Python, operator dispatch and the reading of a teacher cache — the part of
a step that a fast GPU does not speed up (`overhead.py --device cuda` on an H100 found the live-teacher and cached
steps 8 and 23 ms slower than plain training at GPT-2-base size: docs/benchmarks.md).

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/host_overhead.py [--steps 60] [--rounds 2]

Three variants on the same data, in rounds (plain, online, cached, plain, ...): (a) plain `transformers.Trainer`
(the model's own cross-entropy), (b) `DistillationTrainer` with the live teacher, (c) `DistillationTrainer` reading
a top-8 teacher cache. Printed per variant: the median milliseconds per optimizer step (TrainerCallback,
on_step_begin to on_step_end, first 5 steps dropped, under the profiler that counts operators) and the ATen
operators dispatched per step (nested ones included: each is host work, most are a kernel launch on a GPU), with
the operators the distillation variants add most over plain training.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
from transformers import Trainer, TrainerCallback, TrainingArguments

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for `tests.helpers`

from hf_distill import DistillationTrainer  # noqa: E402
from hf_distill.cache import cache_teacher  # noqa: E402
from tests.helpers import config, lm_dataset, pad_collate, tiny_gpt2  # noqa: E402

OBJECTIVES = [{"name": "kl", "weight": 0.5}, {"name": "ce", "weight": 0.5}]
BATCH, LENGTH, WIDTH, TOP_K = 8, 32, 16, 8


class StepClock(TrainerCallback):
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self.started)


def trainer_for(variant: str, folder: Path, data, cache: Path, steps: int, clock: StepClock) -> Trainer:
    student = tiny_gpt2(layers=1, hidden=WIDTH, seed=2)
    common = dict(per_device_train_batch_size=BATCH, max_steps=steps, logging_steps=10 * steps)
    if variant == "plain":
        args = TrainingArguments(output_dir=str(folder), use_cpu=True, report_to="none", save_strategy="no",
                                 disable_tqdm=True, seed=0, **common)
        return Trainer(model=student, args=args, train_dataset=data, data_collator=pad_collate, callbacks=[clock])
    teacher = tiny_gpt2(layers=2, hidden=WIDTH, seed=1) if variant == "online" else None
    extra = {"teacher_cache": str(cache)} if variant == "cached" else {}
    args = config(folder, objectives=OBJECTIVES, preflight=False, **common, **extra)
    return DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data,
                               data_collator=pad_collate, callbacks=[clock])


def run(variant: str, folder: Path, data, cache: Path, steps: int) -> tuple[float, dict[str, float]]:
    clock = StepClock()
    trainer = trainer_for(variant, folder, data, cache, steps, clock)
    with torch.autograd.profiler.profile() as profile:
        trainer.train()
    counts = {e.key: e.count / steps for e in profile.key_averages() if e.key.startswith("aten::")}
    return statistics.median(clock.seconds[5:]) * 1000, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    options = parser.parse_args()
    torch.set_num_threads(1)
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(f"machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"(1 thread), transformers {transformers.__version__}; load average {os.getloadavg()[0]:.2f}")
    data = lm_dataset([LENGTH] * BATCH * options.steps, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cache = work / "cache"
        cache_teacher(tiny_gpt2(layers=2, hidden=WIDTH, seed=1), data, cache, data_collator=pad_collate, top_k=TOP_K,
                      args=config(work / "build", per_device_train_batch_size=BATCH))
        results: dict[str, list[tuple[float, dict[str, float]]]] = {}
        for _ in range(options.rounds):
            for variant in ("plain", "online", "cached"):
                results.setdefault(variant, []).append(run(variant, work / variant, data, cache, options.steps))
    print("\n| variant | ms/step (profiled), per round | ATen operators per step |\n|---|---|---:|")
    names = {"plain": "(a) plain Trainer", "online": "(b) hf_distill, live teacher",
             "cached": "(c) hf_distill, teacher cache (top-8)"}
    for variant, rounds in results.items():
        times = ", ".join(f"{t:.2f}" for t, _ in rounds)
        print(f"| {names[variant]} | {times} | {sum(rounds[0][1].values()):.0f} |")
    plain_ms = statistics.median(t for t, _ in results["plain"])
    plain_ops = results["plain"][0][1]
    for variant in ("online", "cached"):
        ms = statistics.median(t for t, _ in results[variant])
        counts = results[variant][0][1]
        extra = sorted(((counts.get(k, 0) - plain_ops.get(k, 0), k) for k in set(counts) | set(plain_ops)),
                       reverse=True)[:12]
        print(f"{variant} / plain: {ms / plain_ms:.2f}x time, {sum(counts.values()) / sum(plain_ops.values()):.2f}x "
              "operators; most added per step: " + ", ".join(f"{k.removeprefix('aten::')} +{d:.0f}" for d, k in extra))


if __name__ == "__main__":
    main()
