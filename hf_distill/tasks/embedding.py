"""Sentence-embedding models: pooled, optionally normalised embeddings of a text batch, one item per text."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModel
from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

from ..signals import Signals
from .base import TASKS, TaskAdapter, base_model_of, token_mask_of, unwrap_model
from .tokens import TEXT_KEYS, OwnTeacherTokens, add_teacher_tokens

__all__ = ["EmbeddingTask", "Pooling", "POOLING_MODES", "POSITIVE_COLUMNS", "PositivesCollator", "pool",
           "add_positive_tokens", "add_teacher_tokens"]

POOLING_MODES = ("mean", "cls", "last")
_BASE_MODELS = frozenset(MODEL_MAPPING_NAMES.values())
_NAMED_POOLING = {"mean": "mean", "cls": "cls", "lasttoken": "last", "last": "last"}
#: What a row's positive text (a relevant passage for the row's text) is prefixed with once tokenised.
POSITIVE_PREFIX = "positive_"
#: The columns that hold the positive's tokens, and which rows have a positive at all.
POSITIVE_COLUMNS = tuple(f"{POSITIVE_PREFIX}{key}" for key in TEXT_KEYS)
HAS_POSITIVE = "has_positive"


@dataclass
class Pooling:
    """How token states become one sentence embedding: ``mode`` (mean | cls | last) and L2 ``normalize``."""

    mode: str = "mean"
    normalize: bool = False

    def __post_init__(self) -> None:
        if self.mode not in POOLING_MODES:
            raise ValueError(f"`pooling` must be one of {', '.join(POOLING_MODES)}, got {self.mode!r}.")

    @classmethod
    def from_folder(cls, folder: str | Path | None, default: Pooling | None = None) -> Pooling:
        """Read a sentence-transformers folder (``modules.json``, ``1_Pooling/config.json``), so a model is pooled
        as its authors intended; ``default`` (mean, not normalised) when the folder has none."""
        default = default or cls()
        if folder is None or not (Path(folder) / "modules.json").is_file():
            return default
        modules = json.loads((Path(folder) / "modules.json").read_text())
        mode, normalize = default.mode, False
        for module in modules:
            kind = module.get("type", "")
            if kind.endswith("Pooling"):
                config = json.loads((Path(folder) / module["path"] / "config.json").read_text())
                named = _NAMED_POOLING.get(config.get("pooling_mode"))  # sentence-transformers >= 6 writes this
                if named:
                    mode = named
                elif config.get("pooling_mode_cls_token"):
                    mode = "cls"
                elif config.get("pooling_mode_lasttoken"):
                    mode = "last"
                elif config.get("pooling_mode_mean_tokens"):
                    mode = "mean"
                else:
                    raise ValueError(
                        f"{folder}: pooling {config} is not supported (mean, cls and last-token are); set "
                        "`embedding_pooling` explicitly."
                    )
            elif kind.endswith("Normalize"):
                normalize = True
        return cls(mode=mode, normalize=normalize)


def _folder_of(model: nn.Module) -> str | None:
    path = getattr(base_model_of(model), "name_or_path", None)
    return path if path and Path(path).is_dir() else None


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: Pooling) -> torch.Tensor:
    """``[B, L, H]`` token states → ``[B, H]`` float32 embeddings (padding excluded from the mean; ``last`` takes
    the last non-padding token, right or left padding alike)."""
    hidden = hidden.float()
    if attention_mask is None:
        attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
    mask = attention_mask.to(hidden.dtype)
    if pooling.mode == "cls":
        embedding = hidden[:, 0]
    elif pooling.mode == "mean":
        embedding = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
    else:
        positions = torch.arange(hidden.shape[1], device=hidden.device)
        last = (attention_mask.bool() * positions).argmax(dim=1)
        embedding = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if pooling.normalize:
        embedding = nn.functional.normalize(embedding, dim=-1)
    return embedding


def add_positive_tokens(dataset: Any, tokenizer: Any, positive_column: str = "positive", max_length: int = 256,
                        **map_kwargs: Any) -> Any:
    """``dataset`` with its ``positive_column`` (a relevant text per row; None or empty where a row has none)
    tokenised as ``positive_input_ids`` / ``positive_attention_mask`` (/ ``positive_token_type_ids``), cut to
    ``max_length``, and a boolean ``has_positive`` column: what `objectives.AlignedContrastive` reads."""
    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        texts = [text if isinstance(text, str) else "" for text in batch[positive_column]]
        encoded = tokenizer(texts, truncation=True, max_length=max_length)
        columns = {f"{POSITIVE_PREFIX}{key}": value for key, value in encoded.items() if key in TEXT_KEYS}
        return {**columns, HAS_POSITIVE: [bool(text.strip()) for text in texts]}

    return dataset.map(tokenize, batched=True, **map_kwargs)


@dataclass
class PositivesCollator:
    """Pad the rows' own inputs with ``collator`` and their positives' tokens (`add_positive_tokens`) with
    ``tokenizer``, each to its own length; the positives keep their ``positive_`` prefix, and ``positive_mask``
    (``[B]`` booleans) says which rows have one. Rows without positive columns pass to ``collator`` unchanged."""

    collator: Any
    tokenizer: Any

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        first = f"{POSITIVE_PREFIX}input_ids"
        if not any(first in row for row in features):
            return self.collator(features)
        missing = [i for i, row in enumerate(features) if first not in row]
        if missing:
            raise ValueError(f"Rows {missing[:5]} of this batch have no `{first}` while others do: tokenise every "
                             "row's positive with `hf_distill.tasks.embedding.add_positive_tokens`.")
        own = [{key[len(POSITIVE_PREFIX):]: row[key] for key in POSITIVE_COLUMNS if key in row} for row in features]
        drop = (*POSITIVE_COLUMNS, HAS_POSITIVE)
        batch = dict(self.collator([{key: value for key, value in row.items() if key not in drop}
                                    for row in features]))
        padded = self.tokenizer.pad(own, padding=True, return_tensors="pt")
        batch.update({f"{POSITIVE_PREFIX}{key}": value for key, value in padded.items()})
        batch["positive_mask"] = torch.tensor([bool(row.get(HAS_POSITIVE, True)) for row in features])
        return batch


@TASKS.register
class EmbeddingTask(OwnTeacherTokens, TaskAdapter):
    """Embedding distillation for any `AutoModel` (BERT, MiniLM, ...): ``Signals.embeddings`` is ``[B, D]``.

    Items are texts; every text counts. Student and teacher are pooled with their own `Pooling`, read from their
    sentence-transformers folders when they have one (``set_pooling``), else mean pooling.
    """

    name = "embedding"

    def __init__(self, pooling: Pooling | None = None) -> None:
        self.default_pooling = pooling or Pooling()
        self._pooling: dict[int, Pooling] = {}

    @classmethod
    def detect(cls, model: nn.Module) -> EmbeddingTask | None:
        return cls.from_architecture(type(base_model_of(model)).__name__)

    @classmethod
    def from_architecture(cls, architecture: str) -> EmbeddingTask | None:
        return cls() if architecture in _BASE_MODELS else None

    def auto_class(self) -> Any:
        return AutoModel

    def set_pooling(self, model: nn.Module, pooling: Pooling) -> None:
        """Pool ``model`` (student or teacher) this way."""
        self._pooling[id(base_model_of(model))] = pooling

    def pooling_of(self, model: nn.Module) -> Pooling:
        return self._pooling.get(id(unwrap_model(model)), self.default_pooling)

    def logit_width(self, model: nn.Module) -> int | None:
        return None

    cached_signal = "embeddings"

    def cache_settings(self, teacher: nn.Module) -> dict[str, Any]:
        pooling = self.pooling_of(teacher)
        return {"task": self.name, "pooling": pooling.mode, "normalize": pooling.normalize}

    def prepare(self, student: nn.Module, teacher: nn.Module, args: Any) -> None:
        """Teacher pooled as its folder says; the student as its own folder says, else like the teacher; then the
        config's explicit `embedding_pooling` / `embedding_normalize`, if set, for both."""
        teacher = teacher if teacher is not None else student  # a cached teacher: the student pools as its folder says
        teacher_pooling = Pooling.from_folder(_folder_of(teacher), default=self.default_pooling)
        student_pooling = Pooling.from_folder(_folder_of(student), default=teacher_pooling)
        for model, pooling in ((teacher, teacher_pooling), (student, student_pooling)):
            mode = pooling.mode if args.embedding_pooling == "auto" else args.embedding_pooling
            normalize = pooling.normalize if args.embedding_normalize is None else args.embedding_normalize
            self.set_pooling(model, Pooling(mode=mode, normalize=normalize))

    #: Pooled embeddings need no shared vocabulary: a teacher of another tokenizer reads its own tokens, from the
    #: ``teacher_input_ids`` / ``teacher_attention_mask`` columns (`tokens.add_teacher_tokens`).
    token_free_signals = frozenset({"embeddings"})
    #: Each row's positive text, tokenised (`add_positive_tokens`), for ``positive_embeddings``.
    extra_columns = (*POSITIVE_COLUMNS, HAS_POSITIVE)

    def default_collator(self, tokenizer: Any, args: Any, student: Any, teacher: Any, training: bool = True,
                         teacher_tokenizer: Any = None) -> Any:
        """With a ``teacher_tokenizer``, `OwnTeacherTokens`'s (each model's tokens padded apart); else padding with
        the student's tokenizer, each row's positive (when the data has them) padded apart (`PositivesCollator`)."""
        if teacher_tokenizer is not None or tokenizer is None:
            return super().default_collator(tokenizer, args, student, teacher, training, teacher_tokenizer)
        from transformers import DataCollatorWithPadding

        return PositivesCollator(DataCollatorWithPadding(tokenizer), tokenizer)

    def save_extras(self, output_dir: str, model: nn.Module, objectives: nn.Module) -> None:
        """Write the sentence-transformers files, so `SentenceTransformer(output_dir)` and `SentenceEncoder` load
        the student with its pooling and, when an objective learned one, its projection into the teacher's space."""
        from ..embeddings import save_sentence_transformer_files
        from ..objectives.embedding import saved_projection_source

        source = saved_projection_source(item.objective for item in objectives)
        save_sentence_transformer_files(output_dir, model, self.pooling_of(model),
                                        None if source is None else source.projection)

    def embedding_width(self, model: nn.Module | None) -> int:
        """The width of ``model``'s embeddings; None = the cached teacher's (`TaskAdapter.teacher_widths`)."""
        if model is None:
            if "embeddings" not in self.teacher_widths:
                raise ValueError("The teacher's embedding width is unknown: give the teacher or a teacher cache.")
            return self.teacher_widths["embeddings"]
        config = base_model_of(model).config
        return int(getattr(config, "hidden_size", None) or config.d_model)

    def item_mask(self, batch: dict[str, Any]) -> torch.Tensor:
        reference = batch["input_ids"]
        return torch.ones(reference.shape[0], dtype=torch.bool, device=reference.device)

    def model_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    def run(self, model: nn.Module, batch: dict[str, Any], requires: frozenset[str]) -> Signals:
        outputs = model(**self.model_inputs(batch), **self.output_kwargs(requires))
        signals = Signals(
            embeddings=pool(outputs.last_hidden_state, batch.get("attention_mask"), self.pooling_of(model)),
            mask=self.item_mask(batch),
            hidden_states=getattr(outputs, "hidden_states", None),
            attentions=getattr(outputs, "attentions", None),
            token_mask=token_mask_of(batch),
        )
        if "positive_embeddings" in requires and f"{POSITIVE_PREFIX}input_ids" in batch:
            signals.positive_embeddings, signals.positive_mask = self._positive_embeddings(model, batch)
        return signals

    def _positive_embeddings(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, D]`` the pooled embeddings of the rows' positives (zeros where a row has none) and the ``[B]`` mask
        of rows that have one; only those rows go through ``model`` (the first row when none has one)."""
        has = batch.get("positive_mask")
        has = torch.ones(batch[f"{POSITIVE_PREFIX}input_ids"].shape[0], dtype=torch.bool) if has is None else has
        has = has.to(device=batch[f"{POSITIVE_PREFIX}input_ids"].device, dtype=torch.bool)
        # At least one row goes through, so that every process runs the same forward passes (a ZeRO-3 / FSDP model
        # gathers its weights in each one); a batch without positives then keeps zeros.
        rows = has if bool(has.any()) else torch.arange(has.shape[0], device=has.device) == 0
        inputs = {key: batch[f"{POSITIVE_PREFIX}{key}"][rows] for key in TEXT_KEYS
                  if f"{POSITIVE_PREFIX}{key}" in batch}
        embedded = pool(model(**inputs).last_hidden_state, inputs.get("attention_mask"), self.pooling_of(model))
        out = embedded.new_zeros((has.shape[0], embedded.shape[-1]))
        out[rows] = embedded
        out[~has] = 0.0
        return out, has

    def eval_sums(self, student: Signals, teacher: Signals | None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        if teacher is None or student.embeddings.shape != teacher.embeddings.shape:
            return {}
        items = student.mask.sum()
        cosine = nn.functional.cosine_similarity(student.embeddings, teacher.embeddings, dim=-1)
        return {"cosine_to_teacher": (cosine.sum(), items)}

