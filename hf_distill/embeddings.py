"""Sentence encoders without a sentence-transformers dependency: load a model folder with its pooling, optional
normalisation and projection, encode texts; and write those as sentence-transformers module files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .sharding import runnable
from .tasks.embedding import Pooling, pool

__all__ = ["SentenceEncoder", "save_sentence_transformer_files"]

_IDENTITY = "torch.nn.modules.linear.Identity"


def save_sentence_transformer_files(
    output_dir: str | Path, model: nn.Module, pooling: Pooling, projection: nn.Linear | None = None
) -> None:
    """``modules.json`` (Transformer → Pooling → [Normalize] → [Dense]), ``sentence_bert_config.json``,
    ``1_Pooling/config.json`` and, with a projection, ``*_Dense/`` (identity activation, safetensors weights).

    The order matches how embeddings are computed in training: pooled, normalised if the pooling says so, then
    projected into the teacher's space."""
    out = Path(output_dir)
    width = int(model.config.hidden_size)
    transformer = {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}
    modules: list[dict[str, Any]] = [transformer]

    def add(kind: str, folder: str) -> Path:
        index = len(modules)
        modules.append({"idx": index, "name": str(index), "path": f"{index}_{folder}",
                        "type": f"sentence_transformers.models.{kind}"})
        path = out / f"{index}_{folder}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    pooling_dir = add("Pooling", "Pooling")
    (pooling_dir / "config.json").write_text(json.dumps({
        "word_embedding_dimension": width,
        "pooling_mode_cls_token": pooling.mode == "cls",
        "pooling_mode_mean_tokens": pooling.mode == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": pooling.mode == "last",
        "include_prompt": True,
    }, indent=2))
    if pooling.normalize:
        add("Normalize", "Normalize")
    if projection is not None:
        dense_dir = add("Dense", "Dense")
        (dense_dir / "config.json").write_text(json.dumps({
            "in_features": projection.in_features, "out_features": projection.out_features,
            "bias": projection.bias is not None, "activation_function": _IDENTITY,
        }, indent=2))
        tensors = {"linear.weight": projection.weight.detach().cpu().contiguous()}
        if projection.bias is not None:
            tensors["linear.bias"] = projection.bias.detach().cpu().contiguous()
        save_file(tensors, str(dense_dir / "model.safetensors"))
    max_positions = getattr(model.config, "max_position_embeddings", 512) or 512
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": min(512, max_positions),
                                                               "do_lower_case": False}))
    (out / "modules.json").write_text(json.dumps(modules, indent=2))


class SentenceEncoder(nn.Module):
    """A transformer with pooling, optional normalisation and optional projection, loaded from a
    sentence-transformers-style folder (e.g. all-MiniLM-L6-v2 or a student written by hf-distill)."""

    def __init__(self, model: nn.Module, tokenizer: Any, pooling: Pooling, projection: nn.Linear | None = None,
                 max_length: int = 256) -> None:
        super().__init__()
        self.model, self.tokenizer, self.pooling, self.projection = model, tokenizer, pooling, projection
        # never beyond the model's learned position table (a longer text would not fit it)
        positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        self.max_length = min(max_length, positions) if isinstance(positions, int) and positions > 0 else max_length

    @classmethod
    def from_pretrained(cls, folder: str | Path, max_length: int = 256) -> SentenceEncoder:
        from transformers import AutoModel, AutoTokenizer

        folder = Path(folder)
        model = AutoModel.from_pretrained(folder)
        projection = None
        modules_file = folder / "modules.json"
        modules = json.loads(modules_file.read_text()) if modules_file.is_file() else []
        for module in modules:
            if module["type"].endswith("Dense"):
                config = json.loads((folder / module["path"] / "config.json").read_text())
                if config.get("activation_function", _IDENTITY) != _IDENTITY:
                    raise ValueError(f"{folder}: only Dense modules with an identity activation are supported.")
                projection = nn.Linear(config["in_features"], config["out_features"], bias=config.get("bias", True))
                state = load_file(str(folder / module["path"] / "model.safetensors"))
                projection.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
        return cls(model, AutoTokenizer.from_pretrained(folder), Pooling.from_folder(folder), projection, max_length)

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """``[N, D]`` float32 embeddings (on the CPU), computed in eval mode."""
        self.eval()
        device = next(self.model.parameters()).device
        chunks = []
        with runnable(self.model):  # a ZeRO-3-partitioned model outside its engine: gathered for these passes
            for start in range(0, len(texts), batch_size):
                batch = self.tokenizer(texts[start : start + batch_size], padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt").to(device)
                hidden = self.model(**batch).last_hidden_state
                embedding = pool(hidden, batch["attention_mask"], self.pooling)
                if self.projection is not None:
                    embedding = self.projection(embedding)
                chunks.append(embedding.float().cpu())
        return torch.cat(chunks) if chunks else torch.empty(0)


def encoders_from_trainer(trainer: Any, max_length: int = 256) -> tuple[SentenceEncoder, SentenceEncoder]:
    """The trainer's student (with its projection, if an objective learned one) and teacher as encoders."""
    task = trainer.task
    student = trainer.accelerator.unwrap_model(trainer.model)
    projection = next((item.objective.projection for item in trainer.objectives
                       if getattr(item.objective, "projection", None) is not None), None)
    tokenizer = trainer.processing_class
    teacher_tokenizer = getattr(trainer, "teacher_processing_class", None) or tokenizer  # its own, if it has one
    return (
        SentenceEncoder(student, tokenizer, task.pooling_of(student), projection, max_length),
        SentenceEncoder(trainer.teacher_model, teacher_tokenizer, task.pooling_of(trainer.teacher_model), None,
                        max_length),
    )


def retrieval_evaluation(
    student: SentenceEncoder, teacher: SentenceEncoder, split: str = "test", max_queries: int | None = None,
    k: int = 10, memo: dict[Any, Any] | None = None,
) -> dict[str, float]:
    """Retrieval on the bundled corpus (`embedding_metrics.retrieval_task`) in three modes: ``teacher`` (teacher
    queries, teacher index), ``student`` (student queries, student index) and ``aligned`` (student queries against
    the teacher's index — what a service gets when it swaps in the student without re-indexing). Keys like
    ``ndcg@10_aligned``; the aligned mode is skipped when the widths differ (no projection).

    ``memo``: a dict kept by the caller across evaluations with the same *frozen* teacher (before and after
    training): the teacher's query and index embeddings are computed once and reused from it."""
    from .embedding_metrics import retrieval_scores, retrieval_task

    queries, docs, relevant = retrieval_task(split, max_queries=max_queries)
    key = ("teacher", split, max_queries)
    if memo is not None and key in memo:
        teacher_queries, teacher_docs = memo[key]
    else:
        teacher_queries, teacher_docs = teacher.encode(queries), teacher.encode(docs)
        if memo is not None:
            memo[key] = (teacher_queries, teacher_docs)
    student_queries, student_docs = student.encode(queries), student.encode(docs)
    modes = {"teacher": (teacher_queries, teacher_docs), "student": (student_queries, student_docs),
             "aligned": (student_queries, teacher_docs)}
    results: dict[str, float] = {}
    for mode, (query_embeddings, doc_embeddings) in modes.items():
        if query_embeddings.shape[1] != doc_embeddings.shape[1]:
            continue
        for metric, value in retrieval_scores(query_embeddings, doc_embeddings, relevant, k=k).items():
            results[f"{metric}_{mode}"] = float(value)
    return results
