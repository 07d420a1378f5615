"""The teacher under each strategy on GPUs, through `Trainer`'s own arguments (`fsdp` / `deepspeed`): a check for a
session with a GPU (not run in CI: accelerate selects FSDP only on GPU-like devices, and on CPU transformers counts
one process under DeepSpeed).

    python tests/distributed/gpu_strategies.py OUT      # every strategy below, then compared; exit 1 on failure

It launches `torchrun --nproc_per_node N` (N = the visible GPUs) once per strategy on the data, models and settings of
`train_tiny.py` (per-process batch 2, accumulation 2, 3 steps, float32, TF32 off), each writing OUT/<strategy>.json:
the logged history, where the teacher is and how it is held, and the final student weights' checksum. Every strategy
must give the losses of `ddp` (the reference) to 1e-4 relative (reduction order differs between strategies), with
the teacher on the GPU, in eval mode, out of the optimizer, and FSDP-wrapped / ZeRO-3 partitioned where it should be.
One strategy alone: `torchrun --nproc_per_node N tests/distributed/gpu_strategies.py OUT STRATEGY`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `tests.helpers`

STRATEGIES = {
    "ddp": {},
    "fsdp2": {"fsdp": True, "fsdp_config": {"version": 2, "reshard_after_forward": True}},
    "fsdp1": {"fsdp": True, "fsdp_config": {"version": 1, "reshard_after_forward": "full_shard"}},
    "zero2": {"deepspeed": {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                            "gradient_clipping": "auto", "zero_optimization": {"stage": 2}}},
    "zero3": {"deepspeed": {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                            "gradient_clipping": "auto", "zero_optimization": {
                                "stage": 3, "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
                                "stage3_param_persistence_threshold": "auto",
                                "stage3_gather_16bit_weights_on_model_save": True}}},
}


def run_one(out: Path, strategy: str) -> None:
    from hf_distill import DistillationConfig, DistillationTrainer
    from tests.helpers import lm_dataset, pad_collate, tiny_gpt2

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    data = lm_dataset([9, 12, 5, 16, 7, 10, 11, 8, 13, 6, 15, 4, 9, 14, 7, 12], seed=0)
    args = DistillationConfig(
        output_dir=str(out / f"run_{strategy}"), report_to="none", save_strategy="no", disable_tqdm=True, seed=0,
        data_seed=0, per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=3, learning_rate=0.5,
        optim="sgd", logging_steps=1, dataloader_drop_last=True,
        objectives=[{"name": "kl", "weight": 0.6, "temperature": 2.0}, {"name": "ce", "weight": 0.4}],
        **STRATEGIES[strategy],
    )
    trainer = DistillationTrainer(model=tiny_gpt2(layers=1, seed=2), teacher_model=tiny_gpt2(layers=3, seed=1),
                                  args=args, train_dataset=data, data_collator=pad_collate)
    trainer.train()
    teacher = trainer.teacher_model
    params = list(teacher.parameters())
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped)  # gathered under FSDP / ZeRO-3
    facts = {
        "strategy": strategy,
        "processes": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
        "distributed_type": str(trainer.accelerator.distributed_type), "teacher_class": type(teacher).__name__,
        "teacher_devices": sorted({str(getattr(p, "_local_tensor", p).device) for p in params}),
        "teacher_held": sum(getattr(p, "_local_tensor", p).numel() for p in params),
        "teacher_partitioned": sum(getattr(p, "ds_tensor", p).numel() for p in params),
        "teacher_whole": sum(p.numel() for p in tiny_gpt2(layers=3, seed=1).parameters()),
        "teacher_training": teacher.training, "teacher_requires_grad": any(p.requires_grad for p in params),
        "teacher_in_optimizer": any(id(p) in optimized for p in params),
        "history": [e for e in trainer.state.log_history if "loss" in e],
    }
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:  # the gathered state is there
        facts["student_checksum"] = float(sum(v.double().abs().sum() for v in state.values()))
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{strategy}.json").write_text(json.dumps(facts))


def check(out: Path) -> list[str]:
    results = {s: json.loads((out / f"{s}.json").read_text()) for s in STRATEGIES if (out / f"{s}.json").exists()}
    problems = [f"{s}: no result (see its log)" for s in STRATEGIES if s not in results]
    reference = results.get("ddp")
    for strategy, r in results.items():
        whole = r["teacher_whole"]
        if r["teacher_devices"] != [d for d in r["teacher_devices"] if d.startswith("cuda")]:
            problems.append(f"{strategy}: teacher parameters on {r['teacher_devices']}")
        if r["teacher_training"] or r["teacher_requires_grad"] or r["teacher_in_optimizer"]:
            problems.append(f"{strategy}: teacher trainable or in the optimizer: {r}")
        if strategy.startswith("fsdp") and r["processes"] > 1 and not r["teacher_held"] < whole:
            problems.append(f"{strategy}: teacher not sharded ({r['teacher_held']} of {whole} elements held)")
        wrapped = "FSDP" in r["teacher_class"] or "FullySharded" in r["teacher_class"]
        if strategy.startswith("fsdp") and not (wrapped and "FSDP" in r["distributed_type"]):
            problems.append(f"{strategy}: not an FSDP run/teacher ({r['distributed_type']}, {r['teacher_class']})")
        if strategy == "zero3" and r["teacher_partitioned"] * r["processes"] < whole:
            problems.append(f"{strategy}: teacher partitions hold {r['teacher_partitioned']} of {whole} elements")
        if reference is not None and strategy != "ddp":
            for a, b in zip(r["history"], reference["history"], strict=True):
                for key in ("loss", "loss/kl", "loss/ce"):
                    if abs(a[key] - b[key]) > 1e-4 * abs(b[key]) + 1e-6:
                        problems.append(f"{strategy}: step {a['step']} {key} {a[key]} != ddp {b[key]}")
            if abs(r["student_checksum"] - reference["student_checksum"]) > 1e-4 * reference["student_checksum"]:
                problems.append(f"{strategy}: final weights differ from ddp ({r['student_checksum']} vs "
                                f"{reference['student_checksum']})")
    return problems


def main() -> None:
    out = Path(sys.argv[1])
    if len(sys.argv) > 2:
        run_one(out, sys.argv[2])
        return
    processes = max(torch.cuda.device_count(), 1)
    for strategy in STRATEGIES:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   "--master_port", str(port), __file__, str(out), strategy]
        out.mkdir(parents=True, exist_ok=True)
        with open(out / f"{strategy}.log", "w") as log:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ).returncode
        print(f"{strategy}: exit {code}", flush=True)
    problems = check(out)
    print("\n".join(problems) if problems else "all strategies agree with ddp", flush=True)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
