"""Tests for the bundled standard-library documentation corpus (``hf_distill.data``)."""

from __future__ import annotations

import collections
import gzip
import json
import os

import pytest

from hf_distill.data import (
    CORPUS_PATH,
    DEFAULT_CLASSIFICATION_MODULES,
    classification_dataset,
    is_test_qualname,
    load_corpus,
)
from hf_distill.data.build_corpus import MAX_CHARS, MIN_CHARS, docstring_passages

# The corpus ships with the package, so everything here must work without network access. ``hf_distill.data``
# imports ``datasets`` lazily, so setting these before the first load is early enough.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

FIELDS = ["text", "module", "qualname", "kind"]
KINDS = {"module", "class", "function", "method"}


def col(dataset, name: str) -> list:
    """A column as a list (``dataset[:]`` is much faster than iterating ``dataset[name]``)."""
    return dataset[:][name]


@pytest.fixture(scope="module")
def corpus():
    return load_corpus()


@pytest.fixture(scope="module")
def splits():
    return load_corpus("train"), load_corpus("test")


@pytest.fixture(scope="module")
def task():
    return classification_dataset()


def test_corpus_file_is_bundled_and_small() -> None:
    assert CORPUS_PATH.is_file()
    assert CORPUS_PATH.name == "stdlib_docs.jsonl.gz"
    assert CORPUS_PATH.stat().st_size <= 5 * 1024 * 1024
    header = CORPUS_PATH.read_bytes()[:10]
    assert header[:2] == b"\x1f\x8b"
    assert header[4:8] == b"\x00\x00\x00\x00", "gzip mtime must be 0 for reproducible builds"


def test_raw_lines_are_json_objects_with_documented_fields() -> None:
    with gzip.open(CORPUS_PATH, "rt", encoding="utf-8") as handle:
        first = json.loads(next(handle))
    assert list(first) == FIELDS


def test_corpus_loads_with_documented_schema(corpus) -> None:
    assert corpus.column_names == FIELDS
    assert len(corpus) >= 5000
    assert set(col(corpus, "kind")) == KINDS


def test_passages_are_clean_and_within_bounds(corpus) -> None:
    texts = col(corpus, "text")
    assert len(set(texts)) == len(texts), "passages are deduplicated"
    for text in texts:
        assert MIN_CHARS <= len(text) <= MAX_CHARS
        assert text == text.strip()
        assert "\n" not in text and "  " not in text
        assert ">>>" not in text
    for module, qualname in zip(col(corpus, "module"), col(corpus, "qualname"), strict=True):
        assert module and not module.startswith("_")
        assert qualname == module or qualname.startswith(module + ".")
    assert not {"test", "tkinter", "idlelib", "turtle", "antigravity", "this"} & set(col(corpus, "module"))


def test_split_is_disjoint_complete_and_about_90_10(corpus, splits) -> None:
    train, test = splits
    assert len(train) + len(test) == len(corpus)
    train_names, test_names = set(col(train, "qualname")), set(col(test, "qualname"))
    assert not train_names & test_names
    assert train_names | test_names == set(col(corpus, "qualname"))
    assert 0.05 <= len(test) / len(corpus) <= 0.15
    assert all(is_test_qualname(q) for q in test_names)


def test_split_is_deterministic_and_seeded(splits) -> None:
    train, test = splits
    again = load_corpus("test")
    assert col(again, "text") == col(test, "text")
    assert col(load_corpus("train"), "qualname") == col(train, "qualname")
    assert set(col(load_corpus("test", seed=1), "qualname")) != set(col(test, "qualname"))


def test_invalid_split_arguments() -> None:
    with pytest.raises(ValueError):
        load_corpus("validation")
    with pytest.raises(ValueError):
        load_corpus("test", test_fraction=1.5)


def test_classification_task_has_balanced_promised_classes(task) -> None:
    assert set(task) == {"train", "test"}
    names = list(DEFAULT_CLASSIFICATION_MODULES)
    for split in task.values():
        assert split.column_names == ["text", "label"]
        assert split.features["label"].names == names
        assert all(0 <= label < len(names) for label in col(split, "label"))
    counts = collections.Counter(col(task["train"], "label")) + collections.Counter(col(task["test"], "label"))
    assert sorted(counts) == list(range(len(names)))
    assert len(set(counts.values())) == 1, f"classes must be balanced, got {counts}"
    assert min(counts.values()) >= 250
    assert set(collections.Counter(col(task["test"], "label"))) == set(range(len(names)))
    assert 0.05 <= len(task["test"]) / (len(task["train"]) + len(task["test"])) <= 0.15


def test_classification_splits_share_no_text(task) -> None:
    train_texts, test_texts = set(col(task["train"], "text")), set(col(task["test"], "text"))
    assert not train_texts & test_texts
    assert len(train_texts) == len(task["train"])


def test_classification_is_deterministic_and_configurable(task) -> None:
    again = classification_dataset()
    assert col(again["test"], "text") == col(task["test"], "text")
    small = classification_dataset(["json", "email"], max_per_class=40)
    assert small["train"].features["label"].names == ["json", "email"]
    counts = collections.Counter(col(small["train"], "label")) + collections.Counter(col(small["test"], "label"))
    assert counts == {0: 40, 1: 40}
    with pytest.raises(ValueError):
        classification_dataset(["email", "no_such_module"])


def test_docstring_cleaning_rules() -> None:
    doc = (
        "Short summary.\n\n"
        "This paragraph explains    what the function does\n    across two wrapped lines.\n\n"
        ">>> spam(1)\n2\n\n"
        "    for item in items:\n        process(item)\n\n"
        "This paragraph introduces a doctest that follows it:\n>>> spam(2)\n3\n\n"
        "x = [1, 2, 3]; y = {a: b for a, b in zip(x, x)} # 123\n\n" + " ".join(["Sentence number one."] * 80)
    )
    passages = docstring_passages(doc)
    assert passages[0] == "This paragraph explains what the function does across two wrapped lines."
    assert passages[1] == "This paragraph introduces a doctest that follows it:"
    assert "Short summary." not in passages
    assert all(">>>" not in p and "process(item)" not in p and "zip(" not in p for p in passages)
    assert all(MIN_CHARS <= len(p) <= MAX_CHARS for p in passages)
    assert sum(p.count("Sentence number one.") for p in passages) == 80
