"""An FSDP-sharded teacher on CPU processes (gloo), for `tests/test_distributed_strategies.py`:

    torchrun --nproc_per_node 2 tests/distributed/sharded_teacher.py OUT

1. For FSDP1 and FSDP2: `prepare_teacher` with accelerate's FSDP plugin (transformer-based auto wrap). Each process
   records what it holds of the teacher before and after a forward, how far the sharded teacher's logits on its own
   batch are from the whole teacher's, and whether the plugin was left as the student needs it -> OUT/fsdp{1,2}.json.
2. A tiny distillation (the data, models and settings of `train_tiny.py`) whose teacher is FSDP2-sharded through the
   same `prepare_teacher` path -> OUT/train/{result.json, student.safetensors}. Accelerate only selects FSDP for
   GPU-like devices (CPU processes get DDP), so the student is DDP-wrapped here and the trainer's accelerator is shown
   to `prepare_teacher` as an FSDP one; `train(..., shard_teacher=False)` in one process is the reference.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `tests.helpers`

import hf_distill.trainer as trainer_module  # noqa: E402
from hf_distill import DistillationConfig, DistillationTrainer  # noqa: E402
from hf_distill.teacher import prepare_teacher  # noqa: E402
from tests.helpers import lm_dataset, pad_collate, tiny_gpt2  # noqa: E402

OBJECTIVES = [{"name": "kl", "weight": 0.6, "temperature": 2.0}, {"name": "ce", "weight": 0.4}]


def _held(model: torch.nn.Module) -> int:
    """How many of the model's parameter elements this process holds (its shards under FSDP)."""
    return sum(getattr(p, "_local_tensor", p).numel() for p in model.parameters())


def _as_fsdp(accelerator: object, plugin: FullyShardedDataParallelPlugin) -> types.SimpleNamespace:
    return types.SimpleNamespace(distributed_type=DistributedType.FSDP, device=torch.device("cpu"),
                                 state=types.SimpleNamespace(fsdp_plugin=plugin))


def check_preparation(version: int) -> dict:
    plugin = FullyShardedDataParallelPlugin(fsdp_version=version, auto_wrap_policy="transformer_based_wrap")
    policy_before = (plugin.auto_wrap_policy, plugin.transformer_cls_names_to_wrap)
    args = types.SimpleNamespace(per_device_train_batch_size=2, teacher_dtype="auto", bf16=False, fp16=False)
    teacher, owner = prepare_teacher(tiny_gpt2(layers=3, seed=1).train(), _as_fsdp(None, plugin), args)
    whole = tiny_gpt2(layers=3, seed=1).eval()
    rank = dist.get_rank()
    batch = torch.randint(1, 64, (2, 7 + rank), generator=torch.Generator().manual_seed(rank))  # differs per process
    held_before = _held(teacher)
    with torch.no_grad():
        difference = (teacher(input_ids=batch).logits - whole(input_ids=batch).logits).abs().max().item()
    return {
        "rank": rank, "class": type(teacher).__name__, "owner": owner is not None, "whole": _held(whole),
        "held_before": held_before, "held_after": _held(teacher), "max_abs_difference": difference,
        "training": teacher.training, "requires_grad": any(p.requires_grad for p in teacher.parameters()),
        "plugin_unchanged": (plugin.auto_wrap_policy, plugin.transformer_cls_names_to_wrap) == policy_before,
    }


def train(out: Path, per_device: int, accumulation: int, shard_teacher: bool) -> None:
    """Train like `train_tiny.py` (live teacher); with `shard_teacher`, the teacher is FSDP2-sharded."""
    facts: dict = {}
    if shard_teacher:
        def sharding(teacher: torch.nn.Module, accelerator: object, args: object) -> tuple:
            plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap")
            prepared = prepare_teacher(teacher, _as_fsdp(accelerator, plugin), args)
            facts.update({"teacher_class": type(prepared[0]).__name__, "teacher_held": _held(prepared[0])})
            return prepared

        trainer_module.prepare_teacher = sharding
    data = lm_dataset([9, 12, 5, 16, 7, 10, 11, 8, 13, 6, 15, 4, 9, 14, 7, 12], seed=0)
    args = DistillationConfig(
        output_dir=str(out / "run"), report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True,
        seed=0, data_seed=0, per_device_train_batch_size=per_device, gradient_accumulation_steps=accumulation,
        max_steps=3, learning_rate=0.5, optim="sgd", logging_steps=1, objectives=OBJECTIVES,
        dataloader_drop_last=True,
    )
    trainer = DistillationTrainer(model=tiny_gpt2(layers=1, seed=2), teacher_model=tiny_gpt2(layers=3, seed=1),
                                  args=args, train_dataset=data, data_collator=pad_collate)
    trainer.train()
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    facts["teacher_in_optimizer"] = any(id(p) in optimized for p in trainer.teacher_model.parameters())
    facts["teacher_training"] = trainer.teacher_model.training
    if trainer.is_world_process_zero():
        out.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}  # tied: copies
        save_file(weights, str(out / "student.safetensors"))
        history = [entry for entry in trainer.state.log_history if "loss" in entry]
        info = {"history": history, "processes_seen": trainer.args.world_size, **facts}
        (out / "result.json").write_text(json.dumps(info))


def main() -> None:
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    for version in (1, 2):
        facts = check_preparation(version)
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, facts)
        if dist.get_rank() == 0:
            out.mkdir(parents=True, exist_ok=True)
            (out / f"fsdp{version}.json").write_text(json.dumps(gathered))
    train(out / "train", per_device=2, accumulation=2, shard_teacher=True)
    dist.barrier()


if __name__ == "__main__":
    main()
