"""The teacher-signal cache: run the teacher once over a dataset and keep what it produced as a Hugging Face
`datasets` dataset (Arrow files, no pickle), which the trainer then reads instead of running the teacher.

Layout of a cache folder::

    <cache>/hf_distill_cache.json   what it holds and its fingerprint (written last: no file = not complete)
    <cache>/train/                  one row per training example (`Dataset.save_to_disk`)
    <cache>/eval/                   the same for the evaluation data, when given
    <cache>/.partial/               shards of an unfinished run (resumed by the next run with the same fingerprint)

Each row holds, for the positions the task counts (tokens with a label for language models, the example for
classifiers, the text for embeddings, the query for rankers): ``num_items`` and, flattened, either the full
``logits``, or a top-k support ``topk_logits`` + ``topk_indices`` + ``tail_mass`` (see
`losses.topk_divergence`), or ``embeddings``, or the ranking ``scores`` of every candidate (for a bi-encoder
optionally also ``query_embeddings`` and ``candidate_embeddings``, from which in-batch scores are computed); optionally
chosen ``hidden_states.<layer>`` at every attended token (``num_tokens`` of them).

The fingerprint covers the teacher's weights, the data's contents, the tokenizer's vocabulary, the task's settings
(pooling, similarity, ...) and the cache's own settings; a cache whose fingerprint does not match the run is
refused with `StaleCacheError`.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers.utils import logging

from . import losses
from .signals import Signals
from .tasks import TaskAdapter, resolve_task

logger = logging.get_logger(__name__)

__all__ = [
    "CACHE_DTYPES",
    "CachedTeacher",
    "METADATA_FILE",
    "ROW_COLUMN",
    "RowIdCollator",
    "StaleCacheError",
    "TeacherCache",
    "cache_teacher",
    "dataset_fingerprint",
    "model_fingerprint",
    "tokenizer_fingerprint",
]

CACHE_VERSION = 1
METADATA_FILE = "hf_distill_cache.json"
#: The column the trainer adds to a cached dataset (row numbers), and the batch key the rows arrive under.
ROW_COLUMN = "hf_distill_cache_row"
CACHE_DTYPES = ("float32", "float16", "bfloat16")
_PARTIAL = ".partial"
_SPLITS = ("train", "eval")
_SPLIT_SHIFT = 40  # batch row code = split number << 40 | row number


class StaleCacheError(ValueError):
    """A teacher-signal cache does not match the run that wants to use it (or is not a complete cache)."""


# ---- fingerprints --------------------------------------------------------------------------------------------------


def _sha(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """sha256 of a model's weights (names, dtypes, shapes and bytes of its state dict): the same weights in the
    same dtype give the same fingerprint in any process."""
    model = getattr(model, "_orig_mod", model)  # torch.compile
    model = getattr(model, "module", model)  # DDP
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tensor.numel()};".encode())
        digest.update(memoryview(tensor.view(torch.uint8).numpy()))
    return digest.hexdigest()


def dataset_fingerprint(dataset: Any) -> str:
    """sha256 of a `datasets.Dataset`'s contents, row by row in order (all columns but `ROW_COLUMN`)."""
    import pyarrow as pa

    columns = [c for c in dataset.column_names if c != ROW_COLUMN]
    digest = hashlib.sha256(f"{len(dataset)}|{columns}".encode())
    table_view = dataset.select_columns(columns).with_format("arrow")
    for start in range(0, len(dataset), 4096):
        table = table_view[start : start + 4096].combine_chunks()
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema.remove_metadata()) as writer:
            writer.write_table(table.replace_schema_metadata(None))
        digest.update(memoryview(sink.getvalue()))
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str | None:
    """sha256 of a tokenizer's class, vocabulary and padding side (None without a tokenizer)."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    if tokenizer is None or not hasattr(tokenizer, "get_vocab"):
        return None
    vocab = sorted(tokenizer.get_vocab().items())
    return _sha([type(tokenizer).__name__, vocab, getattr(tokenizer, "padding_side", None)])


# ---- reading and writing the rows ----------------------------------------------------------------------------------


def _storable(values: torch.Tensor, dtype: str) -> np.ndarray:
    """A float tensor as the numpy array stored in Arrow (bfloat16 as its int16 bit pattern: Arrow has no bf16)."""
    if dtype == "bfloat16":
        return values.detach().to("cpu", torch.bfloat16).contiguous().view(torch.int16).numpy()
    return values.detach().to("cpu", getattr(torch, dtype)).numpy()


def _loaded(values: np.ndarray, dtype: str) -> torch.Tensor:
    tensor = torch.from_numpy(np.array(values))  # a writable copy of the memory-mapped Arrow buffer
    return tensor.view(torch.bfloat16) if dtype == "bfloat16" else tensor


def _per_item(value: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``value`` ``[*mask.shape, t]`` (or ``[*mask.shape]``) → ``[B, P, t]`` with P positions per row."""
    batch = mask.shape[0]
    positions = mask.reshape(batch, -1).shape[1]
    return value.reshape(batch, positions, -1)


@dataclass
class _Rows:
    """Flat column values of one shard, gathered batch by batch."""

    columns: dict[str, list[np.ndarray]]
    lengths: dict[str, list[int]]
    widths: dict[str, int]

    @classmethod
    def empty(cls) -> _Rows:
        return cls({}, {}, {})

    def add(self, column: str, per_row: list[np.ndarray]) -> None:
        """Each row's values ``[n_items, width]`` (or ``[n]`` for counts)."""
        if per_row and per_row[0].ndim == 2:
            self.widths[column] = int(per_row[0].shape[-1])
        self.columns.setdefault(column, []).extend(v.reshape(-1) for v in per_row)
        self.lengths.setdefault(column, []).extend(int(v.size) for v in per_row)

    def table(self) -> Any:
        import pyarrow as pa

        arrays = {}
        for column, values in self.columns.items():
            if column in ("num_items", "num_tokens"):
                arrays[column] = pa.array(np.concatenate(values).astype(np.int32))
                continue
            offsets = np.concatenate([[0], np.cumsum(self.lengths[column])]).astype(np.int64)
            flat = np.concatenate(values) if values else np.zeros(0, np.float32)
            arrays[column] = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat))
        return pa.table(arrays)


def _flat(table: Any, column: str) -> np.ndarray:
    return table.column(column).combine_chunks().flatten().to_numpy(zero_copy_only=False)


# ---- the cache as the trainer reads it -----------------------------------------------------------------------------


class TeacherCache:
    """A complete teacher-signal cache folder, opened for reading (memory-mapped Arrow files).

    Args:
        path: the folder `cache_teacher` (or ``hf-distill cache-teacher``) wrote.
        key: how messages name it (``teacher_cache``; ``teacher_cache[k]`` for one cache of several).
    """

    def __init__(self, path: str | os.PathLike, key: str = "teacher_cache") -> None:
        from datasets import load_from_disk

        self.path = Path(path)
        self.key = key
        meta_file = self.path / METADATA_FILE
        if not meta_file.is_file():
            partial = " It holds an unfinished run: rerun the same command to complete it." if (
                self.path / _PARTIAL).exists() else ""
            raise StaleCacheError(
                f"`{self.key}`: {str(self.path)!r} is not a complete teacher-signal cache (no {METADATA_FILE})."
                f"{partial} Build one with `hf-distill cache-teacher RECIPE` or `hf_distill.cache.cache_teacher(...)`."
            )
        self.metadata: dict[str, Any] = json.loads(meta_file.read_text())
        if self.metadata.get("version") != CACHE_VERSION:
            raise StaleCacheError(f"`{self.key}`: {str(self.path)!r} was written by cache format version "
                                  f"{self.metadata.get('version')}, this hf_distill reads version {CACHE_VERSION}; "
                                  "rebuild it.")
        self.splits = {name: load_from_disk(str(self.path / name)).with_format("arrow")
                       for name in self.metadata["splits"]}
        self._split_numbers = {name: _SPLITS.index(name) for name in self.splits}
        self.built_now = False  # True when `cache_teacher` has just written it (False: opened or reused)

    # what it holds
    @property
    def task(self) -> str:
        return self.metadata["task_settings"]["task"]

    @property
    def signal(self) -> str:
        """The task's signal: ``logits``, ``embeddings`` or ``scores``."""
        return self.metadata["signal"]

    @property
    def top_k(self) -> int | None:
        return self.metadata["top_k"]

    @property
    def dtype(self) -> str:
        return self.metadata["dtype"]

    @property
    def hidden_layers(self) -> list[int]:
        return list(self.metadata.get("hidden_layers") or [])

    @property
    def in_batch_negatives(self) -> bool:
        """Whether it kept a bi-encoder ranker's embeddings, so in-batch scores (``batch_scores``) can be computed."""
        return bool(self.metadata.get("in_batch_negatives"))

    def provides(self) -> frozenset[str]:
        """The `Signals` fields this cache gives back (``logits`` stands for full logits or a top-k support)."""
        fields = {self.signal} | ({"hidden_states"} if self.hidden_layers else set())
        if self.in_batch_negatives:
            fields |= {"batch_scores", "candidate_embeddings"}
        return frozenset(fields)

    def split_of(self, dataset: Any, fingerprint: str | None = None) -> str | None:
        """The cached split whose data has the same contents as ``dataset`` (or whose data fingerprint is
        ``fingerprint``, `dataset_fingerprint`, when given), else None."""
        if fingerprint is None and not hasattr(dataset, "column_names"):
            return None
        fingerprint = fingerprint or dataset_fingerprint(dataset)
        return next((name for name, info in self.metadata["splits"].items() if info["data"] == fingerprint), None)

    def row_codes(self, split: str, rows: int) -> list[int]:
        """The values of `ROW_COLUMN` for the ``rows`` rows of ``split``."""
        return [(self._split_numbers[split] << _SPLIT_SHIFT) | i for i in range(rows)]

    def check_teacher(self, teacher: nn.Module) -> None:
        """Refuse the cache if ``teacher`` is not the model (weights and dtype) it was built with."""
        if model_fingerprint(teacher) != self.metadata["teacher"]:
            raise StaleCacheError(
                f"`{self.key}`: {str(self.path)!r} was built with another teacher (or other weights or dtype: "
                f"{self.metadata.get('teacher_name')!r} in {self.metadata.get('teacher_dtype')}); its signals would "
                "not be this teacher's. Rebuild the cache for this teacher, or pass `teacher_model=None` to train "
                "from the cache alone."
            )

    # reading a batch
    def signals(self, codes: torch.Tensor, mask: torch.Tensor, attention_mask: torch.Tensor | None,
                width: int | None = None) -> Signals:
        """The cached teacher signals of the batch rows ``codes``, placed at the batch's counted positions
        (``mask``: the task's item mask of this batch)."""
        codes = codes.tolist()
        split_numbers = {code >> _SPLIT_SHIFT for code in codes}
        if len(split_numbers) != 1:
            raise StaleCacheError("A batch mixes rows of several cached splits; this is a bug, please report it.")
        split = _SPLITS[split_numbers.pop()]
        rows = [code & ((1 << _SPLIT_SHIFT) - 1) for code in codes]
        table = self.splits[split][rows]
        device = mask.device
        counts = table.column("num_items").to_numpy()
        per_row = mask.reshape(mask.shape[0], -1)
        expected = per_row.sum(1).cpu().numpy()
        if not np.array_equal(counts, expected):
            bad = int(np.flatnonzero(counts != expected)[0])
            raise StaleCacheError(
                f"`{self.key}`: row {rows[bad]} of the cached {split} split has {int(counts[bad])} counted "
                f"positions but this batch has {int(expected[bad])} for it: the data or its collation changed since "
                "the cache was built. Rebuild the cache with the same data, tokenizer and collator."
            )
        signals = Signals(mask=mask)
        if self.signal == "scores":
            signals.scores = self._first_items(table, "scores").to(device)
            if self.in_batch_negatives:  # `batch_scores` follow once the task knows the batch's candidates
                width = self.metadata["widths"]["candidate_embeddings"]
                signals.embeddings = self._first_items(table, "query_embeddings", width)[:, 0].to(device)
                signals.candidate_embeddings = self._first_items(table, "candidate_embeddings", width).to(device)
        elif self.signal == "logits" and self.top_k is not None:
            signals.topk_logits = self._placed(table, "topk_logits", per_row, fill=0.0).to(device)
            indices = self._placed(table, "topk_indices", per_row, fill=0, raw=True).long()
            # Uncounted positions get distinct placeholder indices; no loss ever reads them.
            placeholder = torch.arange(self.top_k).expand(*per_row.shape, self.top_k)
            signals.topk_indices = torch.where(per_row.cpu().unsqueeze(-1), indices, placeholder).to(device)
            signals.tail_mass = self._placed(table, "tail_mass", per_row, fill=0.0, raw=True).squeeze(-1).to(device)
            for name in ("topk_logits", "topk_indices"):
                value = getattr(signals, name)
                setattr(signals, name, value.reshape(*mask.shape, self.top_k))
            signals.tail_mass = signals.tail_mass.reshape(mask.shape)
        else:
            value = self._placed(table, self.signal, per_row, fill=0.0).to(device)
            value = value.reshape(*mask.shape, value.shape[-1])
            if width is not None and self.signal == "logits":
                value = value[..., :width]
            setattr(signals, self.signal, value)
        if self.hidden_layers:
            signals.hidden_states = self._hidden_states(table, attention_mask, mask)
        return signals

    def _placed(self, table: Any, column: str, per_row: torch.Tensor, fill: float, raw: bool = False) -> torch.Tensor:
        """``[B, P, t]``: each row's stored items written at its counted positions, ``fill`` elsewhere."""
        flat = _flat(table, column)
        values = _loaded(flat, "raw") if raw else _loaded(flat, self.dtype).float()
        width = self.metadata["widths"][column]
        where = per_row.reshape(-1).cpu()
        if bool(where.all()):  # every position counts: the stored values are the tensor
            return values.view(*per_row.shape, width)
        out = torch.full((*per_row.shape, width), fill, dtype=values.dtype)
        out.view(-1, width).index_copy_(0, where.nonzero().squeeze(1), values.view(-1, width))
        return out

    def _first_items(self, table: Any, column: str, width: int | None = None) -> torch.Tensor:
        """``[B, n]`` (``[B, n, width]`` for a column of ``width``-vectors): each row's first ``n`` stored items,
        ``n`` the fewest any row of the batch holds (ranking rows cache every candidate; the task adapter then keeps
        the ones the batch uses, `TaskAdapter.fit_cached`)."""
        flat = _loaded(_flat(table, column), self.dtype).float()
        flat = flat.view(-1, width) if width else flat
        counts = table.column(column).combine_chunks().value_lengths().to_numpy() // (width or 1)
        kept = int(counts.min())
        return torch.stack([row[:kept] for row in torch.split(flat, counts.tolist())])

    def _hidden_states(self, table: Any, attention_mask: torch.Tensor | None, mask: torch.Tensor) -> tuple:
        tokens = attention_mask.bool() if attention_mask is not None else None
        layers: list[torch.Tensor | None] = [None] * (max(self.hidden_layers) + 1)
        for layer in self.hidden_layers:
            if tokens is None:
                raise StaleCacheError("Cached hidden states need the batch's `attention_mask` to be placed.")
            layers[layer] = self._placed(table, f"hidden_states.{layer}", tokens, fill=0.0).to(mask.device)
        return tuple(layers)


class CachedTeacher:
    """The teacher source that reads a `TeacherCache` instead of running a model. Batches without cached rows
    (e.g. evaluation data that was not cached) go to ``fallback`` (a live teacher), or get no teacher signals."""

    def __init__(self, cache: TeacherCache, task: TaskAdapter, fallback: Any = None, width: int | None = None) -> None:
        self.cache = cache
        self.task = task
        self.fallback = fallback
        self.width = width

    def __call__(self, batch: dict[str, Any], requires: frozenset[str]) -> Signals | None:
        codes = batch.get(ROW_COLUMN)
        if codes is None:
            return self.fallback(batch, requires) if self.fallback is not None else None
        signals = self.cache.signals(codes, self.task.item_mask(batch), batch.get("attention_mask"), self.width)
        return self.task.fit_cached(signals, batch)


class RowIdCollator:
    """Wraps a data collator: takes `ROW_COLUMN` out of each example, collates the rest with ``collator`` and
    puts the row codes in the batch (under the same key). Examples without it pass through unchanged."""

    def __init__(self, collator: Any) -> None:
        self.collator = collator

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if not features or ROW_COLUMN not in features[0]:
            return self.collator(features)
        codes = [f[ROW_COLUMN] for f in features]
        batch = self.collator([{k: v for k, v in f.items() if k != ROW_COLUMN} for f in features])
        batch[ROW_COLUMN] = torch.tensor(codes, dtype=torch.long)
        return batch


# ---- building a cache ----------------------------------------------------------------------------------------------


def trainer_default_collator(tokenizer: Any) -> Any:
    """`Trainer`'s own default collator: padding with the tokenizer when there is one, else default_data_collator."""
    from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase, default_data_collator

    text_tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    if isinstance(text_tokenizer, PreTrainedTokenizerBase):
        return DataCollatorWithPadding(text_tokenizer)
    return default_data_collator


def _default_collator(task: TaskAdapter, tokenizer: Any, args: Any, teacher: nn.Module) -> Any:
    """The collator a `DistillationTrainer` would use with no `data_collator` given (evaluation variant)."""
    text_tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    collator = task.default_collator(text_tokenizer, args, teacher, teacher, training=False)
    return collator if collator is not None else trainer_default_collator(text_tokenizer)


def _check_deterministic(collator: Any) -> None:
    from transformers import DataCollatorForLanguageModeling

    if isinstance(collator, DataCollatorForLanguageModeling) and collator.mlm:
        raise ValueError(
            "The data collator masks tokens at random (DataCollatorForLanguageModeling with mlm=True), so the "
            "teacher sees different inputs every epoch and its signals cannot be cached. Mask the data once "
            "(store input_ids and labels with the masks applied) and collate with DataCollatorWithPadding, or use a "
            "live teacher."
        )


def _model_columns(dataset: Any, teacher: nn.Module, task: TaskAdapter) -> Any:
    """As `Trainer` does: keep only the columns the model's forward takes (and labels)."""
    if task.raw_rows:
        return dataset
    inner = getattr(teacher, "_orig_mod", teacher)
    forward = getattr(inner, "get_base_model", lambda: inner)().forward
    keep = set(inspect.signature(forward).parameters) | {"label", "labels", "label_ids"}
    unused = [c for c in dataset.column_names if c not in keep]
    return dataset.remove_columns(unused) if unused else dataset


def _atomic_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _save_dataset(dataset: Any, path: Path) -> None:
    """`save_to_disk` to a temporary folder, then moved into place: a folder that exists is complete."""
    from datasets.utils.tqdm import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    quiet = are_progress_bars_disabled()
    disable_progress_bars()  # one bar per shard would drown the caching progress bar
    try:
        dataset.save_to_disk(str(tmp))
    finally:
        if not quiet:
            enable_progress_bars()
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def cache_teacher(
    teacher: nn.Module | str,
    train_dataset: Any,
    output_dir: str | os.PathLike,
    *,
    eval_dataset: Any = None,
    args: Any = None,
    task: str | TaskAdapter | None = None,
    tokenizer: Any = None,
    data_collator: Any = None,
    top_k: int | None = None,
    dtype: str = "float32",
    hidden_layers: list[int] | None = None,
    in_batch_negatives: bool = False,
    batch_size: int = 32,
    shard_rows: int = 2048,
    overwrite: bool = False,
    progress: bool = True,
) -> TeacherCache:
    """Run ``teacher`` once over the data and store its signals in ``output_dir`` (a `TeacherCache`).

    Args:
        teacher: the teacher (a model, local path or hub id), run in eval mode under ``torch.no_grad()``; as a
            path it is loaded with ``args.teacher_dtype`` / ``args.teacher_model_init_kwargs``.
        train_dataset / eval_dataset: `datasets.Dataset` s exactly as they will be given to `DistillationTrainer`
            (same rows, order and columns: the trainer matches them by content).
        args: the run's `DistillationConfig` (task, teacher dtype, embedding pooling, ranking lengths, device);
            default: a default config with ``task``.
        task: overrides ``args.task`` (``"auto"`` detects it from the teacher; ranking must be named).
        tokenizer / data_collator: as given to the trainer (the same collator must be used by both).
        top_k: for logits (language models, classifiers): keep the k largest logits of each position plus the
            remaining probability mass (see `losses.topk_divergence`); None keeps the full logits.
        dtype: storage dtype of the float signals, ``float32``, ``float16`` or ``bfloat16``; tail masses are
            always float32.
        hidden_layers: also store these hidden states (0 = embeddings output) at every attended token.
        in_batch_negatives: for a bi-encoder ranking teacher, also store its query and candidate embeddings, so that
            objectives with ``in_batch_negatives`` (every query against every passage of the batch) can train from
            the cache: the in-batch scores are computed from them for whatever batches the trainer draws.
        batch_size: teacher batch size.
        shard_rows: rows per resumable shard; an interrupted run restarts from its last finished shard.
        overwrite: replace a cache with another fingerprint in ``output_dir`` (otherwise `StaleCacheError`).
        progress: show a progress bar.

    Returns the opened cache. A complete cache with the same fingerprint is reused as is.
    """
    from datasets import Dataset, concatenate_datasets, load_from_disk
    from tqdm.auto import tqdm

    from .config import DistillationConfig
    from .teacher import freeze_teacher, load_teacher

    if dtype not in CACHE_DTYPES:
        raise ValueError(f"`dtype` must be one of {', '.join(CACHE_DTYPES)}, got {dtype!r}.")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"`top_k` must be a positive integer or None (full logits), got {top_k!r}.")
    for name, value in (("batch_size", batch_size), ("shard_rows", shard_rows)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    datasets_in = {"train": train_dataset, "eval": eval_dataset}
    for split, dataset in datasets_in.items():
        if dataset is not None and not hasattr(dataset, "column_names"):
            raise TypeError(f"`{split}_dataset` must be a `datasets.Dataset` (the cache matches rows by content), got "
                            f"{type(dataset).__name__}.")
        if dataset is not None and len(dataset) == 0:
            raise ValueError(f"`{split}_dataset` is empty: there is nothing to cache.")
    if args is None:
        args = DistillationConfig(output_dir=str(output_dir), report_to="none", task=task or "auto")
    task_name = task if isinstance(task, str) else args.task
    if isinstance(task, TaskAdapter):
        adapter = task
    elif isinstance(teacher, str):
        from transformers import AutoConfig

        architecture = (getattr(AutoConfig.from_pretrained(teacher), "architectures", None) or [""])[0]
        adapter = resolve_task(task_name, architecture=architecture)
    else:
        adapter = resolve_task(task_name, model=teacher)
    if adapter.cached_signal is None:
        raise ValueError(f"The {adapter.name!r} task has no cacheable teacher signal.")
    if top_k is not None and adapter.cached_signal != "logits":
        raise ValueError(f"`top_k` applies to logits (language models, classifiers); the {adapter.name!r} task caches "
                         f"{adapter.cached_signal}. Leave top_k unset.")
    if not isinstance(in_batch_negatives, bool):
        raise ValueError(f"`in_batch_negatives` must be true or false, got {in_batch_negatives!r}.")
    if in_batch_negatives and adapter.name != "ranking":
        raise ValueError(f"`in_batch_negatives` keeps a ranking teacher's embeddings; the {adapter.name!r} task has "
                         "no in-batch scores. Leave it unset.")
    if hidden_layers and adapter.raw_rows:
        raise ValueError(f"`hidden_layers` cannot be cached for the {adapter.name!r} task (its batches hold several "
                         "texts per row).")

    model = freeze_teacher(load_teacher(teacher, adapter, args.teacher_dtype, args.teacher_model_init_kwargs))
    model.to(args.device)
    adapter.prepare(model, model, args)
    if in_batch_negatives and adapter.kind_of(model) != "bi-encoder":
        raise ValueError("`in_batch_negatives` needs a bi-encoder teacher (one embedding per text, so every query can "
                         "be scored against every passage of a batch); this teacher is a cross-encoder, whose "
                         "scores exist only for the pairs it read. Leave it unset and train without in-batch "
                         "negatives, or use a live teacher.")
    collator = data_collator or _default_collator(adapter, tokenizer, args, model)
    _check_deterministic(collator)
    layers = sorted(set(hidden_layers or []))
    depth = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if layers and depth is not None and not all(0 <= layer <= depth for layer in layers):
        raise ValueError(f"`hidden_layers` must be in [0, {depth}] (0 = the embeddings, {depth} = the last layer) for "
                         f"this teacher, got {hidden_layers!r}.")

    data = {s: d for s, d in datasets_in.items() if d is not None}
    splits = {s: {"rows": len(d), "data": dataset_fingerprint(d)} for s, d in data.items()}
    components = {
        "version": CACHE_VERSION,
        "task_settings": adapter.cache_settings(model),
        "teacher": model_fingerprint(model),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "signal": adapter.cached_signal,
        "top_k": top_k,
        "dtype": dtype,
        "hidden_layers": layers,
        "splits": splits,
    }
    if in_batch_negatives:  # only when set, so caches built before this option keep their fingerprint
        components["in_batch_negatives"] = True
    fingerprint = _sha(components)
    out = Path(output_dir)
    meta_file = out / METADATA_FILE
    if meta_file.is_file():
        existing = json.loads(meta_file.read_text())
        if existing.get("fingerprint") == fingerprint:
            logger.info(f"Teacher cache {out} is up to date; reusing it.")
            return TeacherCache(out)
        if not overwrite:
            changed = [k for k in components if existing.get(k) != components[k]]
            raise StaleCacheError(
                f"{str(out)!r} holds a teacher cache built for something else (different: {', '.join(changed)}). "
                "Choose another folder, or pass overwrite=True (recipes: --set teacher.cache.overwrite=true) to "
                "rebuild it."
            )
        for name in (METADATA_FILE, *_SPLITS):
            path = out / name
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    elif out.exists() and any(p.name != _PARTIAL for p in out.iterdir()):
        raise ValueError(f"`output_dir`: {str(out)!r} exists and holds other files; a teacher cache needs an empty or "
                         "new folder.")

    partial = out / _PARTIAL
    progress_file = partial / "progress.json"
    state = json.loads(progress_file.read_text()) if progress_file.is_file() else {}
    if state.get("fingerprint") != fingerprint:
        if state:
            logger.warning(f"Discarding an unfinished teacher cache in {partial}: it was for other settings.")
        shutil.rmtree(partial, ignore_errors=True)
        state = {"fingerprint": fingerprint, "done": {}}
    partial.mkdir(parents=True, exist_ok=True)
    _atomic_json(progress_file, state)

    requires = frozenset({adapter.cached_signal} | ({"hidden_states"} if layers else set())
                         | ({"candidate_embeddings"} if in_batch_negatives else set()))
    started = time.perf_counter()
    for split, dataset in data.items():
        dataset = _model_columns(dataset, model, adapter)
        shards = math.ceil(len(dataset) / shard_rows)
        done = state["done"].get(split, 0)
        if done:
            logger.info(f"Resuming the {split} teacher cache at shard {done + 1} of {shards}.")
        bar = tqdm(total=len(dataset), initial=min(done * shard_rows, len(dataset)), disable=not progress,
                   desc=f"Caching teacher signals ({split})", unit="rows")
        for shard in range(done, shards):
            rows = dataset.select(range(shard * shard_rows, min((shard + 1) * shard_rows, len(dataset))))
            table, widths = _run_shard(model, adapter, rows, collator, requires, top_k, dtype, layers, batch_size,
                                       args.device, bar)
            _save_dataset(Dataset(table), partial / split / f"shard_{shard:05d}")
            state["done"][split] = shard + 1
            state["widths"] = {**state.get("widths", {}), **widths}
            _atomic_json(progress_file, state)
        bar.close()

    for split in data:
        shards = [load_from_disk(str(p)) for p in sorted((partial / split).glob("shard_*")) if p.is_dir()]
        _save_dataset(concatenate_datasets(shards), out / split)
    metadata = {**components, "fingerprint": fingerprint, "widths": state.get("widths", {}),
                "teacher_name": getattr(model, "name_or_path", None),
                "teacher_dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
                "seconds": round(time.perf_counter() - started, 3)}
    _atomic_json(meta_file, metadata)
    shutil.rmtree(partial, ignore_errors=True)
    cache = TeacherCache(out)
    cache.built_now = True
    return cache


def _check_storable(values: torch.Tensor, dtype: str, what: str, start: int, batch_size: int) -> None:
    """Refuse to store NaN/Inf teacher signals, or values the storage dtype cannot hold (float16 tops out at 65504),
    so a cache never holds a signal that would break training later."""
    where = f"rows {start} to {start + batch_size - 1} of the shard being cached"
    if not torch.isfinite(values).all():
        raise ValueError(f"The teacher's {what} are not finite (NaN/Inf) for {where}; nothing bad is stored. Check the "
                         "teacher (a float16 teacher may overflow: use teacher_dtype='bfloat16' or 'float32').")
    largest = float(values.abs().max()) if values.numel() else 0.0
    if dtype == "float16" and largest > torch.finfo(torch.float16).max:
        raise ValueError(f"The teacher's {what} reach {largest:.4g} for {where}, beyond float16's range (65504): "
                         "stored as float16 they would become Inf. Cache with dtype='bfloat16' or 'float32'.")


@torch.no_grad()
def _run_shard(model: nn.Module, task: TaskAdapter, rows: Any, collator: Any, requires: frozenset[str],
               top_k: int | None, dtype: str, layers: list[int], batch_size: int, device: torch.device,
               bar: Any) -> tuple[Any, dict[str, int]]:
    """The teacher's signals for the rows of one shard, as an Arrow table (one row per example), and the width of
    each per-item column (plus ``vocab``, the teacher's logit width)."""
    shard = _Rows.empty()
    for start in range(0, len(rows), batch_size):
        features = [rows[i] for i in range(start, min(start + batch_size, len(rows)))]
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in collator(features).items()}
        signals = task.run(model, batch, requires)
        per_row = signals.mask.reshape(signals.mask.shape[0], -1)
        counts = per_row.sum(1)
        shard.add("num_items", [c.cpu().numpy().reshape(1) for c in counts])
        value = _per_item(getattr(signals, task.cached_signal), signals.mask)
        _check_storable(value, dtype, f"{task.cached_signal}", start, batch_size)
        if task.cached_signal == "logits":
            shard.widths["vocab"] = int(value.shape[-1])
        if top_k is not None:
            values, indices, tail = losses.topk_from_logits(value, min(top_k, value.shape[-1]))
            columns = {"topk_logits": (values, dtype), "topk_indices": (indices.to(torch.int32), None),
                       "tail_mass": (tail.unsqueeze(-1), "float32")}
        else:
            columns = {task.cached_signal: (value, dtype)}
        for column, (tensor, store) in columns.items():
            kept = [tensor[i][per_row[i]] for i in range(per_row.shape[0])]
            shard.add(column, [_storable(t, store) if store else t.cpu().numpy() for t in kept])
        if "candidate_embeddings" in requires:  # a bi-encoder ranker's: each row's query [1, D], candidates [C, D]
            for column, tensor in (("query_embeddings", signals.embeddings.unsqueeze(1)),
                                   ("candidate_embeddings", signals.candidate_embeddings)):
                _check_storable(tensor, dtype, column.replace("_", " "), start, batch_size)
                shard.add(column, [_storable(t, dtype) for t in tensor])
        if layers:
            attention = batch.get("attention_mask")
            tokens = attention.bool() if attention is not None else torch.ones_like(batch["input_ids"]).bool()
            shard.add("num_tokens", [t.sum().cpu().numpy().reshape(1) for t in tokens])
            for layer in layers:
                _check_storable(signals.hidden_states[layer][tokens], dtype, f"hidden_states[{layer}]", start,
                                batch_size)
                per_text = zip(signals.hidden_states[layer], tokens, strict=True)
                shard.add(f"hidden_states.{layer}", [_storable(h[t], dtype) for h, t in per_text])
        bar.update(len(features))
    return shard.table(), shard.widths
