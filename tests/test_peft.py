"""PEFT students: a LoRA adapter trained by distillation (only adapter weights change, the saved adapter reloads),
self-distillation into an adapter (the teacher is the student's own base model, adapters off), and a PEFT teacher.
Tiny random GPT-2s stand in for real checkpoints."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from hf_distill import DistillationTrainer
from tests.helpers import config, lm_dataset, pad_collate, tiny_gpt2

LORA = dict(r=4, lora_alpha=8, target_modules=["c_attn"], lora_dropout=0.0, fan_in_fan_out=True)


def _train(tmp_path, student, teacher, steps=3, **overrides):
    objectives = overrides.pop("objectives", [{"name": "kl", "weight": 0.5, "temperature": 2.0},
                                              {"name": "ce", "weight": 0.5}])
    peft_config = overrides.pop("peft_config", None)
    args = config(tmp_path, per_device_train_batch_size=4, max_steps=steps, learning_rate=5e-2, logging_steps=1,
                  objectives=objectives, **overrides)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args,
                                  train_dataset=lm_dataset([9, 12, 5, 16, 7, 10, 11, 8], seed=0),
                                  data_collator=pad_collate, peft_config=peft_config)
    trainer.train()
    return trainer


def test_a_lora_student_changes_only_its_adapter_and_the_saved_adapter_reloads(tmp_path):
    base_before = {k: v.clone() for k, v in tiny_gpt2(layers=2, seed=2).state_dict().items()}
    trainer = _train(tmp_path / "run", tiny_gpt2(layers=2, seed=2), tiny_gpt2(layers=3, seed=1),
                     peft_config=LoraConfig(**LORA))
    student = trainer.model
    assert isinstance(student, PeftModel)
    changed_adapter = False
    for name, value in student.named_parameters():
        if "lora_" in name:
            changed_adapter = changed_adapter or value.abs().sum() > 0 and "lora_B" in name
            continue
        key = name.replace("base_model.model.", "").replace(".base_layer", "")
        assert torch.equal(value, base_before[key]), name  # the base model is untouched
    assert changed_adapter  # lora_B starts at 0: it moved
    trainer.save_model(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    reloaded = PeftModel.from_pretrained(tiny_gpt2(layers=2, seed=2), str(tmp_path / "adapter")).eval()
    ids = torch.randint(1, 64, (2, 9), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, student.eval()(input_ids=ids).logits, atol=1e-6)


def test_self_distillation_into_an_adapter_uses_the_base_model_as_teacher(tmp_path):
    """With the adapters off, the student is its base model: at the first step (lora_B = 0) the student *is* the
    teacher, so the KL term is 0; later it is not, and the base weights never change."""
    student = get_peft_model(tiny_gpt2(layers=2, seed=2), LoraConfig(**LORA))
    base = {k: v.clone() for k, v in student.named_parameters() if "lora_" not in k}
    trainer = _train(tmp_path, student, None, steps=4, teacher_is_student_base=True)
    kl = [entry["loss/kl"] for entry in trainer.state.log_history if "loss/kl" in entry]
    assert kl[0] == pytest.approx(0.0, abs=1e-7) and kl[-1] > 1e-6
    for name, value in student.named_parameters():
        if "lora_" not in name:
            assert torch.equal(value, base[name]), name
    assert student.training  # the teacher's eval-mode forward gave the mode back


def test_a_peft_teacher_is_its_merged_model(tmp_path):
    torch.manual_seed(3)
    teacher = get_peft_model(tiny_gpt2(layers=2, seed=1), LoraConfig(**LORA, init_lora_weights=False))
    merged = get_peft_model(tiny_gpt2(layers=2, seed=1), LoraConfig(**LORA, init_lora_weights=False))
    merged.load_state_dict(teacher.state_dict())
    merged = merged.merge_and_unload()
    a = _train(tmp_path / "peft", tiny_gpt2(layers=1, seed=2), teacher, steps=2)
    b = _train(tmp_path / "merged", tiny_gpt2(layers=1, seed=2), merged, steps=2)
    losses_a = [e["loss"] for e in a.state.log_history if "loss" in e]
    losses_b = [e["loss"] for e in b.state.log_history if "loss" in e]
    assert losses_a == pytest.approx(losses_b, rel=1e-5)


def test_self_distillation_needs_a_peft_student_and_no_other_teacher(tmp_path):
    with pytest.raises(ValueError, match="needs a PEFT student"):
        _train(tmp_path / "a", tiny_gpt2(layers=1), None, teacher_is_student_base=True)
    with pytest.raises(ValueError, match="do not also give `teacher_model`"):
        _train(tmp_path / "b", tiny_gpt2(layers=1), tiny_gpt2(layers=2), teacher_is_student_base=True,
               peft_config=LoraConfig(**LORA))
