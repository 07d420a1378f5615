"""Bundled text data: an English corpus built from the docstrings of the Python standard library.

The corpus (``stdlib_docs.jsonl.gz``) holds paragraph-level passages with the fields ``text``, ``module``
(top-level standard-library module), ``qualname`` (dotted name of the documented object) and ``kind``
(``"module"``, ``"class"``, ``"function"`` or ``"method"``). It is rebuilt with
``python -m hf_distill.data.build_corpus``; see ``README.md`` in this folder for provenance and licence.

``datasets`` is imported lazily inside the functions so that importing this package stays cheap.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

__all__ = [
    "CORPUS_PATH",
    "DEFAULT_CLASSIFICATION_MODULES",
    "classification_dataset",
    "corpus_pairs",
    "is_test_qualname",
    "load_corpus",
    "RANKING_PATH",
    "ranking_dataset",
]

CORPUS_PATH: Path = Path(__file__).resolve().with_name("stdlib_docs.jsonl.gz")

# Four sizeable standard-library areas with clearly different vocabulary (event loops and coroutines,
# e-mail messages and MIME, log handlers and records, XML documents and parsers).
DEFAULT_CLASSIFICATION_MODULES: tuple[str, ...] = ("asyncio", "email", "logging", "xml")

RANKING_PATH: Path = Path(__file__).resolve().with_name("stdlib_ranking.jsonl.gz")

_SPLITS = ("train", "test")


def _unit_hash(key: str, seed: int) -> float:
    """Map ``key`` (and ``seed``) to a number in [0, 1) that does not depend on Python's hash seed."""
    digest = hashlib.md5(f"{seed}\x00{key}".encode()).hexdigest()
    return int(digest[:15], 16) / 16**15


def _check_fraction(test_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be strictly between 0 and 1, got {test_fraction!r}")


def is_test_qualname(qualname: str, test_fraction: float = 0.1, seed: int = 0) -> bool:
    """Whether the passages of ``qualname`` belong to the test split.

    The decision only depends on ``qualname``, ``test_fraction`` and ``seed``, never on row order, and all
    passages cut from one docstring share a qualname, so they always land in the same split.
    """
    _check_fraction(test_fraction)
    return _unit_hash(qualname, seed) < test_fraction


def _column(dataset: Dataset, name: str) -> list:
    """One column as a Python list (through Arrow, much faster than iterating ``dataset[name]``)."""
    return dataset.with_format("arrow")[name].to_pylist()


def _features() -> object:
    from datasets import Features, Value

    return Features({name: Value("string") for name in ("text", "module", "qualname", "kind")})


def load_corpus(split: str | None = None, test_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """Load the bundled standard-library documentation corpus.

    Args:
        split: ``None`` for every passage, or ``"train"`` / ``"test"`` for a deterministic split that
            assigns each ``qualname`` to one side by a stable hash (see :func:`is_test_qualname`).
        test_fraction: expected share of qualnames in the test split.
        seed: changes which qualnames fall into the test split.

    Returns:
        A ``datasets.Dataset`` with the string columns ``text``, ``module``, ``qualname`` and ``kind``.
        Works offline: the file ships with the package and the ``json`` builder needs no download.
    """
    if split is not None and split not in _SPLITS:
        raise ValueError(f"split must be None, 'train' or 'test', got {split!r}")
    _check_fraction(test_fraction)
    if not CORPUS_PATH.is_file():
        raise FileNotFoundError(f"{CORPUS_PATH} is missing; rebuild it with `python -m hf_distill.data.build_corpus`")

    stat = CORPUS_PATH.stat()
    dataset = _load_json(str(CORPUS_PATH), stat.st_mtime_ns, stat.st_size)
    if split is None:
        # A fresh object, so that in-place calls such as ``set_format`` cannot leak into the cached copy.
        return dataset.with_format(None)
    want_test = split == "test"
    qualnames = _column(dataset, "qualname")
    indices = [i for i, name in enumerate(qualnames) if is_test_qualname(name, test_fraction, seed) == want_test]
    return dataset.select(indices)


@functools.lru_cache(maxsize=2)
def _load_json(path: str, mtime_ns: int, size: int) -> Dataset:
    """Load the JSON-lines corpus once per process; ``mtime_ns``/``size`` invalidate it after a rebuild."""
    from datasets import load_dataset

    del mtime_ns, size  # only part of the cache key
    return load_dataset("json", data_files=path, split="train", features=_features())


def classification_dataset(
    modules: Sequence[str] | None = None,
    test_fraction: float = 0.1,
    seed: int = 0,
    max_per_class: int | None = None,
) -> DatasetDict:
    """A topic-classification task: which standard-library area does a documentation passage come from?

    Every class gets the same number of passages: the size of the smallest class (or ``max_per_class`` if
    that is smaller), chosen by a stable hash of the text. Train and test are separated by the same
    qualname hash as :func:`load_corpus`, so no docstring (and, since passages are unique, no text) is
    shared between the splits. Rows are ordered by hash, which interleaves the classes.

    Args:
        modules: top-level module names used as classes, in label order; defaults to
            :data:`DEFAULT_CLASSIFICATION_MODULES`.
        test_fraction: expected share of qualnames in the test split.
        seed: changes both the per-class subsample and the train/test assignment.
        max_per_class: optional upper bound on passages per class (before splitting).

    Returns:
        ``DatasetDict`` with ``"train"`` and ``"test"``, columns ``text`` (string) and ``label``
        (``ClassLabel`` whose ``names`` are ``modules``).
    """
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    names = list(DEFAULT_CLASSIFICATION_MODULES if modules is None else modules)
    if len(names) < 2:
        raise ValueError("a classification task needs at least two modules")
    if len(set(names)) != len(names):
        raise ValueError(f"modules must be distinct, got {names}")
    if max_per_class is not None and max_per_class < 1:
        raise ValueError(f"max_per_class must be positive, got {max_per_class}")
    _check_fraction(test_fraction)

    corpus = load_corpus()
    by_module: dict[str, list[tuple[str, str]]] = {name: [] for name in names}
    columns = {name: _column(corpus, name) for name in ("text", "module", "qualname")}
    for text, module, qualname in zip(columns["text"], columns["module"], columns["qualname"], strict=True):
        if module in by_module:
            by_module[module].append((text, qualname))
    empty = [name for name, rows in by_module.items() if not rows]
    if empty:
        raise ValueError(f"no passages for module(s) {empty}; available: {sorted(set(columns['module']))}")

    per_class = min(len(rows) for rows in by_module.values())
    if max_per_class is not None:
        per_class = min(per_class, max_per_class)

    rows: list[tuple[float, str, int, str]] = []
    for label, name in enumerate(names):
        ranked = sorted(by_module[name], key=lambda row: (_unit_hash(row[0], seed), row[0]))
        rows.extend((_unit_hash(text, seed), text, label, qualname) for text, qualname in ranked[:per_class])
    rows.sort()

    features = Features({"text": Value("string"), "label": ClassLabel(names=names)})
    splits: dict[str, dict[str, list]] = {split: {"text": [], "label": []} for split in _SPLITS}
    for _, text, label, qualname in rows:
        split = "test" if is_test_qualname(qualname, test_fraction, seed) else "train"
        splits[split]["text"].append(text)
        splits[split]["label"].append(label)
    return DatasetDict({split: Dataset.from_dict(columns, features=features) for split, columns in splits.items()})


def corpus_pairs(split: str = "train", seed: int = 0) -> Dataset:
    """(query, relevant passage) pairs from the corpus split, for training query encoders (``aligned_contrastive``).

    The pairs of the retrieval task the embedding evaluation measures (`hf_distill.embedding_metrics.retrieval_task`)
    on the same split: for every docstring with several passages, ``text`` is its first passage (usually the summary
    paragraph) and ``positive`` each of its other passages, one row per pair, grouped by docstring in sorted
    ``qualname`` order. ``train``: 3,125 pairs of 1,649 docstrings. The test split's pairs are those of the held-out
    evaluation: train on ``train`` only.
    """
    from datasets import Dataset

    from ..embedding_metrics import retrieval_task

    if split not in _SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    queries, docs, relevant = retrieval_task(split, seed=seed)
    rows = [(query, docs[d]) for query, ids in zip(queries, relevant, strict=True) for d in sorted(ids)]
    return Dataset.from_dict({"text": [q for q, _ in rows], "positive": [p for _, p in rows]})


def ranking_dataset(split: str = "train") -> Dataset:
    """The bundled ranking task (``stdlib_ranking.jsonl.gz``, built by ``python -m hf_distill.data.build_ranking``).

    One row per docstring of the corpus split: ``query`` (its first sentence), ``positive`` (the rest of it),
    ``negatives`` (other docstrings' passages) and ``qualname``. ``train`` rows (1,918) have 7 negatives mined with
    all-MiniLM-L6-v2, hardest first, and ``teacher_scores``: that teacher's cosine scores for
    ``[positive, *negatives]``. ``test`` rows (224) have 19 negatives mined by TF-IDF, independent of any model.
    Train and test come from disjoint docstrings (the corpus's qualname split). See ``README.md`` in this folder.
    """
    from datasets import Features, Sequence, Value, load_dataset

    if split not in _SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    features = Features({"split": Value("string"), "qualname": Value("string"), "query": Value("string"),
                         "positive": Value("string"), "negatives": Sequence(Value("string")),
                         "teacher_scores": Sequence(Value("float32"))})
    dataset = load_dataset("json", data_files=str(RANKING_PATH), split="train", features=features)
    dataset = dataset.filter(lambda rows: [s == split for s in rows["split"]], batched=True)
    dataset = dataset.remove_columns("split")
    return dataset.remove_columns("teacher_scores") if split == "test" else dataset
