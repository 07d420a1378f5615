"""A distillation under DeepSpeed ZeRO-3 (student and teacher sharded), for `tests/test_distributed_strategies.py`:

    torchrun --nproc_per_node 2 tests/distributed/zero3_teacher.py OUT       # CPU processes (gloo) or GPUs
    torchrun --nproc_per_node 1 tests/distributed/zero3_teacher.py OUT       # one GPU

The data, models and settings of `train_tiny.py` (per-process batch 2, accumulation 2), with ``--deepspeed`` given as
a ZeRO-3 config. Writes OUT/result.json (logged history, what each process holds of the teacher) and
OUT/student.safetensors (the gathered final weights), from process 0.

On CPU, transformers sees one process under DeepSpeed (``args.world_size == 1``: it counts CUDA devices), so every
process trains on the same batches; the reference is then one process without DeepSpeed at the same batch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import deepspeed
import torch.distributed as dist
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `tests.helpers`

from hf_distill import DistillationConfig, DistillationTrainer  # noqa: E402
from tests.helpers import lm_dataset, pad_collate, tiny_gpt2  # noqa: E402

OBJECTIVES = [{"name": "kl", "weight": 0.6, "temperature": 2.0}, {"name": "ce", "weight": 0.4}]
ZERO3 = {
    "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
    "bf16": {"enabled": "auto"},
    "zero_optimization": {"stage": 3, "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
                          "stage3_param_persistence_threshold": "auto"},
}


def main() -> None:
    out = Path(sys.argv[1])
    data = lm_dataset([9, 12, 5, 16, 7, 10, 11, 8, 13, 6, 15, 4, 9, 14, 7, 12], seed=0)
    args = DistillationConfig(
        output_dir=str(out / "run"), report_to="none", save_strategy="no", disable_tqdm=True, seed=0, data_seed=0,
        per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=3, learning_rate=0.5, optim="sgd",
        logging_steps=1, objectives=OBJECTIVES, dataloader_drop_last=True, deepspeed=ZERO3,
    )
    whole = sum(p.numel() for p in tiny_gpt2(layers=3, seed=1).parameters())
    trainer = DistillationTrainer(model=tiny_gpt2(layers=1, seed=2), teacher_model=tiny_gpt2(layers=3, seed=1),
                                  args=args, train_dataset=data, data_collator=pad_collate)
    teacher = trainer.teacher_model
    trainer.train()
    engine = trainer._teacher_engines[0]
    facts = {
        "teacher_class": type(teacher).__name__, "teacher_is_engine_module": teacher is engine.module,
        "teacher_held": sum(p.numel() for p in teacher.parameters()),  # 0: ZeRO-3 leaves an empty tensor
        "teacher_partitions": sum(p.ds_tensor.numel() for p in teacher.parameters()),
        "teacher_whole": whole, "teacher_numel": sum(p.ds_numel for p in teacher.parameters()),
        "teacher_training": teacher.training,
        "teacher_requires_grad": any(p.requires_grad for p in teacher.parameters()),
        "teacher_engine_optimizer": type(engine.optimizer).__name__,
    }
    model = trainer.model_wrapped.module
    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if dist.get_rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_file(weights, str(out / "student.safetensors"))
        history = [entry for entry in trainer.state.log_history if "loss" in entry]
        (out / "result.json").write_text(json.dumps({"history": history, "processes": dist.get_world_size(), **facts}))
    dist.barrier()


if __name__ == "__main__":
    main()
