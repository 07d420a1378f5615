"""Running a recipe: data → teacher (optionally fine-tuned) → student → distillation → saved outputs and report.

Everything that can be checked without a model — the recipe, the data files and columns, the output directory —
is checked first, so a bad run fails before any weights are loaded and without writing anything.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from transformers.utils import logging

from .checks import remote_code_guard
from .recipes import Recipe, RecipeError, build_config, build_peft_config, resolve_model_reference, teacher_dir
from .sharding import accelerator_shards_parameters, loaded_whole
from .sharding import strategy as sharding_strategy

logger = logging.get_logger(__name__)

__all__ = ["load_data", "check_output_dir", "train_recipe", "cache_recipe", "evaluate_output_dir", "push_output_dir",
           "RECIPE_FILE"]

RECIPE_FILE = "recipe.yaml"


_TRUST_FIX = "set `teacher.init_kwargs.trust_remote_code: true` in the recipe (it is used for the student too)"


def _trusts_remote_code(recipe: Recipe) -> bool:
    """Only an explicit ``teacher.init_kwargs.trust_remote_code: true`` lets a model repository's code run."""
    return (recipe.teacher.get("init_kwargs") or {}).get("trust_remote_code") is True


def _resolve_task(recipe: Recipe) -> str:
    task = recipe["task"] or "auto"
    if task != "auto":
        return task
    from transformers import AutoConfig

    from .tasks import TASKS

    teacher = recipe.teacher  # the primary teacher (the first of a list) decides
    if "config" in teacher:
        raise RecipeError([f"`task`: a teacher built from `{recipe.teacher_key(0, 'config')}` needs an explicit "
                           "`task:`."])
    derived = _teacher_from_student(teacher)
    if derived and "model" not in recipe["student"]:
        raise RecipeError(["`task`: a teacher made from a `student.config` needs an explicit `task:`."])
    model = recipe["student"]["model"] if derived else teacher["model"]
    reference = resolve_model_reference(model, recipe)
    with remote_code_guard(reference, _TRUST_FIX):
        config = AutoConfig.from_pretrained(_config_source(reference), trust_remote_code=_trusts_remote_code(recipe))
    architecture = (getattr(config, "architectures", None) or [""])[0]
    for name in TASKS:
        if TASKS.get(name).auto_detect and TASKS.get(name).from_architecture(architecture) is not None:
            return name
    raise RecipeError([f"`task`: cannot detect the task from the teacher's architecture {architecture!r}; set "
                       f"`task:` to one of {', '.join(TASKS.names())}."])


def _teacher_from_student(spec: dict[str, Any]) -> bool:
    """Whether a teacher mapping makes the teacher out of the student (a moving average of it, or its own base model
    with the adapter off), so the student's model decides the task, tokenizer and architecture."""
    return "ema_of_student" in spec or spec.get("student_base") is True


def _adapter_base(reference: str) -> str | None:
    """For a PEFT adapter folder (adapter_config.json, no config.json): the base model it names; else None. An adapter
    folder that names no base model is an error saying how to fix it."""
    folder = Path(reference)
    if not (folder / "adapter_config.json").is_file() or (folder / "config.json").is_file():
        return None
    base = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise RecipeError([f"{reference!r} is a PEFT adapter whose adapter_config.json names no base model "
                           "(`base_model_name_or_path` is null). Set it to the base model's folder or hub id, or "
                           "give the merged model (`merge_and_unload().save_pretrained(...)`) instead."])
    return base


def _config_source(reference: str) -> str:
    """Where a model's config lives: the model itself, or the base model of a PEFT adapter folder."""
    return _adapter_base(reference) or reference


def _tokenizer_source(reference: str) -> str:
    """Where a model's tokenizer lives: the folder itself, or for an adapter folder without one, its base model."""
    base = _adapter_base(reference)
    return base if base and not (Path(reference) / "tokenizer_config.json").is_file() else reference


def _load_model(adapter: Any, reference: str, **kwargs: Any) -> Any:
    """A model with the task's auto class. A PEFT adapter folder is loaded onto its base model and merged (a teacher
    is frozen, so the merged model computes what base + adapter computes, without peft in every forward)."""
    base = _adapter_base(reference)
    if base is None:
        return adapter.load_model(reference, **kwargs)
    from peft import PeftModel

    return PeftModel.from_pretrained(adapter.load_model(base, **kwargs), reference).merge_and_unload()


def _is_main_process() -> bool:
    """Whether this is the main process of a launch (torchrun / accelerate / deepspeed set RANK; one process: yes).
    Only used to keep progress lines to one process before the run's config exists."""
    return int(os.environ.get("RANK", "0")) == 0


def _wait_for_everyone(config: Any) -> None:
    """A barrier across the launch's processes (nothing with one process)."""
    if config.world_size > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def load_data(recipe: Recipe, task: str) -> dict[str, Any]:
    """The raw train/eval datasets, with their text and label columns checked."""
    from datasets import Dataset, DatasetDict, load_dataset

    from .data import classification_dataset, corpus_pairs, load_corpus, ranking_dataset
    from .data.images import digits_dataset

    data = recipe["data"]
    columns = data.get("columns") or {}
    text_column, label_column = columns.get("text", "text"), columns.get("label", "label")
    needs_labels = task in ("classification", "vision")
    positive_column = columns.get("positive", "positive")
    positive_readers = _positive_readers(recipe)
    loaded: dict[str, Any] = {}
    problems: list[str] = []
    for split in ("train", "eval"):
        spec = data.get(split)
        if spec is None:
            continue
        where = f"data.{split}"
        if "bundled" in spec:
            part = spec.get("split", "train")
            if spec["bundled"] == "ranking":
                dataset = ranking_dataset(part)
            elif spec["bundled"] == "digits":
                dataset = digits_dataset(part)
            elif spec["bundled"] == "corpus_pairs":
                dataset = corpus_pairs(part)
            else:
                dataset = load_corpus(part) if spec["bundled"] == "corpus" else classification_dataset()[part]
        else:
            kwargs = dict(spec)
            if "data_files" in kwargs:
                kwargs["data_files"] = _resolve_files(kwargs["data_files"], recipe)
                if all(os.path.isfile(f) and os.path.getsize(f) == 0 for f in _flat_files(kwargs["data_files"])):
                    problems.append(f"`{where}`: the dataset is empty ({spec['data_files']!r} has no bytes).")
                    continue
            kwargs.setdefault("split", "train")
            try:
                dataset = load_dataset(**kwargs)
            except Exception as err:  # datasets raises many kinds; the key path is what the user needs
                problems.append(f"`{where}`: could not load the dataset ({type(err).__name__}: {err}).")
                continue
            if isinstance(dataset, DatasetDict):
                problems.append(f"`{where}`: got several splits {list(dataset)}; choose one with `split:`.")
                continue
        if not isinstance(dataset, Dataset) or len(dataset) == 0:
            problems.append(f"`{where}`: the dataset is empty.")
            continue
        if task == "ranking":
            problems.extend(_ranking_column_problems(dataset.column_names, split))
        elif task == "vision":
            if "pixel_values" not in dataset.column_names:
                problems.append(f"`data.{split}`: vision data needs a `pixel_values` column ([C, H, W] per image, "
                                f"as an image processor makes); its columns are {dataset.column_names}. Use "
                                "`bundled: digits`, or preprocess the images into `pixel_values` first.")
        elif text_column not in dataset.column_names:
            problems.append(
                f"`data.columns.text`: the {split} data has no column {text_column!r}; its columns are "
                f"{dataset.column_names}. Set data.columns.text to one of them."
            )
        if split == "train" and positive_readers and positive_column not in dataset.column_names:
            problems.append(
                f"`data.columns.positive`: objective(s) {positive_readers} need a relevant text per training row, but "
                f"the train data has no column {positive_column!r}; its columns are {dataset.column_names}. Set "
                "data.columns.positive to the column that holds it, or use `bundled: corpus_pairs`."
            )
        if needs_labels and label_column not in dataset.column_names:
            problems.append(
                f"`data.columns.label`: {task} needs labels but the {split} data has no column "
                f"{label_column!r}; its columns are {dataset.column_names}."
            )
        limit = data.get(f"max_{split}_samples")
        loaded[split] = dataset.select(range(min(limit, len(dataset)))) if limit else dataset
    if problems:
        raise RecipeError(problems, str(recipe.source) if recipe.source else None)
    return loaded


def _positive_readers(recipe: Recipe) -> list[str]:
    """The recipe's objectives that read each row's positive text (the teacher's `positive_embeddings`)."""
    from .objectives import OBJECTIVES

    names = [spec if isinstance(spec, str) else spec.get("name")
             for spec in recipe["objectives"] or [] if isinstance(spec, (str, dict))]
    return [name for name in names
            if name in OBJECTIVES and "positive_embeddings" in (OBJECTIVES.get(name).teacher_requires or ())]


def _ranking_column_problems(columns: list[str], split: str) -> list[str]:
    problems = [f"`data.{split}`: ranking data needs a `{c}` column; its columns are {columns}." for c in
                ("query", "positive") if c not in columns]
    if not {"negatives", "negative", "negative_1"} & set(columns):
        problems.append(f"`data.{split}`: ranking data needs negatives, as a list column `negatives` or as "
                        f"`negative` / `negative_1`, `negative_2`, ...; its columns are {columns}.")
    return problems


def _resolve_files(files: Any, recipe: Recipe) -> Any:
    """``data_files`` (a path, a list, or a mapping split → path(s)) made relative to the recipe's folder."""
    if isinstance(files, str):
        return recipe.resolve_path(files)
    if isinstance(files, list):
        return [_resolve_files(f, recipe) for f in files]
    if isinstance(files, dict):
        return {k: _resolve_files(v, recipe) for k, v in files.items()}
    return files


def _flat_files(files: Any) -> list[str]:
    if isinstance(files, str):
        return [files]
    values = files.values() if isinstance(files, dict) else files
    return [f for item in values for f in _flat_files(item)]


def check_output_dir(recipe: Recipe) -> None:
    out = recipe.output_dir
    if out.exists() and not out.is_dir():
        raise RecipeError([f"`training.output_dir`: {str(out)!r} is a file, not a directory; choose another path."])
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not recipe.overwrite_output_dir:
        raise RecipeError(
            [f"`training.output_dir`: {str(out)!r} exists and is not empty. Choose another with --set "
             "training.output_dir=..., or allow reuse with --set training.overwrite_output_dir=true."]
        )


def _label_names(dataset: Any, column: str) -> list[str]:
    feature = dataset.features[column]
    if hasattr(feature, "names"):
        return list(feature.names)
    return [str(v) for v in sorted(set(dataset[column]))]


def _tokenize(datasets: dict[str, Any], tokenizer: Any, task: str, causal: bool, recipe: Recipe,
              teacher_tokenizer: Any = None) -> dict[str, Any]:
    """Classification: truncated texts with labels. Causal LM: the texts joined by EOS and cut into blocks of
    ``max_length`` tokens (labels = inputs; the model shifts them). Masked LM: truncated texts (the collator masks).
    Embedding or classification with a ``teacher_tokenizer`` (a teacher of another vocabulary): each text also as the
    teacher's tokens (``teacher_input_ids``, ...), cut to the same ``max_length``. Embedding data with a positive
    column (``data.columns.positive``, default ``positive``) and `aligned_contrastive` among the objectives: each
    row's positive tokenised too."""
    if task == "ranking":  # rows stay text: the ranking collator tokenises queries, passages and pairs per batch
        return dict(datasets)
    columns = recipe["data"].get("columns") or {}
    text_column, label_column = columns.get("text", "text"), columns.get("label", "label")
    if task == "vision":  # images arrive as `pixel_values`: nothing to tokenise
        return {split: _image_columns(dataset, label_column) for split, dataset in datasets.items()}
    max_length = recipe["data"].get("max_length", 128)
    separator = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id

    def blocks(batch: dict[str, list]) -> dict[str, list]:
        ids = tokenizer(batch[text_column], add_special_tokens=False)["input_ids"]
        stream = list(itertools.chain.from_iterable([*row, separator] for row in ids))
        rows = [stream[i : i + max_length] for i in range(0, len(stream) - max_length + 1, max_length)]
        return {"input_ids": rows, "labels": [list(r) for r in rows]}

    def truncate(batch: dict[str, list]) -> dict[str, Any]:
        return tokenizer(batch[text_column], truncation=True, max_length=max_length,
                         return_special_tokens_mask=task == "language")

    keep = {"input_ids", "attention_mask", "token_type_ids"}
    positive_column = columns.get("positive", "positive")
    if task == "embedding" and _positive_readers(recipe):
        from .tasks.embedding import HAS_POSITIVE, POSITIVE_COLUMNS, add_positive_tokens

        keep |= {*POSITIVE_COLUMNS, HAS_POSITIVE}
        datasets = {split: add_positive_tokens(dataset, tokenizer, positive_column, max_length)
                    if positive_column in dataset.column_names else dataset for split, dataset in datasets.items()}
    if teacher_tokenizer is not None:
        from .tasks.tokens import TEACHER_COLUMNS, add_teacher_tokens

        keep |= set(TEACHER_COLUMNS)
        datasets = {split: add_teacher_tokens(dataset, teacher_tokenizer, text_column, max_length)
                    for split, dataset in datasets.items()}
    if task == "classification":
        keep |= {"label"}
    elif task == "language":
        keep = {"input_ids", "labels"} if causal else keep | {"special_tokens_mask"}
    out = {}
    for split, dataset in datasets.items():
        if task == "language" and causal:
            tokenized = dataset.map(blocks, batched=True, remove_columns=dataset.column_names)
        else:
            tokenized = dataset.map(truncate, batched=True)
        if task == "classification" and label_column != "label":
            tokenized = tokenized.rename_column(label_column, "label")
        out[split] = tokenized.remove_columns([c for c in tokenized.column_names if c not in keep])
    return out


def _image_columns(dataset: Any, label_column: str) -> Any:
    """Vision rows: `pixel_values` and `label` only, as torch tensors (the default collator stacks them)."""
    if label_column != "label":
        dataset = dataset.rename_column(label_column, "label")
    dataset = dataset.remove_columns([c for c in dataset.column_names if c not in ("pixel_values", "label")])
    return dataset.with_format("torch")


def _image_processor(recipe: Recipe, teacher_ref: str | None) -> Any:
    """Vision recipes have no tokenizer. The image processor saved with the student: the one that made the bundled
    digits' `pixel_values`, else the teacher's own (a folder or hub id that has one), else none."""
    from transformers import AutoImageProcessor

    from .data.images import digits_image_processor

    if (recipe["data"].get("train") or {}).get("bundled") == "digits":
        return digits_image_processor()
    if teacher_ref is None:
        return None
    try:
        return AutoImageProcessor.from_pretrained(teacher_ref)
    except (OSError, ValueError):
        return None


def _collator(task: str, causal: bool, tokenizer: Any, teacher_tokenizer: Any = None) -> Any:
    from transformers import DataCollatorForLanguageModeling, DataCollatorWithPadding, default_data_collator

    if task in ("ranking", "embedding") or teacher_tokenizer is not None:
        # the trainer builds the task's own (RankingCollator, PositivesCollator, TeacherTokensCollator)
        return None
    if task == "vision":
        return default_data_collator  # stacks pixel_values; `label` becomes `labels`
    if task == "classification":
        return DataCollatorWithPadding(tokenizer)
    if causal:
        return default_data_collator  # fixed-length blocks with labels
    return DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=0.15)


@dataclass
class _Run:
    """What a recipe loads before the student exists: config, tokenizer, data, task adapter and teacher."""

    task_name: str
    config: Any
    tokenizer: Any
    adapter: Any
    data: dict[str, Any]
    raw: dict[str, Any]
    collator: Any
    model_kwargs: dict[str, Any]
    teacher: Any
    #: Every teacher, in the recipe's order (one for a single teacher; ``teacher`` is the first).
    teachers: list[Any]
    #: A ranking, embedding or classification teacher's own tokenizer, when its vocabulary is not the run's
    #: (`tokenizer` is then the student's).
    teacher_tokenizer: Any = None


def _load_run(recipe: Recipe, echo: Any, training: bool = True) -> _Run:
    """Steps shared by `train` and `cache-teacher`: everything checkable without a model first (for training, the
    output directory too), then tokenizer, data and teacher (fine-tuned first, for training, if the recipe says so)."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, Trainer, TrainingArguments

    task_name = _resolve_task(recipe)
    raw = load_data(recipe, task_name)
    if training:
        check_output_dir(recipe)
    config = build_config(recipe, task=task_name)
    strategy = sharding_strategy(config)
    if training and strategy and any(spec.get("finetune") for spec in recipe.teachers):
        # The fine-tuning Trainer would set up the process's accelerate state without the strategy, and the
        # distillation that follows would then run without it.
        raise RecipeError([f"`teacher.finetune` cannot run in a {strategy} distillation: fine-tune the teacher in a "
                           "run of its own (a recipe whose student is the teacher, or `transformers.Trainer`), then "
                           "give its folder as `teacher.model`; or distil without "
                           f"{strategy} (DDP: `torchrun` alone)."])
    if training:  # every process has checked the empty output_dir before any of them writes into it
        _wait_for_everyone(config)

    teacher_spec = recipe.teacher
    # A moving average of the student, or the student's own base model: the student's model decides.
    derived = _teacher_from_student(teacher_spec)
    model_spec = recipe["student"] if derived else teacher_spec
    teacher_ref = resolve_model_reference(model_spec["model"], recipe) if "model" in model_spec else None
    tokenizer_ref = (resolve_model_reference(recipe["tokenizer"], recipe) if recipe["tokenizer"]
                     else _tokenizer_source(teacher_ref) if teacher_ref is not None else None)
    trust = _trusts_remote_code(recipe)
    if teacher_ref is not None:  # before the tokenizer: a refused config explains itself best
        with remote_code_guard(teacher_ref, _TRUST_FIX):
            teacher_config = AutoConfig.from_pretrained(_config_source(teacher_ref), trust_remote_code=trust)
    if task_name == "vision":  # no tokenizer: `tokenizer` holds the image processor (or None), saved with the student
        tokenizer = _image_processor(recipe, teacher_ref)
    else:
        with remote_code_guard(tokenizer_ref, _TRUST_FIX):
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_ref, trust_remote_code=trust)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    if teacher_ref is None:
        teacher_config = _config_from_spec(model_spec["config"], tokenizer)
    adapter = _adapter(task_name, (teacher_config.architectures or [""])[0])
    teacher_tokenizer = None if derived or recipe.ensemble else _own_tokenizer(adapter, teacher_ref, tokenizer, trust)
    if teacher_tokenizer is not None and task_name != "ranking":  # ranking rows stay text: both work there
        for key in ("cache", "finetune"):
            if recipe.teacher.get(key):
                raise RecipeError([f"`teacher.{key}`: the teacher ({teacher_ref}) has its own tokenizer, and a "
                                   f"{task_name} teacher of another tokenizer cannot be {key}d yet. Remove "
                                   f"`teacher.{key}` or use a teacher with the student's tokenizer."])
    causal = getattr(adapter, "causal", False)
    model_kwargs = _model_kwargs(recipe, task_name, raw["train"])
    data = _tokenize(raw, tokenizer, task_name, causal, recipe, teacher_tokenizer)
    collator = _collator(task_name, causal, tokenizer, teacher_tokenizer)
    teachers = []
    for k, spec in enumerate(recipe.teachers):
        torch.manual_seed(config.seed + k)  # teachers built from the same `config` still start differently
        # Under ZeRO-3 a teacher cached first (by one process) is loaded whole, not partitioned; the distillation's
        # engine partitions it afterwards (docs/distributed.md).
        with loaded_whole(config) if training and recipe.teacher.get("cache") else contextlib.nullcontext():
            if derived:
                teacher = None  # the trainer makes it: a copy of the student (moving average) or its base
            elif k == 0 and teacher_ref is not None:
                teacher = _load_model(adapter, teacher_ref, **model_kwargs)
            elif k == 0:
                teacher = adapter.model_from_config(_config_from_spec(teacher_spec["config"], tokenizer,
                                                                      **model_kwargs))
            else:
                teacher = _load_other_teacher(recipe, k, task_name, tokenizer, model_kwargs)
        if training and spec.get("finetune"):
            name = spec.get("model", f"from {recipe.teacher_key(k, 'config')}")
            echo(f"Training {'the teacher' if not recipe.ensemble else recipe.teacher_key(k)} ({name}) on the "
                 "training data first")
            folder = teacher_dir(recipe, k)
            if task_name == "ranking":
                finetune_ranking_teacher(teacher, data["train"], teacher_tokenizer or tokenizer, config, folder,
                                         spec["finetune"])
            else:
                args = TrainingArguments(**{"output_dir": str(folder), "report_to": "none",
                                            "save_strategy": "no", "seed": config.seed, **spec["finetune"]})
                # Under torchrun every process takes part (DDP, data split between them), so all of them end with
                # the same teacher weights; one process writes them.
                Trainer(model=teacher, args=args, train_dataset=data["train"], data_collator=collator).train()
                if args.should_save:
                    teacher.save_pretrained(folder)
                    if tokenizer is not None:
                        tokenizer.save_pretrained(folder)
        if recipe.ensemble:  # each listed teacher in its own dtype (the config's `teacher_dtype` is their common one)
            teacher = _cast_teacher(teacher, spec, adapter, config.device)
        teachers.append(teacher)
    return _Run(task_name, config, tokenizer, adapter, data, raw, collator, model_kwargs, teachers[0], teachers,
                teacher_tokenizer)


def _own_tokenizer(adapter: Any, reference: Any, tokenizer: Any, trust: bool) -> Any:
    """The tokenizer of the teacher at ``reference`` (a folder or hub id) when its vocabulary differs from the run's
    ``tokenizer`` and the task lets a teacher read its own tokens (`TaskAdapter.own_teacher_tokens`); else None."""
    from .teacher import tokenizer_beside

    if not isinstance(reference, str) or not adapter.own_teacher_tokens:
        return None
    # a teacher folder without a tokenizer reads the run's (the trainer checks the vocabulary size)
    own = tokenizer_beside(_tokenizer_source(reference), trust)
    return own if own is not None and own.get_vocab() != tokenizer.get_vocab() else None


# What a ranking teacher's fine-tuning takes from the run's config: how rows are cut, how models pool and score,
# and whether it runs on the CPU.
_RANKING_FIELDS = ("ranking_similarity", "ranking_query_max_length", "ranking_max_length", "ranking_pair_max_length",
                   "ranking_num_negatives", "embedding_pooling", "embedding_normalize", "use_cpu")


def finetune_ranking_teacher(teacher: Any, train: Any, tokenizer: Any, config: Any, folder: str | Path,
                             finetune: dict[str, Any]) -> None:
    """Train a ranking teacher on the labels before it teaches: the contrastive CE of `ranking_ce`, for a bi-encoder
    over its own candidates and every other passage of the batch (cosine × 20, sentence-transformers'
    MultipleNegativesRankingLoss), for a cross-encoder over each query's own candidates on its raw logits (scale 1).
    Rows are cut and scored as in the distillation run; ``finetune`` holds the TrainingArguments (steps, lr, ...).
    The trained teacher is written to ``folder`` (a bi-encoder also as a sentence-transformers folder)."""
    from .config import DistillationConfig
    from .tasks.ranking import BI_ENCODER, RankingTask
    from .trainer import DistillationTrainer

    bi_encoder = RankingTask().kind_of(teacher) == BI_ENCODER
    objective = ({"name": "ranking_ce", "in_batch_negatives": True} if bi_encoder
                 else {"name": "ranking_ce", "scale": 1.0})
    args = DistillationConfig(**{"output_dir": str(folder), "report_to": "none", "save_strategy": "no",
                                 "seed": config.seed, "task": "ranking", "objectives": [objective],
                                 **{name: getattr(config, name) for name in _RANKING_FIELDS}, **finetune})
    trainer = DistillationTrainer(model=teacher, teacher_model=None, args=args, train_dataset=train,
                                  processing_class=tokenizer)
    trainer.train()
    trainer.save_model(str(folder))  # one process writes; with the tokenizer and, for a bi-encoder, its pooling
    teacher.eval()


def _load_other_teacher(recipe: Recipe, k: int, task_name: str, tokenizer: Any, primary_kwargs: dict[str, Any]
                        ) -> Any:
    """Teacher ``k`` > 0 of a list, loaded (or built from its ``config``) with the task's auto class for its own
    architecture, its own ``init_kwargs`` and the labels the primary teacher got."""
    from transformers import AutoConfig

    spec = recipe.teachers[k]
    init_kwargs = dict(spec.get("init_kwargs") or {})
    labels = {key: primary_kwargs[key] for key in ("num_labels", "id2label", "label2id") if key in primary_kwargs}
    if "config" in spec:
        config = _config_from_spec(spec["config"], tokenizer, **init_kwargs, **labels)
        return _adapter(task_name, (config.architectures or [""])[0]).model_from_config(config)
    reference = resolve_model_reference(spec["model"], recipe)
    fix = f"set `{recipe.teacher_key(k, 'init_kwargs')}.trust_remote_code: true` in the recipe"
    with remote_code_guard(reference, fix):
        config = AutoConfig.from_pretrained(_config_source(reference),
                                            trust_remote_code=init_kwargs.get("trust_remote_code") is True)
        adapter = _adapter(task_name, (config.architectures or [""])[0])
        return _load_model(adapter, reference, **init_kwargs, **labels)


def _cast_teacher(teacher: Any, spec: dict[str, Any], adapter: Any, device: Any) -> Any:
    """A listed teacher in its own ``dtype`` (checked against the device first)."""
    from .checks import check_dtype_supported
    from .config import _DTYPE_ALIASES
    from .teacher import load_teacher

    dtype = _DTYPE_ALIASES.get(spec.get("dtype", "auto"), spec.get("dtype", "auto"))
    if teacher is None or dtype == "auto":
        return teacher
    check_dtype_supported(dtype, device)
    return load_teacher(teacher, adapter, dtype)


def _build_caches(recipe: Recipe, run: _Run, echo: Any) -> str | list[str]:
    """Build (or reuse) the teacher cache the recipe names, or one per teacher of a list; returns the path(s)."""
    # Under torchrun the main process builds each cache while the others wait; they then find it complete (its
    # fingerprint matches) and read it. Per node when the nodes do not share a disk (`save_on_each_node`).
    with run.config.main_process_first(local=run.config.save_on_each_node, desc="teacher cache"):
        if not recipe.ensemble:
            return _build_cache(recipe, run, echo)
        return [_build_cache(recipe, run, echo, k) for k in range(len(recipe.teachers))]


def _build_cache(recipe: Recipe, run: _Run, echo: Any, k: int = 0) -> str:
    """Build (or reuse, when its fingerprint matches) the cache of teacher ``k``; returns its path."""
    from .cache import cache_teacher

    spec = recipe.teachers[k]["cache"]
    echo(f"Teacher cache{f' of {recipe.teacher_key(k)}' if recipe.ensemble else ''}: {spec['path']}")
    # A top-k support lacks the teacher's probability of most labels, so the report's teacher perplexity needs the
    # live teacher on the evaluation data: only the training data is cached then.
    eval_data = run.data.get("eval") if spec.get("top_k") is None else None
    in_batch = spec.get("in_batch_negatives", run.task_name == "ranking" and _in_batch_teacher(run.config.objectives))
    cache = cache_teacher(
        run.teachers[k], run.data["train"], spec["path"], eval_dataset=eval_data, args=run.config,
        task=run.task_name, tokenizer=run.teacher_tokenizer or run.tokenizer, data_collator=run.collator,
        top_k=spec.get("top_k"),
        dtype=spec.get("dtype", "float32"), hidden_layers=spec.get("hidden_layers"), in_batch_negatives=in_batch,
        batch_size=spec.get("batch_size", 32), overwrite=spec.get("overwrite", False),
        progress=not run.config.disable_tqdm,
    )
    rows = ", ".join(f"{k}: {v['rows']} rows" for k, v in cache.metadata["splits"].items())
    how = f"built in {cache.metadata['seconds']:.1f} s" if cache.built_now else "reused: its fingerprint matches"
    echo(f"Teacher cache ready ({rows}; {how}) in {cache.path}")
    return str(cache.path)


def _in_batch_teacher(objectives: list[dict[str, Any]]) -> bool:
    """Whether an objective reads the teacher's in-batch scores (so a ranking cache must keep its embeddings)."""
    from .objectives import OBJECTIVES

    return any(spec.get("in_batch_negatives") and OBJECTIVES.get(spec["name"]).uses_teacher for spec in objectives)


def cache_recipe(recipe: Recipe, echo: Any = print) -> str | list[str]:
    """``hf-distill cache-teacher``: run the recipe's teacher (each teacher of a list) over its data once and store
    its signals."""
    cache = recipe.teacher.get("cache")
    if not cache:
        key = recipe.teacher_key(0, "cache")
        raise RecipeError([f"`{key}` is missing: say where to write the cache, e.g. --set "
                           f"{key.replace('[', '.').replace(']', '')}.path=caches/my-teacher (and optionally top_k, "
                           "dtype)."])
    for k, spec in enumerate(recipe.teachers):
        if spec.get("finetune"):
            key = recipe.teacher_key(k, "finetune")
            raise RecipeError([f"`{key}`: this recipe fine-tunes its teacher, which `hf-distill train` does before "
                               "caching (with a cache set it builds the cache itself). Run `hf-distill train`, or "
                               "point the teacher's model at the fine-tuned folder and drop finetune."])
    run = _load_run(recipe, echo, training=False)
    return _build_caches(recipe, run, echo)


def train_recipe(recipe: Recipe, echo: Any = print) -> dict[str, Any]:
    """Run a validated recipe end to end; returns the report (also written to the output directory).

    Under ``torchrun`` every process runs this: all of them train (and fine-tune a teacher) together and take part
    in ``trainer.evaluate()``; the main process alone builds a teacher cache first (the others wait, then read it),
    writes the output folder and the report, runs the retrieval evaluation of embedding recipes (no collective calls
    inside) and prints. The others return the report as None."""
    from .trainer import DistillationTrainer

    if not _is_main_process():  # progress lines once, from the main process
        echo = _silent
    hub = recipe["hub"] or {}
    if hub.get("push"):  # a push that cannot succeed (offline, no token) is refused before hours of training
        from .hub import PushError, check_push_possible

        try:
            check_push_possible(hub.get("repo_id"), base_model=hub.get("base_model"),
                                cache_repo_id=hub.get("cache_repo_id"), keys=_HUB_KEYS)
        except PushError as err:
            raise PushError(f"{err} Nothing was trained. To train now and push later, add --set hub.push=false, "
                            "then run `hf-distill push OUTPUT_DIR`.", exit_code=2) from None
    run = _load_run(recipe, echo)
    config, adapter, data, teacher, out = run.config, run.adapter, run.data, run.teacher, recipe.output_dir
    task_name, tokenizer, collator = run.task_name, run.tokenizer, run.collator
    if recipe.teacher.get("cache"):  # in a list, every teacher has its own cache (checked by the recipe)
        config.teacher_cache = _build_caches(recipe, run, echo)

    # 3. Student (with a PEFT adapter when the recipe has `student.peft`).
    spec = recipe["student"]
    student = _build_student(recipe, adapter, teacher, tokenizer, run.model_kwargs)
    peft_spec = spec.get("peft")
    peft_config = build_peft_config(peft_spec) if peft_spec else None

    # 4. Distillation.
    # With `teacher_scores_column` the teacher's scores come from the data; the model is still the report's teacher.
    # With a cache, the teacher is still given: the cache is checked against it, and uncached evaluation uses it.
    # Several teachers: the trainer combines them (teacher_weights from each `weight`; docs/multi-teacher.md).
    teachers = None if config.teacher_scores_column else run.teachers if recipe.ensemble else teacher
    trainer = DistillationTrainer(
        model=student, teacher_model=teachers, args=config, train_dataset=data["train"],
        eval_dataset=data.get("eval"), data_collator=collator, processing_class=tokenizer, peft_config=peft_config,
        teacher_processing_class=run.teacher_tokenizer if teachers is not None else None,
    )
    main = trainer.is_world_process_zero()
    evaluates = main or _forwards_are_collective(trainer)  # the retrieval evaluation and the report
    if peft_config is not None and "from_teacher" in spec:
        # The adapter applies to the layer subset this recipe builds, not to the teacher it was copied from: no base
        # name, so that loading it onto the teacher fails instead of silently running the wrong model.
        for adapter_config in trainer.accelerator.unwrap_model(trainer.model).peft_config.values():
            adapter_config.base_model_name_or_path = None
    if config.teacher_is_student_base:  # the report compares the student with its base model, adapter removed
        teacher = _base_model_copy(trainer) if evaluates else None
    elif teacher is None:  # a moving-average teacher: the report compares the student with it
        teacher = trainer.teacher_model
    # A frozen teacher encodes the retrieval queries and index once for both evaluations; a moving-average one changes.
    memo = None if "ema_of_student" in recipe.teacher else {}
    before = _task_metrics(trainer, task_name, recipe, memo) if task_name == "embedding" and evaluates else {}
    # Not under DeepSpeed: an evaluation before training wraps the student in an inference engine, and training
    # then never builds its own (transformers #30205; the first backward fails).
    if task_name == "ranking" and "eval" in data and not trainer.is_deepspeed_enabled:
        before = {k: v for k, v in trainer.evaluate().items() if k in ("eval_mrr@10", "eval_ndcg@10")}
    trainer.train()
    metrics = trainer.evaluate() if "eval" in data else {}
    if task_name == "embedding" and evaluates:
        metrics.update(_task_metrics(trainer, task_name, recipe, memo))
        metrics.update({f"{k}_before_training": v for k, v in before.items() if k.startswith("eval_ndcg@10_student")
                        or k.startswith("eval_ndcg@10_aligned")})
    if task_name == "ranking":
        metrics.update({f"{k}_before_training": v for k, v in before.items()})
    if peft_spec and peft_spec.get("merge"):  # the adapter to <out>/adapter, the merged plain model to <out>
        trainer.save_model(str(out / ADAPTER_DIR))
        if main:  # the pickled arguments are in output_dir already (and never uploaded: docs/hub.md)
            (out / ADAPTER_DIR / "training_args.bin").unlink(missing_ok=True)
        trainer.model = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
        trainer.model_wrapped = trainer.model
    trainer.save_model(str(out))  # the main process writes (`DistillationTrainer._save` checks `should_save`)
    trainer.save_state()
    if main:
        resolved = {**recipe.raw, "training": {**recipe.training}}
        (out / RECIPE_FILE).write_text(yaml.safe_dump(resolved, sort_keys=False))

    # 5. Report: the student against the teacher, or against the whole ensemble (all teachers, run in turn).
    report = None
    try:
        if evaluates:
            report = _report(trainer, _report_teacher(trainer, teacher), task_name, metrics,
                             data.get("eval", data["train"]), _report_teacher_name(recipe, config.teacher_combine),
                             echo, write=main)
        if main:
            echo(f"Student, tokenizer, recipe, trainer state and report written to {out}")
            if hub.get("push"):
                push_output_dir(out, recipe, echo)
    finally:  # every process returns once the output folder is complete (or the main process failed)
        _wait_for_everyone(config)
    return report if main else None


#: Where a recipe with `student.peft.merge: true` writes the adapter (the merged model goes to output_dir itself).
ADAPTER_DIR = "adapter"


def _silent(*args: Any, **kwargs: Any) -> None:
    """`echo` of the processes other than the main one."""


def _build_student(recipe: Recipe, adapter: Any, teacher: Any, tokenizer: Any, model_kwargs: dict[str, Any]) -> Any:
    """The student the recipe describes, before any PEFT adapter: layers of the teacher, a pretrained model (loaded as
    the task's auto class) or a fresh model from a config."""
    from .students import make_student

    spec = recipe["student"]
    if "from_teacher" in spec:
        return make_student(teacher, **spec["from_teacher"])
    if "model" in spec:
        return _load_model(adapter, resolve_model_reference(spec["model"], recipe), **model_kwargs)
    return adapter.model_from_config(_config_from_spec(spec["config"], tokenizer, **model_kwargs))


def _base_model_copy(trainer: Any) -> Any:
    """A PEFT student's base model as a separate plain model (its adapter layers removed, not merged): the teacher of
    self-distillation into an adapter, for the report."""
    return copy.deepcopy(trainer.accelerator.unwrap_model(trainer.model)).unload()


def _report_teacher_name(recipe: Recipe, combine: str) -> str:
    teacher_spec = recipe.teacher
    if "ema_of_student" in teacher_spec:
        return f"moving average of the student (decay {teacher_spec['ema_of_student']['decay']})"
    if teacher_spec.get("student_base") is True:
        return f"the student's base model, adapter off ({recipe['student'].get('model', 'student.config')})"
    return _teacher_name(recipe, combine)


_HUB_KEYS = {"repo_id": "hub.repo_id", "base_model": "hub.base_model", "cache_repo_id": "hub.cache_repo_id",
             "cache_path": "teacher.cache.path", "output_dir": "training.output_dir"}


def push_output_dir(out: Path, recipe: Recipe, echo: Any = print) -> Any:
    """``hub.push: true``: upload the finished run as its `hub` section says (`hf_distill.hub.push_to_hub`). A failed
    upload raises `PushError` (the outputs stay as written; its message gives the `hf-distill push` retry)."""
    from .hub import push_to_hub

    hub = recipe["hub"] or {}
    return push_to_hub(out, hub["repo_id"], private=hub.get("private", True), base_model=hub.get("base_model"),
                       cache_repo_id=hub.get("cache_repo_id"), include_teacher=hub.get("include_teacher", False),
                       echo=echo, keys=_HUB_KEYS)


def evaluate_output_dir(path: str | Path, echo: Any = print) -> dict[str, Any] | None:
    """Re-evaluate a finished run: its student against its teacher on the recipe's evaluation data. A student saved
    as a PEFT adapter (adapter_config.json; also ``<output_dir>/adapter`` of a merged run) is loaded onto the base
    model its recipe builds. Under ``torchrun`` every
    process evaluates its share; the main process rewrites the report (the others return None)."""
    from .recipes import load_recipe

    if not _is_main_process():
        echo = _silent
    path = Path(path)
    run_dir = path
    if path.name == ADAPTER_DIR and not (path / RECIPE_FILE).is_file() and (path.parent / RECIPE_FILE).is_file():
        run_dir = path.parent  # the adapter beside a merged student: the run's recipe, teacher and base apply
    recipe_file = run_dir / RECIPE_FILE if run_dir.is_dir() else path
    if not recipe_file.is_file():
        raise RecipeError([f"{str(path)!r} is neither a recipe file nor an output directory holding {RECIPE_FILE}."])
    recipe = load_recipe(recipe_file)
    if path.is_dir():
        recipe.training["output_dir"] = str(run_dir)
    out = path if path.is_dir() else recipe.output_dir  # the student's folder, where the report is rewritten
    peft_folder = (out / "adapter_config.json").is_file() and not (out / "config.json").is_file()
    if not (out / "config.json").is_file() and not peft_folder:
        raise RecipeError([f"{str(out)!r} holds no trained student (config.json, or adapter_config.json for a PEFT "
                           "adapter); run `hf-distill train` first."])
    if not recipe["data"].get("eval"):
        raise RecipeError(["`data.eval` is missing: evaluation needs evaluation data."])

    import torch
    from transformers import AutoImageProcessor, AutoTokenizer

    from .trainer import DistillationTrainer

    task_name = _resolve_task(recipe)
    raw = load_data(recipe, task_name)
    if task_name == "vision":  # the image processor saved with the student, if any (the data holds pixel_values)
        has_processor = (out / "preprocessor_config.json").is_file()
        tokenizer = AutoImageProcessor.from_pretrained(out) if has_processor else None
    else:
        tokenizer = AutoTokenizer.from_pretrained(out)
    config = build_config(recipe, task=task_name, output_dir=str(out))
    student_base = recipe.teacher.get("student_base") is True
    refs = [str(teacher_dir(recipe, k)) if (teacher_dir(recipe, k) / "config.json").is_file()
            else resolve_model_reference(spec["model"], recipe) for k, spec in enumerate(recipe.teachers)
            if not _teacher_from_student(spec)]
    teacher_ref = refs[0] if refs else None  # None: the trainer copies the student; the saved average is loaded below
    student_spec = recipe["student"]
    from_teacher = "from_teacher" in student_spec
    base_ref = None if from_teacher or "model" not in student_spec else resolve_model_reference(
        student_spec["model"], recipe)
    # The task adapter: from the model that decided it in training (the teacher, or the student's base model).
    if peft_folder or student_base:
        from transformers import AutoConfig

        source = teacher_ref if from_teacher else base_ref
        adapter = _adapter(task_name, (AutoConfig.from_pretrained(_config_source(source)).architectures or [""])[0])
    else:
        adapter = _adapter(task_name, _architecture(out))
    model_kwargs = _model_kwargs(recipe, task_name, raw["train"])
    teachers: Any = teacher_ref
    if teacher_ref is not None and _adapter_base(teacher_ref):  # a PEFT teacher: base + adapter, merged
        teachers = _load_model(adapter, teacher_ref)
    student: Any = str(out)
    if peft_folder:  # the base model the recipe trained the adapter on, then the adapter from `out`
        from peft import PeftModel

        if from_teacher and isinstance(teachers, str):
            teachers = _load_model(adapter, teacher_ref, **model_kwargs)
        torch.manual_seed(config.seed)  # a new task head starts as it did in training (the same seed, the same draw)
        base = _build_student(recipe, adapter, teachers, tokenizer, model_kwargs)
        student = PeftModel.from_pretrained(base, str(out))
    elif student_base:  # a merged student: its teacher, the base model, is loaded as a separate model
        config.teacher_is_student_base = False
        torch.manual_seed(config.seed)
        teachers = _load_model(adapter, base_ref, **model_kwargs)
    causal = getattr(adapter, "causal", False)
    # a teacher of another vocabulary (a path here) reads its own tokens
    teacher_tokenizer = None if recipe.ensemble else _own_tokenizer(adapter, teachers, tokenizer,
                                                                    _trusts_remote_code(recipe))
    data = _tokenize({"eval": raw["eval"]}, tokenizer, task_name, causal, recipe, teacher_tokenizer)
    collator = _collator(task_name, causal, tokenizer, teacher_tokenizer)
    if recipe.ensemble:  # each listed teacher loaded with its own dtype and init_kwargs
        from .config import _DTYPE_ALIASES
        from .teacher import load_teacher

        teachers = []
        for k, (ref, spec) in enumerate(zip(refs, recipe.teachers, strict=True)):
            dtype = _DTYPE_ALIASES.get(spec.get("dtype", "auto"), spec.get("dtype", "auto"))
            fix = f"set `{recipe.teacher_key(k, 'init_kwargs')}.trust_remote_code: true` in the recipe"
            with remote_code_guard(ref, fix):
                teachers.append(load_teacher(ref, adapter, dtype, spec.get("init_kwargs")))
    config.teacher_scores_column = None  # evaluation runs the teacher itself, so its metrics are reported too
    ema = "ema_of_student" in recipe.teacher
    if ema:
        from safetensors.torch import load_file

        from .trainer import EMA_TEACHER_NAME

        if not (out / EMA_TEACHER_NAME).is_file():
            raise RecipeError([f"{str(out)!r} has no {EMA_TEACHER_NAME}: the moving-average teacher was not saved."])
    trainer = DistillationTrainer(model=student, teacher_model=teachers, args=config,
                                  eval_dataset=data["eval"], data_collator=collator, processing_class=tokenizer,
                                  teacher_processing_class=teacher_tokenizer)
    if ema:
        trainer.teacher_model.load_state_dict(load_file(out / EMA_TEACHER_NAME, device=str(config.device)))
    metrics = trainer.evaluate()
    try:
        main = trainer.is_world_process_zero()
        if not (main or _forwards_are_collective(trainer)):
            return None
        if task_name == "embedding":
            metrics.update(_task_metrics(trainer, task_name, recipe))
        if recipe.ensemble:
            name = _teacher_name(recipe, config.teacher_combine, refs)
        elif student_base:
            name = _report_teacher_name(recipe, config.teacher_combine)
        else:
            name = teacher_ref or "moving average of the student"
        report_teacher = _base_model_copy(trainer) if config.teacher_is_student_base else trainer.teacher_model
        report = _report(trainer, _report_teacher(trainer, report_teacher), task_name, metrics, data["eval"], name,
                         echo, write=main)
        return report if main else None
    finally:  # the main process writes the report while the others wait
        _wait_for_everyone(config)


def _model_kwargs(recipe: Recipe, task_name: str, train: Any) -> dict[str, Any]:
    """`from_pretrained` arguments of the recipe's models: the teacher's ``init_kwargs``, and for classification and
    vision ``num_labels`` / ``id2label`` / ``label2id`` from the training data (for a model whose head is new)."""
    kwargs: dict[str, Any] = dict(recipe.teacher.get("init_kwargs") or {})
    if task_name in ("classification", "vision"):
        names = _label_names(train, (recipe["data"].get("columns") or {}).get("label", "label"))
        kwargs.update(num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in
                                                                                         enumerate(names)})
    return kwargs


def _teacher_name(recipe: Recipe, combine: str, refs: list[str] | None = None) -> str:
    """How the report names the teacher: its reference, or every teacher of an ensemble with its weight."""
    names = []
    for k, spec in enumerate(recipe.teachers):
        if refs is not None:
            names.append(refs[k])
        else:
            names.append(str(spec.get("model") or f"{teacher_dir(recipe, k)} (trained from "
                                                   f"{recipe.teacher_key(k, 'config')})"))
    if len(names) == 1:
        return names[0]
    listed = " + ".join(f"{name} (weight {spec.get('weight', 1)})" for name, spec in zip(names, recipe.teachers,
                                                                                          strict=True))
    return f"ensemble of {len(names)} teachers ({combine}): {listed}"


def _report_teacher(trainer: Any, teacher: Any) -> Any:
    """The teacher the report compares the student with: the teacher, or the ensemble of the trainer's teachers."""
    from .report import TeacherEnsemble

    models = getattr(trainer, "teacher_models", None) or []
    return TeacherEnsemble(models) if len(models) > 1 else teacher


def _task_metrics(trainer: Any, task_name: str, recipe: Recipe, memo: dict[Any, Any] | None = None
                  ) -> dict[str, float]:
    """Embedding runs: retrieval nDCG@10 / recall@10 on the bundled corpus's held-out split, three modes (``memo``:
    the frozen teacher's embeddings, kept between the evaluations before and after training)."""
    from .embeddings import encoders_from_trainer, retrieval_evaluation

    # Passages are at most 1,000 characters: 128 tokens covers nearly all of them, whatever training truncated to.
    student, teacher = encoders_from_trainer(trainer, max_length=128)
    limit = recipe["data"].get("max_eval_samples")
    return {f"eval_{k}": v for k, v in retrieval_evaluation(student, teacher, max_queries=limit, memo=memo).items()}


def _report(trainer: Any, teacher: Any, task_name: str, metrics: dict[str, float], sample: Any, teacher_name: str,
            echo: Any, write: bool = True) -> dict[str, Any]:
    """Measure teacher and student on one evaluation batch; with ``write``, write report.json / report.png and print
    the table (the main process, when every process measures: `_forwards_are_collective`)."""
    from .report import build_report, format_report, write_report

    size = min(len(sample), trainer.args.per_device_eval_batch_size)
    batch = trainer.data_collator([sample[i] for i in range(size)])
    batch = {k: v.to(trainer.args.device) for k, v in batch.items()}
    first = teacher.members[0] if hasattr(teacher, "members") else teacher  # an ensemble: its teachers' inputs
    inputs = [trainer.task.latency_inputs(first, trainer.task.teacher_view(batch)),  # its own tokens, if it has them
              trainer.task.latency_inputs(trainer.model, batch)]
    out = trainer.args.output_dir
    report = build_report(task_name, teacher, trainer.model, metrics, inputs, teacher_name, out)
    if write:
        write_report(report, out)
        echo(format_report(report))
    return report


def _forwards_are_collective(trainer: Any) -> bool:
    """Under DeepSpeed ZeRO-3 or FSDP every forward pass of the student or the teacher gathers parameters from all
    processes, so what only the main process would do with them (the retrieval evaluation, the report's timing) is
    done by every process, the same passes in the same order, and only the main process writes."""
    return accelerator_shards_parameters(trainer.accelerator)  # the strategy the run's accelerator actually set up


def _config_from_spec(spec: dict[str, Any], tokenizer: Any, **extra: Any) -> Any:
    """A config from recipe keys (``model_type`` + fields); the vocabulary defaults to the tokenizer's (text only: a
    vision recipe passes its image processor or None)."""
    from transformers import AutoConfig, PreTrainedTokenizerBase

    fields = dict(spec)
    if isinstance(tokenizer, PreTrainedTokenizerBase):
        fields.setdefault("vocab_size", len(tokenizer))
        if tokenizer.pad_token_id is not None:
            fields.setdefault("pad_token_id", tokenizer.pad_token_id)
    return AutoConfig.for_model(fields.pop("model_type"), **{**extra, **fields})


def _adapter(task_name: str, architecture: str) -> Any:
    """The task's adapter for this architecture (a headless one, e.g. BertModel, gets the task's default)."""
    from .tasks import TASKS

    cls = TASKS.get(task_name)
    return cls.from_architecture(architecture) or cls()


def _architecture(folder: Path) -> str:
    from transformers import AutoConfig

    return (AutoConfig.from_pretrained(folder).architectures or [""])[0]
