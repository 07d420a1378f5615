"""A tiny distillation run for the multi-process tests: launched with `torchrun --nproc_per_node N` (or plain
`python` for one process). Writes the final student weights and the logged history to OUT (process 0 only).

    torchrun --nproc_per_node 2 tests/distributed/train_tiny.py OUT PER_DEVICE_BATCH GRAD_ACCUM CACHE_DIR

It trains twice in the same processes (one launch, half the start-up cost): with the live teacher into OUT/live,
then from the teacher cache in CACHE_DIR (built beforehand by the test) into OUT/cache.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `tests.helpers`

from hf_distill import DistillationConfig, DistillationTrainer  # noqa: E402
from tests.helpers import lm_dataset, pad_collate, tiny_gpt2  # noqa: E402

OBJECTIVES = [{"name": "kl", "weight": 0.6, "temperature": 2.0}, {"name": "ce", "weight": 0.4}]


def train(out: Path, per_device: int, accumulation: int, cache: str | None) -> None:
    # Uneven lengths: padding differs between micro-batches, so only a correct token count makes 2 processes equal 1.
    data = lm_dataset([9, 12, 5, 16, 7, 10, 11, 8, 13, 6, 15, 4, 9, 14, 7, 12], seed=0)
    args = DistillationConfig(
        output_dir=str(out / "run"), report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True,
        seed=0, data_seed=0, per_device_train_batch_size=per_device, gradient_accumulation_steps=accumulation,
        max_steps=3, learning_rate=0.5, optim="sgd", logging_steps=1, objectives=OBJECTIVES,
        teacher_cache=cache, dataloader_drop_last=True,
    )
    teacher = None if cache else tiny_gpt2(layers=3, seed=1)
    trainer = DistillationTrainer(model=tiny_gpt2(layers=1, seed=2), teacher_model=teacher, args=args,
                                  train_dataset=data, data_collator=pad_collate)
    trainer.train()
    if trainer.is_world_process_zero():
        out.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}  # tied: copies
        save_file(weights, str(out / "student.safetensors"))
        history = [entry for entry in trainer.state.log_history if "loss" in entry]
        info = {"world_size": int(os.environ.get("WORLD_SIZE", "1")), "history": history,
                "processes_seen": trainer.args.world_size}
        (out / "result.json").write_text(json.dumps(info))
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def main() -> None:
    out, per_device, accumulation, cache = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    train(out / "live", per_device, accumulation, None)
    train(out / "cache", per_device, accumulation, cache)


if __name__ == "__main__":
    main()
