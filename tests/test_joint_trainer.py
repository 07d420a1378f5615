"""The trainer's one-pass divergence + ce (`JointLogitTerms`) and `fused: true` (the student's hidden states and LM
head instead of its logits): the same loss and the same student gradients as the separate objectives on full
logits, on tiny GPT-2 and Llama students, with padding and ignored labels."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, LlamaConfig, LlamaForCausalLM

from hf_distill import DistillationTrainer
from tests.helpers import VOCAB, config, lm_dataset, pad_collate, single_thread, tiny_gpt2  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")

LENGTHS = [3, 12, 5, 9]


def tiny_llama(layers: int = 1, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
                                        max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                        tie_word_embeddings=False))


def _batch():
    batch = pad_collate([lm_dataset(LENGTHS)[i] for i in range(4)])
    batch["labels"][0, 1] = -100  # an ignored label inside a real sequence
    batch["labels"][2, 3] = -100
    return batch


def _loss_and_grads(tmp_path, student_fn, teacher_fn, objectives, separate: bool):
    student, teacher = student_fn(), teacher_fn()
    trainer = DistillationTrainer(model=student, teacher_model=teacher,
                                  args=config(tmp_path, objectives=objectives, preflight=False))
    if separate:  # the reference: each objective on its own, from the student's full logits (autograd)
        trainer._joint = None
        trainer._fused_requires = trainer._student_requires
    student.train()
    loss = trainer.compute_loss(student, _batch())
    loss.backward()
    parts = {k: float(v) for k, v in trainer._train_parts.items()}
    return loss.detach(), {n: p.grad.clone() for n, p in student.named_parameters()}, parts, trainer


def _assert_same(tmp_path, student_fn, teacher_fn, objectives, tol):
    ref_loss, ref_grads, ref_parts, _ = _loss_and_grads(tmp_path / "a", student_fn, teacher_fn, objectives, True)
    loss, grads, parts, trainer = _loss_and_grads(tmp_path / "b", student_fn, teacher_fn, objectives, False)
    assert trainer._joint is not None
    torch.testing.assert_close(loss, ref_loss, rtol=tol, atol=tol)
    assert parts.keys() == ref_parts.keys()
    for key in parts:
        assert parts[key] == pytest.approx(ref_parts[key], rel=tol, abs=tol), key
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=tol, atol=tol, msg=name)
    return trainer


@pytest.mark.parametrize("objectives", [
    [{"name": "kl", "weight": 0.7}, {"name": "ce", "weight": 0.3}],
    [{"name": "kl", "weight": 0.7, "temperature": 2.0}, {"name": "ce", "weight": 0.3}],
    [{"name": "jsd", "weight": 1.0, "beta": 0.3}, {"name": "ce", "weight": 0.5}],
    [{"name": "reverse_kl", "weight": 1.0, "temperature": 1.5, "chunk_size": 3}, {"name": "ce", "weight": 0.2}],
])
def test_divergence_and_ce_in_one_pass_equal_the_separate_objectives(tmp_path, objectives):
    _assert_same(tmp_path, lambda: tiny_gpt2(layers=1, seed=1), lambda: tiny_gpt2(layers=2, seed=2), objectives, 1e-6)


FUSED = [
    [{"name": "kl", "weight": 0.5, "fused": True}, {"name": "ce", "weight": 0.5}],
    [{"name": "kl", "weight": 0.7, "temperature": 2.0, "fused": True, "chunk_size": 5}, {"name": "ce", "weight": 0.3}],
    [{"name": "jsd", "weight": 1.0, "fused": True}],
]


@pytest.mark.parametrize("objectives", FUSED)
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_fused_equals_the_dense_objectives(tmp_path, objectives, arch):
    if arch == "gpt2":  # tied input/output embeddings, final LayerNorm, no head bias
        student_fn, teacher_fn = (lambda: tiny_gpt2(layers=1, seed=1)), (lambda: tiny_gpt2(layers=2, seed=2))
    else:  # untied head, final RMSNorm
        student_fn, teacher_fn = (lambda: tiny_llama(1, seed=1)), (lambda: tiny_llama(2, seed=2))
    _assert_same(tmp_path, student_fn, teacher_fn, objectives, 1e-5)


def test_fused_student_forward_never_makes_the_full_logits(tmp_path):
    student, teacher = tiny_llama(1, seed=1), tiny_llama(2, seed=2)
    trainer = DistillationTrainer(model=student, teacher_model=teacher,
                                  args=config(tmp_path, objectives=FUSED[0], preflight=False))
    shapes = []
    student.get_output_embeddings().register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
    student.train()
    trainer.compute_loss(student, _batch()).backward()
    assert shapes == [(4, 1, VOCAB)]  # the last position only (the head check), not [4, 12, VOCAB]
    student.eval()  # evaluation keeps the full logits (its metrics need them)
    with torch.no_grad():
        trainer.compute_loss(student, _batch())
    assert shapes[-1] == (4, 12, VOCAB)


def test_fused_training_matches_dense_training(tmp_path):
    def train(path, fused):
        student = tiny_gpt2(layers=1, seed=1)
        args = config(path, per_device_train_batch_size=2, max_steps=3, learning_rate=1e-2, logging_steps=1,
                      objectives=[{"name": "kl", "weight": 0.5, "fused": fused}, {"name": "ce", "weight": 0.5}])
        trainer = DistillationTrainer(model=student, teacher_model=tiny_gpt2(layers=2, seed=2), args=args,
                                      train_dataset=lm_dataset(LENGTHS * 2), data_collator=pad_collate)
        trainer.train()
        return student, [r["loss"] for r in trainer.state.log_history if "loss" in r and "train_runtime" not in r]

    dense, dense_losses = train(tmp_path / "dense", False)
    fused, fused_losses = train(tmp_path / "fused", True)
    assert fused_losses == pytest.approx(dense_losses, rel=1e-5)
    for (name, p), q in zip(dense.named_parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-5, msg=name)


def test_fused_refuses_what_it_cannot_compute(tmp_path):
    student, teacher = tiny_gpt2(layers=1, seed=1), tiny_gpt2(layers=2, seed=2)
    with pytest.raises(ValueError, match="dkd"):
        DistillationTrainer(model=student, teacher_model=teacher, args=config(
            tmp_path, objectives=[FUSED[0][0], {"name": "dkd", "weight": 1.0}]))
    with pytest.raises(ValueError, match="one divergence"):
        DistillationTrainer(model=student, teacher_model=teacher, args=config(
            tmp_path, objectives=[FUSED[0][0], {"name": "jsd", "weight": 1.0}]))
    capped = tiny_gpt2(layers=1, seed=1)
    capped.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        DistillationTrainer(model=capped, teacher_model=teacher, args=config(tmp_path, objectives=FUSED[0]))
    bert = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64)
    with pytest.raises(ValueError, match="masked LM"):
        DistillationTrainer(model=BertForMaskedLM(bert), teacher_model=BertForMaskedLM(bert),
                            args=config(tmp_path, objectives=FUSED[0]))
    with pytest.raises(ValueError, match="`fused` must be true or false"):
        DistillationTrainer(model=student, teacher_model=teacher,
                            args=config(tmp_path, objectives=[{"name": "kl", "fused": "yes"}]))


def test_fused_detects_a_model_that_changes_logits_after_its_head(tmp_path):
    student, teacher = tiny_gpt2(layers=1, seed=1), tiny_gpt2(layers=2, seed=2)
    trainer = DistillationTrainer(model=student, teacher_model=teacher,
                                  args=config(tmp_path, objectives=FUSED[0], preflight=False))
    forward = student.forward

    def scaled(*args, **kwargs):  # stands in for an architecture that scales its logits without a config flag
        out = forward(*args, **kwargs)
        out.logits = out.logits * 2
        return out

    student.forward = scaled
    student.train()
    with pytest.raises(ValueError, match="not its final hidden states times its LM head"):
        trainer.compute_loss(student, _batch())


@pytest.mark.parametrize("objectives", [
    [{"name": "kl", "weight": 1.0, "temperature": 2.0}],
    [{"name": "jsd", "weight": 0.8, "beta": 0.7}],
])
def test_a_divergence_alone_in_a_language_task_takes_the_one_pass_path(tmp_path, objectives):
    trainer = _assert_same(tmp_path, lambda: tiny_gpt2(layers=1, seed=1), lambda: tiny_gpt2(layers=2, seed=2),
                           objectives, 1e-6)
    assert trainer._joint.ce_item is None


def test_preflight_checks_the_objectives_on_the_training_path(tmp_path, monkeypatch):
    # The first-batch check must not build the dense [N, V] intermediates that training avoids (its memory peak
    # would then be the run's): with kl + ce in a language task it goes through the one-pass loss, not kl_div.
    from hf_distill import losses

    def dense(*args, **kwargs):
        raise AssertionError("the dense kl_div ran")

    monkeypatch.setattr(losses, "kl_div", dense)
    trainer = DistillationTrainer(
        model=tiny_gpt2(layers=1, seed=1), teacher_model=tiny_gpt2(layers=2, seed=2),
        args=config(tmp_path, objectives=[{"name": "kl", "weight": 0.5}, {"name": "ce", "weight": 0.5}], max_steps=1),
        train_dataset=lm_dataset(LENGTHS), data_collator=pad_collate)
    trainer.train()
    bad = lm_dataset(LENGTHS).map(lambda row: {"labels": [VOCAB + 5] * len(row["labels"])})
    trainer = DistillationTrainer(
        model=tiny_gpt2(layers=1, seed=1), teacher_model=tiny_gpt2(layers=2, seed=2),
        args=config(tmp_path / "bad", objectives=[{"name": "kl", "weight": 0.5}, {"name": "ce", "weight": 0.5}],
                    max_steps=1), train_dataset=bad, data_collator=pad_collate)
    with pytest.raises(ValueError, match="label"):  # and it still fails early on bad labels
        trainer.train()


@pytest.mark.parametrize("sharding", ["fsdp", "zero3"])
def test_fused_is_refused_when_the_student_parameters_are_sharded(tmp_path, monkeypatch, sharding):
    """The fused loss multiplies the hidden states by the LM head weight itself, outside the student's forward: under
    ZeRO-3 that weight is an empty placeholder there, under FSDP a shard (found running a recipe under ZeRO-3)."""
    overrides = {}
    if sharding == "fsdp":
        overrides = {"fsdp": True, "fsdp_config": {"version": 2}}
    else:
        monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")  # what `accelerate launch` sets for ZeRO-3
    args = config(tmp_path, objectives=[{"name": "kl", "weight": 0.5, "fused": True}, {"name": "ce", "weight": 0.5}],
                  **overrides)
    name = "FSDP" if sharding == "fsdp" else "DeepSpeed ZeRO-3"
    with pytest.raises(ValueError, match=rf"`fused: true` \('kl'\) reads .* {name} holds that weight sharded"):
        DistillationTrainer(model=tiny_gpt2(layers=1), teacher_model=tiny_gpt2(layers=2, seed=1), args=args,
                            train_dataset=lm_dataset([8, 9]), data_collator=pad_collate)
