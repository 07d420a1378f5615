"""A bfloat16 teacher on a GPU: a check for a session with one (not run in CI, which has no GPU).

    python tests/distributed/gpu_precision.py OUT      # exit 1 on failure; OUT/precision.json holds the figures

Models of realistic size, randomly initialised (no weights can be downloaded there): a GPT-2-base-sized teacher
(width 768, 12 layers, the 30,522-token vocabulary of all-MiniLM-L6-v2's tokenizer) saved to a folder and given to the
trainer as a path, and a 6-layer student of the same width; 20 steps of 8 random 256-token blocks, kl (T = 2) + ce.
Two runs on the same data and seed:

- ``float32``: teacher and student in float32, TF32 off (the reference);
- ``bf16``: ``teacher_dtype="bfloat16"`` (the teacher is loaded in bfloat16) and ``bf16=True`` (the student's
  forward under autocast, its weights float32).

Checked: in the bf16 run the teacher's parameters are bfloat16 on the GPU, in eval mode, out of the optimizer and
bit-for-bit unchanged by training, and the student's are float32; every logged loss is finite and within 5 % (or
1e-3) of the float32 run's at the same step (the losses are computed in float32 from bfloat16 logits). Printed, not
checked: the peak GPU memory and time per step of both runs.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from hf_distill import DistillationConfig, DistillationTrainer  # noqa: E402

VOCAB, WIDTH, LENGTH, BATCH, STEPS = 30522, 768, 256, 8, 20


def gpt2(layers: int, seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=LENGTH, n_embd=WIDTH, n_layer=layers, n_head=12,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))


def checksum(model: torch.nn.Module) -> float:
    return float(sum(p.detach().double().abs().sum() for p in model.parameters()))


class StepClock(TrainerCallback):
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        torch.cuda.synchronize()
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        torch.cuda.synchronize()
        self.seconds.append(time.perf_counter() - self.started)


def run(out: Path, teacher_path: str, data: Dataset, precision: str) -> dict:
    bf16 = precision == "bf16"
    args = DistillationConfig(
        output_dir=str(out / f"run_{precision}"), report_to="none", save_strategy="no", disable_tqdm=True, seed=0,
        data_seed=0, per_device_train_batch_size=BATCH, max_steps=STEPS, learning_rate=1e-4, logging_steps=1,
        objectives=[{"name": "kl", "weight": 0.5, "temperature": 2.0}, {"name": "ce", "weight": 0.5}],
        bf16=bf16, teacher_dtype="bfloat16" if bf16 else "float32",
    )
    clock = StepClock()
    trainer = DistillationTrainer(model=gpt2(6, seed=1), teacher_model=teacher_path, args=args, train_dataset=data,
                                  callbacks=[clock])
    teacher = trainer.teacher_model
    before = checksum(teacher)
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    return {
        "teacher_dtypes": sorted({str(p.dtype) for p in teacher.parameters()}),
        "teacher_devices": sorted({str(p.device) for p in teacher.parameters()}),
        "student_dtypes": sorted({str(p.dtype) for p in trainer.model.parameters()}),
        "teacher_unchanged": checksum(teacher) == before,
        "teacher_training": teacher.training,
        "teacher_in_optimizer": any(id(p) in optimized for p in teacher.parameters()),
        "history": [e for e in trainer.state.log_history if "loss" in e],
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        "median_step_s": sorted(clock.seconds[2:])[len(clock.seconds[2:]) // 2],
    }


def problems_of(results: dict) -> list[str]:
    problems = []
    half, full = results["bf16"], results["float32"]
    if half["teacher_dtypes"] != ["torch.bfloat16"] or full["teacher_dtypes"] != ["torch.float32"]:
        problems.append(f"teacher dtypes: bf16 run {half['teacher_dtypes']}, float32 run {full['teacher_dtypes']}")
    for name, r in results.items():
        if not all(d.startswith("cuda") for d in r["teacher_devices"]):
            problems.append(f"{name}: teacher on {r['teacher_devices']}")
        if r["student_dtypes"] != ["torch.float32"]:
            problems.append(f"{name}: student weights {r['student_dtypes']} (want float32 master weights)")
        if not r["teacher_unchanged"] or r["teacher_training"] or r["teacher_in_optimizer"]:
            problems.append(f"{name}: teacher changed, in train mode or in the optimizer")
    for a, b in zip(half["history"], full["history"], strict=True):
        for key in ("loss", "loss/kl", "loss/ce"):
            if not math.isfinite(a[key]) or abs(a[key] - b[key]) > 0.05 * abs(b[key]) + 1e-3:
                problems.append(f"step {a['step']} {key}: bf16 {a[key]:.5f} vs float32 {b[key]:.5f}")
    return problems


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ids = torch.randint(1, VOCAB, (BATCH * STEPS, LENGTH), generator=torch.Generator().manual_seed(0)).tolist()
    data = Dataset.from_dict({"input_ids": ids, "labels": ids})
    with tempfile.TemporaryDirectory() as folder:
        gpt2(12, seed=0).save_pretrained(folder)
        results = {precision: run(out, folder, data, precision) for precision in ("float32", "bf16")}
    (out / "precision.json").write_text(json.dumps(results, indent=1))
    for name, r in results.items():
        first, last = r["history"][0], r["history"][-1]
        print(f"{name}: loss {first['loss']:.4f} -> {last['loss']:.4f}, peak {r['peak_gib']:.2f} GiB, "
              f"{r['median_step_s'] * 1000:.0f} ms/step, teacher {r['teacher_dtypes']}", flush=True)
    print(f"bf16 / float32: peak memory {results['bf16']['peak_gib'] / results['float32']['peak_gib']:.2f}x, "
          f"time per step {results['bf16']['median_step_s'] / results['float32']['median_step_s']:.2f}x")
    problems = problems_of(results)
    print("\n".join(problems) if problems else "bf16 teacher: all checks passed", flush=True)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
