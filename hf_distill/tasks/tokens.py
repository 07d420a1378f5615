"""A teacher that reads its own tokens: each text tokenised twice, once by the student's tokenizer and once by the
teacher's, for tasks whose signals are one per text (pooled embeddings, a classifier's logits), so that a teacher of
another vocabulary can teach (`DistillationTrainer`'s ``teacher_processing_class``).

The data holds the teacher's tokens in ``teacher_input_ids`` / ``teacher_attention_mask`` (/
``teacher_token_type_ids``) columns (`add_teacher_tokens`); `TeacherTokensCollator` pads each model's tokens apart;
`OwnTeacherTokens` hands the teacher its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["TEACHER_COLUMNS", "TEACHER_PREFIX", "TEXT_KEYS", "OwnTeacherTokens", "TeacherTokensCollator",
           "add_teacher_tokens"]

#: The tokenizer outputs a text model reads.
TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
#: What the teacher's own copy of an input is prefixed with in a batch.
TEACHER_PREFIX = "teacher_"
#: The columns that hold the teacher's own tokens.
TEACHER_COLUMNS = tuple(f"{TEACHER_PREFIX}{key}" for key in TEXT_KEYS)


def add_teacher_tokens(dataset: Any, teacher_tokenizer: Any, text_column: str = "text", max_length: int = 256,
                       **map_kwargs: Any) -> Any:
    """``dataset`` with its ``text_column`` also tokenised by the teacher's own tokenizer, as ``teacher_input_ids``
    / ``teacher_attention_mask`` (/ ``teacher_token_type_ids``), cut to ``max_length``."""
    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        encoded = teacher_tokenizer(batch[text_column], truncation=True, max_length=max_length)
        return {f"{TEACHER_PREFIX}{key}": value for key, value in encoded.items() if key in TEXT_KEYS}

    return dataset.map(tokenize, batched=True, **map_kwargs)


@dataclass
class TeacherTokensCollator:
    """Pad the student's inputs (and labels) with ``collator`` and the teacher's own tokens (``teacher_input_ids``,
    ...) with ``teacher_tokenizer``, each to its own length; the teacher's keep their ``teacher_`` prefix."""

    collator: Any
    teacher_tokenizer: Any

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        missing = [i for i, row in enumerate(features) if f"{TEACHER_PREFIX}input_ids" not in row]
        if missing:
            raise ValueError(
                f"Rows {missing[:5]} have no `teacher_input_ids`: a teacher with its own tokenizer needs each text "
                "tokenised by it too. Add them with `hf_distill.tasks.tokens.add_teacher_tokens(dataset, "
                "teacher_tokenizer)`."
            )
        own = [{key[len(TEACHER_PREFIX):]: row[key] for key in TEACHER_COLUMNS if key in row} for row in features]
        rest = [{key: value for key, value in row.items() if key not in TEACHER_COLUMNS} for row in features]
        batch = dict(self.collator(rest))
        padded = self.teacher_tokenizer.pad(own, padding=True, return_tensors="pt")
        batch.update({f"{TEACHER_PREFIX}{key}": value for key, value in padded.items()})
        return batch


class OwnTeacherTokens:
    """Mixed into a `TaskAdapter` whose signals are one per text and whose data holds the teacher's own tokens in
    `TEACHER_COLUMNS`: the teacher reads those (`teacher_view`), and the default collator pads each model's apart."""

    own_teacher_tokens = True
    teacher_columns = TEACHER_COLUMNS

    def teacher_view(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch with the teacher's own tokens as its text inputs (labels and other keys kept); the batch itself
        when it holds none."""
        if f"{TEACHER_PREFIX}input_ids" not in batch:
            return batch
        rest = {key: value for key, value in batch.items() if key not in TEXT_KEYS and key not in TEACHER_COLUMNS}
        return {**rest, **{key[len(TEACHER_PREFIX):]: batch[key] for key in TEACHER_COLUMNS if key in batch}}

    def default_collator(self, tokenizer: Any, args: Any, student: Any, teacher: Any, training: bool = True,
                         teacher_tokenizer: Any = None) -> Any:
        """Trainer's default (None: padding with the student's tokenizer), or with a ``teacher_tokenizer``, a
        `TeacherTokensCollator` padding each model's tokens apart."""
        if teacher_tokenizer is None or tokenizer is None:
            return None
        from transformers import DataCollatorWithPadding

        return TeacherTokensCollator(DataCollatorWithPadding(tokenizer), teacher_tokenizer)
