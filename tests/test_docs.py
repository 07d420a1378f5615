"""The docs stay true: the example in docs/trainer.md is the quickstart and runs; every option is documented."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForSequenceClassification, TrainingArguments

from hf_distill import DistillationConfig
from hf_distill.objectives import OBJECTIVES

ROOT = Path(__file__).resolve().parents[1]


def _example_from_docs() -> str:
    page = (ROOT / "docs" / "trainer.md").read_text()
    match = re.search(r"<!-- example: hf_distill/quickstart.py -->\n```python\n(.*?)```\n<!-- /example -->", page, re.S)
    assert match, "docs/trainer.md lost its example block"
    return match.group(1)


def test_docs_example_is_the_quickstart_source():
    assert _example_from_docs() == (ROOT / "hf_distill" / "quickstart.py").read_text()


@pytest.mark.slow
def test_docs_example_runs(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(_example_from_docs())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out = tmp_path / "runs"
    result = subprocess.run(
        [sys.executable, str(script), "--max-steps", "2", "--output-dir", str(out)],
        capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test accuracy" in result.stdout and "parameters" in result.stdout
    student = AutoModelForSequenceClassification.from_pretrained(out / "student")
    assert student.config.num_hidden_layers == 3


def test_every_config_field_and_objective_is_documented():
    page = (ROOT / "docs" / "trainer.md").read_text()
    ours = [f for f in dataclasses.fields(DistillationConfig) if f.name not in
            {g.name for g in dataclasses.fields(TrainingArguments)}]
    assert ours
    for field in ours:
        assert field.metadata.get("help"), f"{field.name} has no help text"
        assert f"`{field.name}`" in page, f"docs/trainer.md does not document `{field.name}`"
    losses_page = (ROOT / "docs" / "losses.md").read_text()
    for name in OBJECTIVES.names():
        assert f"| `{name}` |" in page, f"docs/trainer.md does not list objective `{name}`"
        assert f"`{name}`" in losses_page


def test_readme_gives_exactly_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    for marker in ("quickstart-command", "test-command"):
        block = re.search(rf"<!-- {marker} -->\n```\n(.+?)\n```\n<!-- /{marker} -->", readme, re.S)
        assert block and "\n" not in block.group(1), f"README needs one {marker} line"
    assert "pytest" in re.search(r"<!-- test-command -->\n```\n(.+?)\n```", readme).group(1)
    assert "test-command" in (ROOT / ".ci" / "run").read_text()
