"""End to end: the `hf-distill` console script runs every shipped recipe (shortened) and writes a usable output."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from hf_distill.cli import build_parser
from hf_distill.recipes import shipped_recipes

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1"}
SHORT = [
    "--set", "training.max_steps=2",
    "--set", "data.max_train_samples=64",
    "--set", "data.max_eval_samples=16",
    "--set", "training.per_device_eval_batch_size=8",
]


# `hf-distill evaluate` takes the same path for these as for the recipe named next to them, which is re-evaluated
# (the CI time goes to the runs that test something new).
EVALUATED_BY_A_SIBLING = {
    "classification-lora": "classification-topics",  # merged: a plain classifier (adapter folders: test_peft_recipes)
    "embedding-align": "quickstart",
    "language-gpt2-cached": "language-gpt2",
    "ranking-listwise": "ranking-margin-mse",
    "vision-vit-to-cnn": "vision-vit",
}


def hf_distill(*args: str, cwd=None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "hf_distill.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=cwd, timeout=900)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(shipped_recipes()))
def test_shipped_recipe_trains_and_evaluates(tmp_path, name):
    out = tmp_path / "out"
    short = [*SHORT, "--set", f"training.output_dir={out}"]
    recipe = yaml.safe_load(shipped_recipes()[name].read_text())
    if recipe["teacher"].get("finetune"):
        short += ["--set", "teacher.finetune.max_steps=2"]
    vision = recipe.get("task") == "vision"  # images: an image processor is saved instead of a tokenizer
    result = hf_distill("train", name, *short, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "teacher" in result.stdout and "student" in result.stdout and "latency / batch" in result.stdout

    processor_file = "preprocessor_config.json" if vision else "tokenizer_config.json"
    for file in ("config.json", "model.safetensors", processor_file, "recipe.yaml", "trainer_state.json",
                 "report.json", "report.png"):
        assert (out / file).is_file(), file
    report = json.loads((out / "report.json").read_text())
    for role in ("teacher", "student"):
        row = report[role]
        assert row["parameters"] > 0 and row["size_mb"] > 0 and row["latency_ms_per_batch"] > 0
        assert row["metric"] is not None
    assert report["student"]["parameters"] < report["teacher"]["parameters"]
    if (recipe["student"].get("peft") or {}).get("merge"):  # a merged PEFT student: the adapter is kept beside it
        assert (out / "adapter" / "adapter_config.json").is_file()
    assert report["ratios"]["compression"] == pytest.approx(
        report["teacher"]["parameters"] / report["student"]["parameters"])

    architecture = AutoConfig.from_pretrained(out).architectures[0]
    if "ImageClassification" in architecture:
        auto = AutoModelForImageClassification
    elif "Classification" in architecture:
        auto = AutoModelForSequenceClassification
    elif "CausalLM" in architecture or "LMHead" in architecture:
        auto = AutoModelForCausalLM
    else:
        auto = AutoModel
        assert (out / "modules.json").is_file()  # an embedding student is also a sentence-transformers folder
    student = auto.from_pretrained(out)
    assert sum(p.numel() for p in student.parameters()) == report["student"]["parameters"]
    (AutoImageProcessor if vision else AutoTokenizer).from_pretrained(out)

    if name in EVALUATED_BY_A_SIBLING:
        return
    again = hf_distill("evaluate", str(out), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-4000:]
    assert json.loads((out / "report.json").read_text())["student"]["metric"] == pytest.approx(
        report["student"]["metric"], rel=1e-4)


@pytest.mark.slow
def test_ranking_recipe_with_precomputed_teacher_scores(tmp_path):
    """`training.teacher_scores_column`: the run reads the teacher's scores from the data; the report still has the
    teacher's size and latency, and `hf-distill evaluate` runs the teacher live for its metrics."""
    out = tmp_path / "out"
    result = hf_distill("train", "ranking-margin-mse", *SHORT, "--set", f"training.output_dir={out}",
                        "--set", "training.teacher_scores_column=teacher_scores",  # a column: own candidates only
                        "--set", "objectives=[{name: margin_mse, weight: 1.0}]", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    assert report["student"]["metric"] is not None and report["teacher"]["metric"] is None
    assert "eval_mrr@10_before_training" in report["eval"]
    again = hf_distill("evaluate", str(out), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-4000:]
    assert json.loads((out / "report.json").read_text())["teacher"]["metric"] is not None


def test_recipes_command_lists_every_shipped_recipe_with_a_description():
    result = hf_distill("recipes")
    assert result.returncode == 0
    for name in shipped_recipes():
        line = next(line for line in result.stdout.splitlines() if line.startswith(name))
        assert len(line.split(None, 1)[1]) > 20, f"{name} has no description"


def test_help_on_every_level_comes_from_the_field_help():
    parser = build_parser()
    top = parser.format_help()
    for command in ("train", "evaluate", "recipes"):
        assert command in top
    sub = next(a for a in parser._actions if a.dest == "command").choices
    train_help = sub["train"].format_help()
    assert "teacher_dtype" in train_help and "losses are always computed in float32" in train_help.lower()
    assert "from_teacher" in train_help and "max_length" in train_help
    assert "RECIPE_OR_OUTPUT_DIR" in sub["evaluate"].format_help()


def test_a_bad_recipe_fails_with_exit_code_2_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    result = hf_distill("train", "quickstart", "--set", "objectives.0.name=kll", "--set", f"training.output_dir={out}")
    assert result.returncode == 2
    assert "`objectives[0]`: Unknown objective 'kll'. Did you mean 'kl'?" in result.stderr
    assert not out.exists()


def test_each_recipe_whose_evaluate_is_skipped_has_an_evaluated_sibling():
    shipped = shipped_recipes()
    for name, sibling in EVALUATED_BY_A_SIBLING.items():
        assert name in shipped and sibling in shipped and sibling not in EVALUATED_BY_A_SIBLING
        task = yaml.safe_load(shipped[name].read_text()).get("task")
        assert task == yaml.safe_load(shipped[sibling].read_text()).get("task"), (name, sibling)
