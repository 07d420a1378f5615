"""`hf_distill.sharding` on models that are not partitioned (the path every non-ZeRO-3 run takes, and what CI can run:
the partitioned path needs `deepspeed`, see tests/test_distributed_strategies.py), and the report's accounting of
ZeRO-3 placeholders."""

from __future__ import annotations

import types

import pytest
import torch

from hf_distill.report import count_parameters, model_size_mb
from hf_distill.sharding import gathered, is_partitioned, load_whole_state_dict, runnable, whole_state_dict
from tests.helpers import tiny_gpt2


def test_whole_state_dict_of_a_plain_model_is_its_state_dict_with_ties_kept():
    model = tiny_gpt2(layers=2)
    state, whole = model.state_dict(), whole_state_dict(model)
    assert list(whole) == list(state) and all(torch.equal(whole[k], state[k]) for k in state)
    assert whole["lm_head.weight"] is whole["transformer.wte.weight"]  # tied: one tensor under both names
    assert all(whole[k].data_ptr() != state[k].data_ptr() for k in state)  # copies, not views of the model


def test_load_whole_state_dict_copies_and_refuses_what_load_state_dict_refuses():
    source, target = tiny_gpt2(layers=2, seed=1), tiny_gpt2(layers=2, seed=2)
    load_whole_state_dict(target, source.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), source.state_dict().values(),
                                                  strict=True))
    state = source.state_dict()
    with pytest.raises(RuntimeError, match=r"missing keys \['lm_head.weight'"):
        load_whole_state_dict(target, {k: v for k, v in state.items() if k != "lm_head.weight"})
    with pytest.raises(RuntimeError, match="size mismatch for transformer.h.0.ln_1.bias"):
        load_whole_state_dict(target, {**state, "transformer.h.0.ln_1.bias": torch.zeros(3)})


def test_plain_models_are_not_gathered():
    model = tiny_gpt2(layers=1)
    assert not is_partitioned(model)
    with gathered(model.parameters()), runnable(model):  # no-ops: nothing to gather, deepspeed not needed
        model(input_ids=torch.tensor([[1, 2, 3]]))


def test_the_report_counts_a_zero3_placeholder_as_its_whole_parameter():
    model = tiny_gpt2(layers=2)
    numel, size = count_parameters(model), model_size_mb(model)
    for param in model.parameters():  # what ZeRO-3 leaves on a process: an empty tensor that knows its real size
        param.ds_id, param.ds_numel = id(param), param.numel()
        param.data = torch.empty(0, dtype=param.dtype)
    assert is_partitioned(model)
    assert count_parameters(model) == numel and model_size_mb(model) == pytest.approx(size)


def test_the_sharding_strategy_is_read_from_the_arguments_or_accelerate(monkeypatch):
    from hf_distill.sharding import DEEPSPEED, FSDP, ZERO3, shards_parameters, strategy

    for name in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE", "ACCELERATE_USE_FSDP"):
        monkeypatch.delenv(name, raising=False)
    plain = types.SimpleNamespace(deepspeed=None, fsdp=False)
    assert strategy(plain) is None and not shards_parameters(plain)
    assert strategy(types.SimpleNamespace(deepspeed="ds_zero2.json", fsdp=False)) == DEEPSPEED
    zero3 = types.SimpleNamespace(deepspeed="ds.json", fsdp=False,
                                  hf_deepspeed_config=types.SimpleNamespace(is_zero3=lambda: True))
    assert strategy(zero3) == ZERO3 and shards_parameters(zero3)
    assert strategy(types.SimpleNamespace(deepspeed=None, fsdp=[{"version": 2}])) == FSDP
    # what `accelerate launch` sets from its configuration file
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert strategy(plain) == FSDP
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert strategy(plain) == DEEPSPEED and not shards_parameters(plain)
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    assert strategy(plain) == ZERO3


def test_a_teacher_finetune_is_refused_before_any_work_in_a_sharded_distillation(tmp_path, monkeypatch):
    """The fine-tuning `Trainer` would set up accelerate's process state without DeepSpeed / FSDP, and the
    distillation after it would then run without them (found under ZeRO-3: a partitioned student with no engine)."""
    from hf_distill import pipeline
    from hf_distill.recipes import RecipeError, find_recipe, load_recipe

    monkeypatch.setattr(pipeline, "sharding_strategy", lambda config: "DeepSpeed")
    out = tmp_path / "out"
    recipe = load_recipe(find_recipe("language-gpt2-cached"), [f"training.output_dir={out}", "training.use_cpu=true"])
    with pytest.raises(RecipeError, match=r"`teacher.finetune` cannot run in a DeepSpeed distillation"):
        pipeline.train_recipe(recipe)
    assert not out.exists()
