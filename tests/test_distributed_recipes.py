"""A shipped recipe under `torchrun --nproc_per_node 2` on CPU: `hf-distill train` with a teacher fine-tuned by the
recipe (all processes train it together) and a teacher-signal cache (the main process builds it, the others wait and
read it). The output folder is complete and loads, the report is printed once, and the run makes the same update as
one process with the same global batch (docs/distributed.md, "Launching")."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1",
       "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
NO_DROPOUT = [f"teacher.config.{key}=0.0" for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(folder: Path, processes: int) -> subprocess.CompletedProcess:
    """language-gpt2-cached, shortened; global batch 8 for the teacher's fine-tuning and for distillation."""
    per_device = 8 // processes
    overrides = [
        "training.use_cpu=true", "training.disable_tqdm=true", f"training.output_dir={folder / 'out'}",
        "data.max_train_samples=48", "data.max_eval_samples=8", "data.max_length=32",
        "teacher.config.n_layer=2", "teacher.config.n_embd=32", "teacher.config.n_head=2",
        "student.from_teacher.num_layers=1", *NO_DROPOUT,
        "teacher.finetune.max_steps=2", f"teacher.finetune.per_device_train_batch_size={per_device}",
        "teacher.finetune.disable_tqdm=true", "teacher.finetune.use_cpu=true",
        f"teacher.cache.path={folder / 'cache'}", "teacher.cache.batch_size=8",
        "training.max_steps=3", "training.logging_steps=1", f"training.per_device_train_batch_size={per_device}",
        "training.per_device_eval_batch_size=4", "training.warmup_steps=0",
    ]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                "--master_addr", "127.0.0.1", "--master_port", str(_free_port())] if processes > 1 else [sys.executable]
    command = [*launcher, "-m", "hf_distill.cli", "train", "language-gpt2-cached"]
    for item in overrides:
        command += ["--set", item]
    folder.mkdir()
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=folder, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.mark.slow
def test_a_recipe_under_torchrun_writes_one_complete_output_and_matches_one_process(tmp_path):
    two = _train(tmp_path / "two", processes=2)
    out = tmp_path / "two" / "out"
    # printed once: the report table and the closing line come from the main process only
    assert two.stdout.count("latency / batch") == 1, two.stdout[-3000:]
    assert two.stdout.count("report written to") == 1
    assert two.stdout.count("Teacher cache ready") == 1
    for file in ("config.json", "model.safetensors", "tokenizer_config.json", "recipe.yaml", "trainer_state.json",
                 "report.json", "report.png", "teacher/config.json", "teacher/model.safetensors"):
        assert (out / file).is_file(), file
    assert not list(out.glob(".*"))  # no staging folder left behind
    report = json.loads((out / "report.json").read_text())
    assert report["student"]["metric"] is not None and report["teacher"]["metric"] is not None
    student = AutoModelForCausalLM.from_pretrained(out)
    AutoTokenizer.from_pretrained(out)
    assert sum(p.numel() for p in student.parameters()) == report["student"]["parameters"]

    one = tmp_path / "one"
    _train(one, processes=1)
    history_two = json.loads((out / "trainer_state.json").read_text())["log_history"]
    history_one = json.loads((one / "out" / "trainer_state.json").read_text())["log_history"]
    steps_two = [entry for entry in history_two if "loss/kl" in entry]
    steps_one = [entry for entry in history_one if "loss/kl" in entry]
    assert len(steps_two) == len(steps_one) == 3
    for a, b in zip(steps_two, steps_one, strict=True):
        # the same fraction of an epoch per step: two processes shared each global batch of 8 (one process with a
        # per-device batch of 4 would have needed twice the steps per epoch)
        assert a["epoch"] == pytest.approx(b["epoch"])
        # abs: the teacher's signals pass through the float16 cache, where a last-bit difference of the fine-tuned
        # teachers (gradients summed across processes in another order) can round one value the other way
        for key in ("loss", "loss/kl", "loss/ce"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (key, a, b)
    # The teacher (fine-tuned by both processes together) to 1e-5. The student's tied embedding gets a gradient for
    # every vocabulary entry, most of them near 0; Adam divides each by its own size, so a last-bit difference (from
    # the float16 cache, or the order in which processes sum gradients) moves a handful of its million entries by up
    # to ~lr/100: those get 1e-4, and the mean difference over all entries must stay below 5e-7.
    for folder, atol in (("teacher", 1e-5), ("", 1e-4)):
        weights_two = load_file(out / folder / "model.safetensors")
        weights_one = load_file(one / "out" / folder / "model.safetensors")
        for name, value in weights_one.items():
            assert torch.allclose(weights_two[name], value, atol=atol), (folder, name)
            assert (weights_two[name] - value).abs().mean() < 5e-7, (folder, name)
