"""Does distillation help on real images? The `vision-vit` recipe's setting, over seeds (issue #6).

On the bundled digits (scikit-learn's 1,797 real 8×8 handwritten digits, upsampled to 16×16; 1,437 train / 360 test,
stratified), the recipe's ViT teacher is trained once with the recipe's `teacher.finetune` settings (seed 0,
cross-entropy), then for every seed the recipe's smaller random-init ViT student is trained with the recipe's
`training` settings (same steps, batch, learning rate, warmup, weight decay) under four objectives:

- ``ce``: cross-entropy on the labels only (no teacher);
- ``kd``: ``kl`` (T = 4) 0.5 + ``ce`` 1.0 — the recipe's objectives;
- ``kd+hidden_mse``: the same plus ``hidden_mse`` 1.0 (uniform layer map, learned projection 32 → 64);
- ``dkd``: ``dkd`` (alpha 1, beta 8, T = 4) + ``ce``.

The seed sets the student's initial weights and the data order. Accuracy is on the 360 test images. It prints the
command, the machine, one row per run and the mean ± std (sample std, n = number of seeds) per variant. Runs are
deterministic on CPU (the same seed gives the same accuracy in separate invocations), so a table may be put
together from runs of single variants (``--variants``). ``--variants kd_ce0.5 kd_ce0.5+hidden_mse kd_ce0.5_t2
kd_ce0.5_t1`` runs the other KD settings that docs/vision.md reports.

    python benchmarks/vision_seeds.py                      # the table in docs/vision.md
    python benchmarks/vision_seeds.py --seeds 0 --steps 20 # a smoke run
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import AutoConfig, AutoModelForImageClassification
from transformers.trainer_callback import PrinterCallback

from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill.data.images import digits_dataset

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "vision-vit.yaml"

KD = [{"name": "kl", "weight": 0.5, "temperature": 4.0}, {"name": "ce", "weight": 1.0}]  # the recipe's objectives
KD_HALF_CE = [{"name": "kl", "weight": 0.5, "temperature": 4.0}, {"name": "ce", "weight": 0.5}]
VARIANTS: dict[str, list[dict[str, Any]]] = {
    "ce": [{"name": "ce"}],
    "kd": KD,
    "kd+hidden_mse": [*KD, {"name": "hidden_mse", "weight": 1.0}],
    "dkd": [{"name": "dkd", "weight": 1.0, "alpha": 1.0, "beta": 8.0, "temperature": 4.0},
            {"name": "ce", "weight": 1.0}],
}
DEFAULT_VARIANTS = list(VARIANTS)
# Other KD settings tried (run with --variants ...; not in the default table): CE weight 0.5, temperatures 2 and 1.
VARIANTS.update({
    "kd_ce0.5": KD_HALF_CE,
    "kd_ce0.5+hidden_mse": [*KD_HALF_CE, {"name": "hidden_mse", "weight": 1.0}],
    "kd_ce0.5_t2": [{"name": "kl", "weight": 0.5, "temperature": 2.0}, {"name": "ce", "weight": 0.5}],
    "kd_ce0.5_t1": [{"name": "kl", "weight": 0.5, "temperature": 1.0}, {"name": "ce", "weight": 0.5}],
})


def machine_line() -> str:
    versions = ", ".join(f"{name} {importlib.metadata.version(name)}" for name in ("transformers", "datasets"))
    cpu = platform.processor() or platform.machine()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"machine: {platform.platform()}, {cpu}, {os.cpu_count()} CPUs (load average {load}), python "
            f"{platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), {versions}")


def model_from(spec: dict[str, Any], labels: int, seed: int) -> torch.nn.Module:
    fields = dict(spec)
    config = AutoConfig.for_model(fields.pop("model_type"), num_labels=labels, **fields)
    torch.manual_seed(seed)
    return AutoModelForImageClassification.from_config(config)


def run(student: torch.nn.Module, teacher: torch.nn.Module | None, objectives: list[dict[str, Any]], train: Any,
        test: Any, work: str, seed: int, steps: int, settings: dict[str, Any]) -> float:
    args = DistillationConfig(
        output_dir=work, max_steps=steps, per_device_train_batch_size=settings["per_device_train_batch_size"],
        per_device_eval_batch_size=256, learning_rate=settings["learning_rate"],
        warmup_steps=settings["warmup_steps"], weight_decay=settings["weight_decay"], seed=seed, data_seed=seed,
        report_to="none", save_strategy="no", disable_tqdm=True, logging_strategy="no", use_cpu=True,
        objectives=objectives)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=train,
                                  eval_dataset=test)
    trainer.remove_callback(PrinterCallback)  # one line per run, printed by main()
    trainer.train()
    return trainer.evaluate()["eval_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=None, help="student steps (default: the recipe's)")
    parser.add_argument("--teacher-steps", type=int, default=None, help="teacher steps (default: the recipe's)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a busy small CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(machine_line())

    recipe = yaml.safe_load(RECIPE.read_text())
    training, finetune = recipe["training"], recipe["teacher"]["finetune"]
    steps = args.steps or training["max_steps"]
    train, test = digits_dataset("train"), digits_dataset("test")
    labels = train.features["label"].num_classes
    shape = tuple(train[0]["pixel_values"].shape)
    print(f"data: digits, {len(train)} train / {len(test)} test images, pixel_values {shape}")

    with tempfile.TemporaryDirectory() as work:
        t0 = time.perf_counter()
        teacher = model_from(recipe["teacher"]["config"], labels, seed=0)
        teacher_steps = args.teacher_steps or finetune["max_steps"]
        teacher_acc = run(teacher, None, [{"name": "ce"}], train, test, work, 0, teacher_steps, finetune)
        teacher.eval()
        n_teacher = sum(p.numel() for p in teacher.parameters())
        print(f"teacher: {recipe['teacher']['config']}, {n_teacher:,} parameters, {teacher_steps} steps (seed 0): "
              f"test accuracy {teacher_acc:.4f} ({time.perf_counter() - t0:.0f} s)")
        n_student = sum(p.numel() for p in model_from(recipe["student"]["config"], labels, 0).parameters())
        print(f"student: {recipe['student']['config']}, {n_student:,} parameters, random init per seed; "
              f"{steps} steps, batch {training['per_device_train_batch_size']}, lr {training['learning_rate']}, "
              f"warmup {training['warmup_steps']}, AdamW, weight decay {training['weight_decay']}, linear decay")
        results: dict[str, list[float]] = {name: [] for name in args.variants}
        for seed in args.seeds:
            for name in args.variants:
                t0 = time.perf_counter()
                student = model_from(recipe["student"]["config"], labels, seed)
                acc = run(student, None if name == "ce" else teacher, VARIANTS[name], train, test, work, seed, steps,
                          training)
                results[name].append(acc)
                print(f"  seed {seed}  {name:<14} accuracy {acc:.4f}  ({time.perf_counter() - t0:.0f} s)", flush=True)

    print(f"\n| variant | objectives | test accuracy, mean ± std over seeds {args.seeds} | runs |")
    print("|---|---|---|---|")
    for name, accs in results.items():
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        objectives = " + ".join(o["name"] + (f" {o['weight']}" if "weight" in o else "")
                                + (f" (T = {o['temperature']})" if "temperature" in o else "") for o in VARIANTS[name])
        print(f"| {name} | {objectives} | {statistics.mean(accs):.4f} ± {std:.4f} | "
              f"{', '.join(f'{a:.4f}' for a in accs)} |")
    print(f"| teacher | ce | {teacher_acc:.4f} | 1 |")
    print(f"\nwall time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
