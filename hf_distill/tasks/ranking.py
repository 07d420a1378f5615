"""Rankers: each query's candidate passages scored by a bi-encoder or a cross-encoder, one item per query.

Data: one row per query with the text columns ``query``, ``positive`` and the negatives as a list column
``negatives`` or as ``negative`` / ``negative_1``, ``negative_2``, ... (sentence-transformers' triplet and n-tuple
formats). `RankingCollator` tokenises the rows on the fly into what the models need:

* ``query_*`` ``[B, Lq]`` and ``doc_*`` ``[B·C, Ld]`` for a bi-encoder (queries and passages encoded apart),
* ``pair_*`` ``[B·C, Lp]`` for a cross-encoder (each query joined with each of its candidates),
* ``labels`` ``[B]``: the index of the positive among the ``C = 1 + n`` candidates, always 0,
* ``teacher_scores`` ``[B, C]`` when a column of precomputed teacher scores is used,
* ``teacher_query_*``, ``teacher_doc_*``, ``teacher_pair_*`` when the teacher has its own tokenizer (a teacher of
  another architecture: scores need no shared vocabulary), tokenised by its `RankingCollator` ``teacher``.

Candidates are ordered positive first, then the negatives in their given order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

from ..signals import Signals
from .base import TASKS, base_model_of, unwrap_model
from .classification import ClassificationTask
from .embedding import EmbeddingTask, Pooling, pool
from .tokens import TEACHER_PREFIX, TEXT_KEYS

__all__ = ["RankingTask", "RankingCollator", "RANKING_SIMILARITIES", "negatives_of"]

RANKING_SIMILARITIES = ("auto", "dot", "cosine")
BI_ENCODER, CROSS_ENCODER = "bi-encoder", "cross-encoder"


def negatives_of(row: dict[str, Any]) -> list[str]:
    """A row's negative passages, from ``negatives`` (a list), ``negative``, or ``negative_1``, ``negative_2``, ..."""
    if "negatives" in row:
        negatives = row["negatives"]
        if isinstance(negatives, str) or not isinstance(negatives, (list, tuple)):
            raise ValueError(f"The `negatives` column must hold a list of passages per row, got {negatives!r}.")
        return list(negatives)
    if "negative" in row:
        return [row["negative"]]
    numbered = []
    while f"negative_{len(numbered) + 1}" in row:
        numbered.append(row[f"negative_{len(numbered) + 1}"])
    return numbered


@dataclass
class RankingCollator:
    """Tokenise rows of ``query`` / ``positive`` / negatives into bi-encoder and/or cross-encoder inputs.

    Args:
        tokenizer: the student's tokenizer (and the teacher's, unless ``teacher`` is given).
        query_max_length: tokens per query (bi-encoder).
        max_length: tokens per passage (bi-encoder).
        pair_max_length: tokens per query+passage pair (cross-encoder); ``None`` = ``query_max_length +
            max_length``, as much of each text as a bi-encoder reads (the longer of the two is cut first).
        num_negatives: use the first ``n`` negatives of each row (rows with fewer are an error); ``None`` uses
            them all, and then every row of a batch must have the same number.
        teacher_scores_column: a column of precomputed teacher scores, one per candidate (positive first), passed
            on as ``teacher_scores`` (rows without the column, e.g. evaluation data, are collated without).
        bi_encoder / cross_encoder: which inputs to build (the trainer sets these from its two models).
        teacher: a second `RankingCollator` with the teacher's own tokenizer (and its kind and lengths), for a
            teacher that does not share the student's vocabulary; its inputs are added as ``teacher_<key>``.
    """

    tokenizer: Any
    query_max_length: int = 64
    max_length: int = 256
    pair_max_length: int | None = None
    num_negatives: int | None = None
    teacher_scores_column: str | None = None
    bi_encoder: bool = True
    cross_encoder: bool = True
    teacher: RankingCollator | None = None

    def _candidates(self, rows: list[dict[str, Any]]) -> list[list[str]]:
        lists = []
        for i, row in enumerate(rows):
            for column in ("query", "positive"):
                if column not in row:
                    raise ValueError(
                        f"Ranking row {i} has no `{column}` column (it has {sorted(row)}). Rows need `query`, "
                        "`positive` and negatives (`negatives` list, `negative`, or `negative_1`, `negative_2`, ...)."
                    )
            negatives = negatives_of(row)
            if self.num_negatives is not None:
                if len(negatives) < self.num_negatives:
                    raise ValueError(f"Ranking row {i} has {len(negatives)} negatives but `num_negatives` is "
                                     f"{self.num_negatives}; lower it or give every row that many.")
                negatives = negatives[: self.num_negatives]
            if not negatives:
                raise ValueError(f"Ranking row {i} has no negatives; each query needs at least one negative "
                                 "passage (`negatives`, `negative` or `negative_1`).")
            lists.append([row["positive"], *negatives])
        counts = {len(c) for c in lists}
        if len(counts) > 1:
            raise ValueError(
                f"The rows of one batch have different numbers of negatives ({sorted(c - 1 for c in counts)}). Set "
                "`ranking_num_negatives` (DistillationConfig) or `num_negatives` (RankingCollator) to use the first "
                "n of each row."
            )
        return lists

    def _encode(self, prefix: str, *texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer(*texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return {f"{prefix}_{k}": v for k, v in encoded.items() if k in TEXT_KEYS}

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        candidates = self._candidates(rows)
        queries = [row["query"] for row in rows]
        flat = [text for texts in candidates for text in texts]
        batch: dict[str, torch.Tensor] = {"labels": torch.zeros(len(rows), dtype=torch.long)}
        if self.bi_encoder:
            batch.update(self._encode("query", queries, max_length=self.query_max_length))
            batch.update(self._encode("doc", flat, max_length=self.max_length))
        if self.cross_encoder:
            repeated = [query for query, texts in zip(queries, candidates, strict=True) for _ in texts]
            pair_max_length = self.pair_max_length or self.query_max_length + self.max_length
            batch.update(self._encode("pair", repeated, flat, max_length=pair_max_length))
        # Evaluation data may lack the column: then the teacher's metrics are simply not reported.
        if self.teacher_scores_column is not None and self.teacher_scores_column in rows[0]:
            scores = [row.get(self.teacher_scores_column) for row in rows]
            width = len(candidates[0])
            for i, value in enumerate(scores):
                if value is None or len(value) < width:
                    raise ValueError(
                        f"Ranking row {i}: `{self.teacher_scores_column}` must hold one teacher score per candidate "
                        f"(positive first, then the negatives: {width}), got {value!r}."
                    )
            batch["teacher_scores"] = torch.tensor([list(v)[:width] for v in scores], dtype=torch.float32)
        if self.teacher is not None:
            own = self.teacher(rows)  # its own scores column is None: it collates text only
            batch.update({f"{TEACHER_PREFIX}{key}": value for key, value in own.items() if key != "labels"})
        return batch


_PREFIXES = ("query_", "doc_", "pair_")


def _sub_batch(batch: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {key: batch[f"{prefix}_{key}"] for key in TEXT_KEYS if f"{prefix}_{key}" in batch}


@TASKS.register
class RankingTask(EmbeddingTask):
    """Ranking distillation: ``Signals.scores`` ``[B, C]`` for each query's ``C`` candidates (positive first).

    Each model (student or teacher) is one of two kinds:

    * **bi-encoder** — a base `AutoModel`: query and passages pooled apart (pooling as in the embedding task) and
      scored by ``dot`` product or ``cosine`` (``ranking_similarity``; ``auto`` = cosine when the pooling
      normalises, else dot). Only bi-encoders give in-batch scores (``batch_scores``).
    * **cross-encoder** — an `AutoModelForSequenceClassification` with one output: the logit of each
      (query, passage) pair is its score.

    The teacher may also be a column of precomputed scores (``teacher_scores_column``). Items are queries.
    Evaluation ranks each query's candidates and reports MRR@10 and nDCG@10 of the student and the teacher
    (ties counted against the positive, see `embedding_metrics.rank_candidates`).
    """

    name = "ranking"

    def __init__(self, pooling: Pooling | None = None) -> None:
        super().__init__(pooling)
        self._similarity: dict[int, str] = {}  # explicit `ranking_similarity` per model; else the `auto` rule

    @classmethod
    def detect(cls, model: nn.Module) -> RankingTask | None:
        return cls.from_architecture(type(base_model_of(model)).__name__, getattr(base_model_of(model), "config", None))

    @classmethod
    def from_architecture(cls, architecture: str, config: Any = None) -> RankingTask | None:
        if EmbeddingTask.from_architecture(architecture) is not None:
            return cls()
        if ClassificationTask.from_architecture(architecture) is not None:
            if config is not None and getattr(config, "num_labels", 1) != 1:
                return None
            return cls()
        return None

    raw_rows = True
    accepts_score_columns = True

    #: `task="auto"` never picks ranking: a base model is an embedding model and a classifier a classifier until
    #: the user says otherwise.
    auto_detect = False

    def load_model(self, name_or_path: str, **kwargs: Any) -> nn.Module:
        architectures = getattr(AutoConfig.from_pretrained(name_or_path), "architectures", None) or [""]
        if ClassificationTask.from_architecture(architectures[0]) is not None:
            return AutoModelForSequenceClassification.from_pretrained(name_or_path, **kwargs)
        return AutoModel.from_pretrained(name_or_path, **kwargs)

    def kind_of(self, model: nn.Module) -> str:
        """``"cross-encoder"`` for a sequence classifier, else ``"bi-encoder"``."""
        architecture = type(unwrap_model(model)).__name__
        return CROSS_ENCODER if ClassificationTask.from_architecture(architecture) is not None else BI_ENCODER

    def similarity_of(self, model: nn.Module) -> str:
        """``"dot"`` or ``"cosine"``: as `ranking_similarity` says, or (``auto``) cosine when the pooling
        normalises, else dot."""
        return self._similarity.get(id(unwrap_model(model)), "cosine" if self.pooling_of(model).normalize else "dot")

    def prepare(self, student: nn.Module, teacher: nn.Module | None, args: Any) -> None:
        """Check each model's kind (a cross-encoder has exactly one output), then pool bi-encoders as in the
        embedding task and fix their similarity (``ranking_similarity``)."""
        models = [m for m in (student, teacher) if m is not None]
        for role, model in zip(("student", "teacher"), models, strict=False):
            if self.kind_of(model) == CROSS_ENCODER and base_model_of(model).config.num_labels != 1:
                raise ValueError(
                    f"The {role} is a sequence classifier with {base_model_of(model).config.num_labels} outputs; a "
                    "cross-encoder ranker needs exactly one (its relevance logit). Load it with num_labels=1."
                )
        super().prepare(student, teacher if teacher is not None else student, args)  # pooling of bi-encoders
        if args.ranking_similarity != "auto":
            for model in models:
                self._similarity[id(unwrap_model(model))] = args.ranking_similarity

    def logit_width(self, model: nn.Module) -> int | None:
        return None

    cached_signal = "scores"

    def cache_settings(self, teacher: nn.Module) -> dict[str, Any]:
        settings = {"task": self.name, "kind": self.kind_of(teacher)}
        if settings["kind"] == BI_ENCODER:
            pooling = self.pooling_of(teacher)
            settings.update(similarity=self.similarity_of(teacher), pooling=pooling.mode, normalize=pooling.normalize)
        return settings

    def default_collator(
        self, tokenizer: Any, args: Any, student: nn.Module, teacher: nn.Module | None, training: bool = True,
        teacher_tokenizer: Any = None,
    ) -> Any:
        """A `RankingCollator` building the inputs the two models need, with the config's lengths. Only training
        batches are cut to `ranking_num_negatives`: evaluation ranks every candidate of a row. With a
        ``teacher_tokenizer`` the teacher's inputs are tokenised apart, by a second collator (``teacher``)."""
        if tokenizer is None:
            raise ValueError("The ranking task tokenises rows on the fly: pass `processing_class=tokenizer` or "
                             "`data_collator=RankingCollator(tokenizer, ...)` to DistillationTrainer.")

        def collator(tokenizer: Any, models: list[nn.Module], scores_column: str | None) -> RankingCollator:
            kinds = {self.kind_of(m) for m in models}
            # Never longer than the shorter model's position table (a longer text would not fit it).
            positions = [getattr(base_model_of(m).config, "max_position_embeddings", None) for m in models]
            limit = min([p for p in positions if p] or [args.ranking_max_length])
            return RankingCollator(
                tokenizer,
                query_max_length=min(args.ranking_query_max_length, limit),
                max_length=min(args.ranking_max_length, limit),
                pair_max_length=min(args.ranking_pair_max_length
                                    or args.ranking_query_max_length + args.ranking_max_length, limit),
                num_negatives=args.ranking_num_negatives if training else None,
                teacher_scores_column=scores_column,
                bi_encoder=BI_ENCODER in kinds,
                cross_encoder=CROSS_ENCODER in kinds,
            )

        if teacher_tokenizer is None or teacher is None:
            return collator(tokenizer, [m for m in (student, teacher) if m is not None], args.teacher_scores_column)
        batches = collator(tokenizer, [student], args.teacher_scores_column)
        batches.teacher = collator(teacher_tokenizer, [teacher], None)
        return batches

    own_teacher_tokens = True
    token_free_signals = frozenset({"scores", "batch_scores", "embeddings"})

    def teacher_view(self, batch: dict[str, Any]) -> dict[str, Any]:
        """With ``teacher_<key>`` inputs (the teacher's own tokens), the batch with those in place of the student's
        text inputs; else the batch itself."""
        own = {key[len(TEACHER_PREFIX):]: value for key, value in batch.items()
               if key.startswith(TEACHER_PREFIX) and key[len(TEACHER_PREFIX):].startswith(_PREFIXES)}
        if not own:
            return batch
        rest = {key: value for key, value in batch.items() if not key.startswith((TEACHER_PREFIX, *_PREFIXES))}
        return {**rest, **own}

    def save_extras(self, output_dir: str, model: nn.Module, objectives: nn.Module) -> None:
        """A bi-encoder student is also written as a sentence-transformers folder (no projection)."""
        if self.kind_of(model) == BI_ENCODER:
            from ..embeddings import save_sentence_transformer_files

            save_sentence_transformer_files(output_dir, model, self.pooling_of(model), None)

    def latency_inputs(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        """The candidates of the batch: passages alone for a bi-encoder, query+passage pairs for a cross-encoder."""
        return _sub_batch(batch, "pair" if self.kind_of(model) == CROSS_ENCODER else "doc")

    def fit_cached(self, signals: Signals, batch: dict[str, Any]) -> Signals:
        """The cache holds every candidate of a row; a training batch may use only the first ones. A cache that
        kept a bi-encoder's embeddings (``in_batch_negatives``) also gives every query's score against every
        candidate of the batch (``batch_scores``), as the live teacher computes it."""
        inputs = _sub_batch(batch, "pair") or _sub_batch(batch, "doc")
        candidates = inputs["input_ids"].shape[0] // batch["labels"].shape[0]
        signals.scores = signals.scores[:, :candidates]
        if signals.candidate_embeddings is not None:
            kept = signals.candidate_embeddings[:, :candidates]
            signals.batch_scores = signals.embeddings @ kept.reshape(-1, kept.shape[-1]).T
            signals.candidate_embeddings = kept
        return signals

    def item_mask(self, batch: dict[str, Any]) -> torch.Tensor:
        labels = batch["labels"]
        return torch.ones(labels.shape[0], dtype=torch.bool, device=labels.device)

    def _pooled(self, model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        hidden = model(**inputs).last_hidden_state
        return pool(hidden, inputs.get("attention_mask"), self.pooling_of(model))

    def run(self, model: nn.Module, batch: dict[str, Any], requires: frozenset[str]) -> Signals:
        queries = batch["labels"].shape[0]
        if self.kind_of(model) == CROSS_ENCODER:
            pairs = _sub_batch(batch, "pair")
            if not pairs:
                raise ValueError("A cross-encoder needs `pair_input_ids`; build batches with RankingCollator("
                                 "cross_encoder=True) (the trainer's default collator does).")
            scores = model(**pairs).logits.float().view(queries, -1)
            batch_scores = query = candidates = None
        else:
            query_inputs, doc_inputs = _sub_batch(batch, "query"), _sub_batch(batch, "doc")
            if not query_inputs or not doc_inputs:
                raise ValueError("A bi-encoder needs `query_input_ids` and `doc_input_ids`; build batches with "
                                 "RankingCollator(bi_encoder=True) (the trainer's default collator does).")
            query = self._pooled(model, query_inputs)
            docs = self._pooled(model, doc_inputs)
            if self.similarity_of(model) == "cosine":
                query, docs = nn.functional.normalize(query, dim=-1), nn.functional.normalize(docs, dim=-1)
            candidates = docs.view(queries, -1, docs.shape[-1])
            scores = torch.einsum("bd,bcd->bc", query, candidates)
            batch_scores = query @ docs.T if "batch_scores" in requires else None
        kept = "candidate_embeddings" in requires  # what a cache keeps to give `batch_scores` back
        return Signals(scores=scores, batch_scores=batch_scores, embeddings=query if kept else None,
                       candidate_embeddings=candidates if kept else None, labels=batch["labels"],
                       mask=self.item_mask(batch))

    def eval_sums(self, student: Signals, teacher: Signals | None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        from ..embedding_metrics import mean_reciprocal_rank, rank_candidates, ranking_scores

        items = student.mask.sum()
        sums: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for prefix, signals in (("", student), ("teacher_", teacher)):
            if signals is None or signals.scores is None:
                continue
            scores = signals.scores[student.mask]
            ranked = rank_candidates(scores)
            relevant = [[0]] * len(ranked)
            mrr = mean_reciprocal_rank(ranked, relevant, k=10)
            ndcg = ranking_scores(ranked, relevant, k=10)["ndcg@10"]
            sums[f"{prefix}mrr@10"] = (torch.tensor(mrr * len(ranked), device=items.device), items)
            sums[f"{prefix}ndcg@10"] = (torch.tensor(ndcg * len(ranked), device=items.device), items)
        return sums
