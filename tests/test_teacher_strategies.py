"""Teacher placement per distributed strategy (`hf_distill.teacher.prepare_teacher`), one process: the DeepSpeed
ZeRO-3 teacher config derived from the student's, and which path each strategy takes. The multi-process checks
(a really sharded FSDP teacher, a distillation with it) are in `tests/test_distributed.py`."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from accelerate.utils import DistributedType
from transformers import ResNetConfig

from hf_distill.teacher import _hidden_size, deepspeed_teacher_config, prepare_teacher
from tests.helpers import tiny_gpt2

# A ZeRO-3 config as a user writes it for transformers (`--deepspeed ds_config.json`): "auto" where Trainer fills in.
STUDENT_ZERO3 = {
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto"}},
    "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": "auto"}},
    "bf16": {"enabled": "auto"},
    "fp16": {"enabled": "auto", "loss_scale": 0},
    "communication_data_type": "fp32",
    "zero_optimization": {
        "stage": 3,
        "offload_optimizer": {"device": "cpu"},
        "offload_param": {"device": "cpu", "pin_memory": True},
        "overlap_comm": True,
        "reduce_bucket_size": "auto",
        "stage3_prefetch_bucket_size": "auto",
        "stage3_param_persistence_threshold": "auto",
        "stage3_max_live_parameters": 1e9,
        "stage3_gather_16bit_weights_on_model_save": True,
    },
}


def test_zero3_teacher_config_keeps_the_sharding_drops_training_and_sizes_buckets_from_the_teacher():
    config = deepspeed_teacher_config(STUDENT_ZERO3, hidden_size=64, micro_batch_size=4, bf16=True)
    assert config == {
        "train_micro_batch_size_per_gpu": 4,
        "bf16": {"enabled": True},
        "fp16": {"enabled": False, "loss_scale": 0},
        "communication_data_type": "fp32",
        "zero_optimization": {
            "stage": 3,
            "offload_param": {"device": "cpu", "pin_memory": True},
            "overlap_comm": True,
            "reduce_bucket_size": 64 * 64,
            "stage3_prefetch_bucket_size": int(0.9 * 64 * 64),
            "stage3_param_persistence_threshold": 640,
            "stage3_max_live_parameters": 1e9,
            "stage3_gather_16bit_weights_on_model_save": True,
        },
    }
    assert STUDENT_ZERO3["zero_optimization"]["reduce_bucket_size"] == "auto"  # the student's config is untouched
    assert "optimizer" in STUDENT_ZERO3


def test_zero3_teacher_config_precision():
    """"auto" precision follows the bf16/fp16 arguments; a fixed one is kept; `teacher_dtype` overrides both."""
    fp16 = deepspeed_teacher_config(STUDENT_ZERO3, 8, 1, fp16=True)
    assert (fp16["bf16"]["enabled"], fp16["fp16"]["enabled"]) == (False, True)
    fixed = {**STUDENT_ZERO3, "bf16": {"enabled": True}, "fp16": {"enabled": False}}
    assert deepspeed_teacher_config(fixed, 8, 1)["bf16"] == {"enabled": True}
    full = deepspeed_teacher_config(fixed, 8, 1, teacher_dtype="float32", bf16=True)
    assert (full["bf16"]["enabled"], full["fp16"]["enabled"]) == (False, False)
    half = deepspeed_teacher_config(STUDENT_ZERO3, 8, 1, teacher_dtype="float16", bf16=True)
    assert (half["bf16"]["enabled"], half["fp16"]["enabled"]) == (False, True)


def test_zero3_teacher_config_without_a_hidden_size_leaves_the_bucket_sizes_to_deepspeed():
    minimal = {"zero_optimization": {"stage": 3, "reduce_bucket_size": "auto", "stage3_max_reuse_distance": 5}}
    assert deepspeed_teacher_config(minimal, hidden_size=None, micro_batch_size=2) == {
        "zero_optimization": {"stage": 3, "stage3_max_reuse_distance": 5},
        "train_micro_batch_size_per_gpu": 2,
        "bf16": {"enabled": False},
        "fp16": {"enabled": False},
    }


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_zero3_teacher_config_refuses_other_stages(stage):
    with pytest.raises(ValueError, match=rf"zero_optimization.stage={stage}.*only ZeRO stage 3 shards the teacher"):
        deepspeed_teacher_config({"zero_optimization": {"stage": stage}}, 8, 1)


def test_hidden_size_for_bucket_sizes():
    assert _hidden_size(tiny_gpt2(layers=1, hidden=48)) == 48  # GPT-2's n_embd, read as hidden_size
    resnet = torch.nn.Module()
    resnet.config = ResNetConfig(hidden_sizes=[16, 64, 32])  # one width per stage: the largest counts
    assert _hidden_size(resnet) == 64
    assert _hidden_size(torch.nn.Linear(2, 2)) is None


def _accelerator(kind: DistributedType, **state: object) -> types.SimpleNamespace:
    return types.SimpleNamespace(distributed_type=kind, state=types.SimpleNamespace(**state),
                                 device=torch.device("cpu"))


ARGS = types.SimpleNamespace(per_device_train_batch_size=3, teacher_dtype="auto", bf16=False, fp16=False)


class _FakeEngine(torch.nn.Module):
    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module


@pytest.fixture
def fake_deepspeed(monkeypatch):
    """A stand-in `deepspeed` module whose `initialize` records its arguments (DeepSpeed is not a test dependency)."""
    calls: list[dict] = []

    def initialize(model, config):
        calls.append({"model": model, "config": config})
        model.train()  # the engine keeps the module's mode: preparation must switch it to eval itself
        model.requires_grad_(True)
        return _FakeEngine(model), None, None, None

    monkeypatch.setitem(sys.modules, "deepspeed", types.SimpleNamespace(initialize=initialize))
    return calls


def test_zero3_teacher_goes_through_deepspeed_initialize_with_the_derived_config(fake_deepspeed):
    plugin = types.SimpleNamespace(zero_stage=3, deepspeed_config=STUDENT_ZERO3)
    teacher = tiny_gpt2(layers=2, hidden=32)
    prepared, owner = prepare_teacher(teacher, _accelerator(DistributedType.DEEPSPEED, deepspeed_plugin=plugin), ARGS)
    assert len(fake_deepspeed) == 1 and fake_deepspeed[0]["model"] is teacher
    assert fake_deepspeed[0]["config"] == deepspeed_teacher_config(STUDENT_ZERO3, 32, 3)
    assert isinstance(owner, _FakeEngine) and prepared is owner.module is teacher  # the engine's module is run
    assert not prepared.training and not any(p.requires_grad for p in prepared.parameters())


@pytest.mark.parametrize("stage", [1, 2])
def test_zero12_teacher_is_a_plain_replica(fake_deepspeed, stage):
    plugin = types.SimpleNamespace(zero_stage=stage, deepspeed_config={"zero_optimization": {"stage": stage}})
    teacher = tiny_gpt2(layers=1).train()
    prepared, owner = prepare_teacher(teacher, _accelerator(DistributedType.DEEPSPEED, deepspeed_plugin=plugin), ARGS)
    assert fake_deepspeed == [] and owner is None and prepared is teacher
    assert not prepared.training and not any(p.requires_grad for p in prepared.parameters())


def test_zero3_teacher_without_deepspeed_installed_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # `import deepspeed` raises ImportError
    plugin = types.SimpleNamespace(zero_stage=3, deepspeed_config=STUDENT_ZERO3)
    with pytest.raises(ImportError, match=r"hf_distill\[deepspeed\]"):
        prepare_teacher(tiny_gpt2(layers=1), _accelerator(DistributedType.DEEPSPEED, deepspeed_plugin=plugin), ARGS)


def test_one_process_teacher_is_placed_by_accelerate_in_evaluation_mode():
    placed: list[tuple] = []

    def prepare_model(model, evaluation_mode=False):
        placed.append((model, evaluation_mode))
        return model

    accelerator = _accelerator(DistributedType.NO)
    accelerator.prepare_model = prepare_model
    teacher = tiny_gpt2(layers=1).train()
    prepared, owner = prepare_teacher(teacher, accelerator, ARGS)
    assert placed == [(teacher, True)] and owner is None
    assert not prepared.training and not any(p.requires_grad for p in prepared.parameters())


def test_mean_teacher_is_refused_where_parameters_are_sharded(tmp_path, monkeypatch):
    from hf_distill import DistillationTrainer
    from hf_distill import trainer as trainer_module
    from tests.helpers import config, lm_dataset

    monkeypatch.setattr(trainer_module, "_shards_parameters", lambda accelerator: True)
    args = config(tmp_path, teacher_ema_decay=0.9, objectives=[{"name": "kl"}])
    with pytest.raises(ValueError, match="`teacher_ema_decay`.*ZeRO-3 and FSDP shard"):
        DistillationTrainer(model=tiny_gpt2(layers=1), teacher_model=None, args=args, train_dataset=lm_dataset([4, 5]))


def test_shards_parameters_per_strategy():
    from hf_distill.trainer import _shards_parameters

    assert _shards_parameters(_accelerator(DistributedType.FSDP))
    assert _shards_parameters(_accelerator(DistributedType.DEEPSPEED,
                                           deepspeed_plugin=types.SimpleNamespace(zero_stage=3)))
    assert not _shards_parameters(_accelerator(DistributedType.DEEPSPEED,
                                               deepspeed_plugin=types.SimpleNamespace(zero_stage=2)))
    assert not _shards_parameters(_accelerator(DistributedType.MULTI_CPU))


def test_fsdp2_teacher_with_weights_on_the_meta_device_is_refused_with_the_fix():
    """`cpu_ram_efficient_loading` leaves a teacher loaded from a path on the meta device outside process 0."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin(fsdp_version=2)
    teacher = tiny_gpt2(layers=1).to("meta")
    with pytest.raises(ValueError, match="meta device.*cpu_ram_efficient_loading.*False"):
        prepare_teacher(teacher, _accelerator(DistributedType.FSDP, fsdp_plugin=plugin), ARGS)
