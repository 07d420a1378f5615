"""Tests for hf_distill.students (DistilBERT-style layer-selection students).

Real checkpoints cannot be downloaded in this environment, so every teacher here is a tiny randomly initialised
model built from a small config (hidden size 32, 4-6 layers, small vocabulary, 32x32 images with 8x8 patches).
Random weights are actually the stricter setting: every layer differs from every other one, so copying the wrong
teacher layer into a student slot cannot go unnoticed.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
    ViTConfig,
    ViTForImageClassification,
)

from hf_distill.students import _student_config, make_student, select_layers

VOCAB = 97


# --------------------------------------------------------------------------------------------------------------------
# Tiny teachers
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Case:
    build: Callable[[], PreTrainedModel]
    stack: str  # dotted path of the layer ModuleList
    inputs: Callable[[], dict[str, torch.Tensor]]
    # Sub-modules whose output is added to the residual stream; zeroing them turns a pre-norm layer into the identity.
    residual_writers: tuple[str, ...] = ()


def _text_inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(0, VOCAB, (2, 9), generator=generator)}


def _image_inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {"pixel_values": torch.randn(2, 3, 32, 32, generator=generator)}


def _bert_config(num_layers: int, **kwargs) -> BertConfig:
    return BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
        **kwargs,
    )


def _bert_seq_cls() -> PreTrainedModel:
    torch.manual_seed(0)
    return BertForSequenceClassification(_bert_config(5, num_labels=3))


def _bert_mlm() -> PreTrainedModel:
    torch.manual_seed(0)
    return BertForMaskedLM(_bert_config(4))


def _distilbert() -> PreTrainedModel:
    # DistilBertConfig names its layer count `n_layers`; `num_hidden_layers` reaches it through `attribute_map`.
    torch.manual_seed(0)
    config = DistilBertConfig(
        vocab_size=VOCAB, dim=32, n_layers=4, n_heads=2, hidden_dim=37, max_position_embeddings=64, num_labels=2
    )
    return DistilBertForSequenceClassification(config)


def _gpt2() -> PreTrainedModel:
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=6, n_head=2, n_positions=64, bos_token_id=0, eos_token_id=0
    )
    return GPT2LMHeadModel(config)


def _llama() -> PreTrainedModel:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=5,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config)


def _vit() -> PreTrainedModel:
    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=37,
        image_size=32,
        patch_size=8,
        num_labels=5,
    )
    return ViTForImageClassification(config)


def _qwen2_sliding() -> PreTrainedModel:
    # Mixed sliding-window / full attention with a window (2) shorter than the test sequence (9): the per-layer
    # `layer_types` list must follow the kept layers or the student attends differently.
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
        use_sliding_window=True,
        sliding_window=2,
        layer_types=[
            "sliding_attention",
            "full_attention",
            "full_attention",
            "sliding_attention",
            "full_attention",
            "sliding_attention",
        ],
        bos_token_id=1,
        eos_token_id=2,
    )
    return Qwen2ForCausalLM(config)


LLAMA_WRITERS = ("self_attn.o_proj", "mlp.down_proj")

CASES = {
    "bert-seq-cls": Case(_bert_seq_cls, "bert.encoder.layer", _text_inputs),
    "bert-mlm": Case(_bert_mlm, "bert.encoder.layer", _text_inputs),
    "distilbert": Case(_distilbert, "distilbert.transformer.layer", _text_inputs),
    "gpt2": Case(_gpt2, "transformer.h", _text_inputs, ("attn.c_proj", "mlp.c_proj")),
    "llama": Case(_llama, "model.layers", _text_inputs, LLAMA_WRITERS),
    # transformers 5 refactored ViT: the stack is `vit.layers` (it was `vit.encoder.layer` in 4.x).
    "vit": Case(_vit, "vit.layers", _image_inputs, ("attention.o_proj", "mlp.fc2")),
    "qwen2-sliding": Case(_qwen2_sliding, "model.layers", _text_inputs, LLAMA_WRITERS),
}
PRE_NORM_CASES = [name for name, case in CASES.items() if case.residual_writers]


def _subset(total: int) -> list[int]:
    """A non-trivial selection: skips layers at the start, in the middle and at the end."""
    return [1, 2, total - 2] if total > 4 else [1, 2]


def _stack(model: PreTrainedModel, path: str) -> nn.ModuleList:
    stack = model.get_submodule(path)
    assert isinstance(stack, nn.ModuleList)
    return stack


def _assert_same_tensors(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype, key
        assert torch.equal(actual[key], value), key


def _logits(model: PreTrainedModel, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


# --------------------------------------------------------------------------------------------------------------------
# select_layers
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "num_layers", "expected"),
    [
        (12, 6, [0, 2, 4, 7, 9, 11]),  # the layers DistilBERT kept from BERT-base
        (12, 4, [0, 4, 7, 11]),
        (12, 3, [0, 6, 11]),  # 5.5 rounds to the even 6
        (6, 3, [0, 2, 5]),  # 2.5 rounds to the even 2
        (24, 12, [0, 2, 4, 6, 8, 10, 13, 15, 17, 19, 21, 23]),
        (6, 2, [0, 5]),
        (6, 1, [0]),
        (1, 1, [0]),
        (5, 5, [0, 1, 2, 3, 4]),
    ],
)
def test_select_layers_values(total: int, num_layers: int, expected: list[int]) -> None:
    assert select_layers(total, num_layers) == expected


def test_select_layers_invariants() -> None:
    for total in range(1, 41):
        for num_layers in range(1, total + 1):
            chosen = select_layers(total, num_layers)
            assert len(chosen) == num_layers
            assert all(a < b for a, b in itertools.pairwise(chosen))
            assert chosen[0] == 0
            if num_layers > 1:
                assert chosen[-1] == total - 1
        assert select_layers(total, total) == list(range(total))


@pytest.mark.parametrize(("total", "num_layers"), [(6, 0), (6, 7), (0, 1), (4, -1)])
def test_select_layers_rejects_out_of_range(total: int, num_layers: int) -> None:
    with pytest.raises(ValueError, match="num_layers|total"):
        select_layers(total, num_layers)


# --------------------------------------------------------------------------------------------------------------------
# Structure and weights
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_student_copies_selected_layers_and_everything_else(name: str) -> None:
    case = CASES[name]
    teacher = case.build()
    teacher_stack = _stack(teacher, case.stack)
    total = len(teacher_stack)
    kept = _subset(total)

    student = make_student(teacher, layers=kept)

    assert type(student) is type(teacher)
    assert student is not teacher
    assert student.config is not teacher.config
    assert student.config.num_hidden_layers == len(kept)
    student_stack = _stack(student, case.stack)
    assert len(student_stack) == len(kept)

    # Student layer j is a bit-exact copy of teacher layer kept[j] -- and differs from the teacher layer that merely
    # has the same index, so an off-by-mapping bug would be caught.
    for j, i in enumerate(kept):
        _assert_same_tensors(student_stack[j].state_dict(), teacher_stack[i].state_dict())
        if i != j:
            different = [
                key
                for key, value in teacher_stack[j].state_dict().items()
                if not torch.equal(value, student_stack[j].state_dict()[key])
            ]
            assert different, f"teacher layers {i} and {j} should differ"

    # Everything outside the stack (embeddings, final norm, pooler, head) is copied verbatim.
    prefix = f"{case.stack}."
    outside_teacher = {k: v for k, v in teacher.state_dict().items() if not k.startswith(prefix)}
    outside_student = {k: v for k, v in student.state_dict().items() if not k.startswith(prefix)}
    assert outside_teacher, "expected non-layer weights"
    _assert_same_tensors(outside_student, outside_teacher)

    # Copies, not views: no tensor storage is shared with the teacher.
    teacher_ptrs = {p.data_ptr() for p in teacher.parameters()}
    assert not any(p.data_ptr() in teacher_ptrs for p in student.parameters())
    assert all(p.requires_grad for p in student.parameters())


@pytest.mark.parametrize("name", list(CASES))
def test_keeping_all_layers_reproduces_the_teacher_exactly(name: str) -> None:
    case = CASES[name]
    teacher = case.build().eval()
    total = teacher.config.num_hidden_layers

    student = make_student(teacher, layers=list(range(total)))

    assert not student.training
    inputs = case.inputs()
    assert torch.equal(_logits(student, inputs), _logits(teacher, inputs))


@pytest.mark.parametrize("name", PRE_NORM_CASES)
def test_subset_student_matches_teacher_with_dropped_layers_turned_into_identity(name: str) -> None:
    """Functional check of the layer mapping for pre-norm models.

    Zeroing the sub-modules that write into the residual stream makes a pre-norm layer compute ``x + 0 = x``. A
    teacher whose unchosen layers are neutralised that way must therefore give exactly the student's output, which
    only holds if every student layer is the right teacher layer in the right order with the right per-layer config.
    """
    case = CASES[name]
    teacher = case.build().eval()
    total = teacher.config.num_hidden_layers
    kept = _subset(total)
    student = make_student(teacher, layers=kept)

    with torch.no_grad():
        for i, layer in enumerate(_stack(teacher, case.stack)):
            if i in kept:
                continue
            for module_name, module in layer.named_modules():
                if module_name.endswith(case.residual_writers):
                    for parameter in module.parameters():
                        parameter.zero_()

    inputs = case.inputs()
    assert torch.equal(_logits(student, inputs), _logits(teacher, inputs))

    # Control: a student built with the wrong layers does not match, so the check above has teeth.
    wrong = make_student(case.build().eval(), layers=[0, *kept[1:]])
    assert not torch.allclose(_logits(wrong, inputs), _logits(teacher, inputs))


def test_bert_subset_student_matches_manual_forward_through_kept_layers() -> None:
    teacher = _bert_seq_cls().eval()
    kept = [0, 2, 4]
    student = make_student(teacher, layers=kept)
    inputs = _text_inputs()

    with torch.no_grad():
        hidden = teacher.bert.embeddings(input_ids=inputs["input_ids"])
        for i in kept:
            hidden = teacher.bert.encoder.layer[i](hidden)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        expected = teacher.classifier(teacher.bert.pooler(hidden))

    torch.testing.assert_close(_logits(student, inputs), expected)


def test_num_layers_uses_select_layers() -> None:
    teacher = _gpt2()
    student = make_student(teacher, num_layers=3)
    assert student.config.n_layer == 3
    assert student.config.num_hidden_layers == 3
    for j, i in enumerate(select_layers(6, 3)):  # [0, 2, 5]
        _assert_same_tensors(student.transformer.h[j].state_dict(), teacher.transformer.h[i].state_dict())


# --------------------------------------------------------------------------------------------------------------------
# Config handling
# --------------------------------------------------------------------------------------------------------------------


def test_layer_types_are_sub_selected_and_config_stays_valid(tmp_path) -> None:
    teacher = _qwen2_sliding()
    kept = [1, 3, 5]
    student = make_student(teacher, layers=kept)

    assert student.config.layer_types == [teacher.config.layer_types[i] for i in kept]
    expected_windows = [2 if kind == "sliding_attention" else None for kind in student.config.layer_types]
    assert [layer.self_attn.sliding_window for layer in student.model.layers] == expected_windows
    assert len(teacher.config.layer_types) == 6  # the teacher's config is untouched

    # transformers 5 configs are strict dataclasses validated on save: a stale 6-entry `layer_types` would fail here.
    student.config.validate()
    student.save_pretrained(tmp_path)
    reloaded = Qwen2ForCausalLM.from_pretrained(tmp_path)
    assert reloaded.config.layer_types == student.config.layer_types
    _assert_same_tensors(reloaded.state_dict(), student.state_dict())


def test_only_per_layer_lists_are_sub_selected() -> None:
    # Lists that merely happen to have one entry per layer (token ids, architectures) must be left alone.
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        eos_token_id=[2, 3],
        architectures=["LlamaForCausalLM", "LlamaModel"],
    )
    student_config = _student_config(config, [1], total=2)
    assert student_config.num_hidden_layers == 1
    assert student_config.eos_token_id == [2, 3]
    assert student_config.architectures == ["LlamaForCausalLM", "LlamaModel"]
    assert config.num_hidden_layers == 2


def test_layer_index_lists_are_renumbered() -> None:
    torch.manual_seed(0)
    config = Qwen2MoeConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=37,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=16,
        num_experts=4,
        num_experts_per_tok=2,
        mlp_only_layers=[1],  # teacher layer 1 is dense, the others are mixture-of-experts
        bos_token_id=1,
        eos_token_id=2,
    )
    teacher = Qwen2MoeForCausalLM(config)

    student = make_student(teacher, layers=[0, 1, 3])
    assert student.config.mlp_only_layers == [1]
    for j, i in enumerate([0, 1, 3]):
        _assert_same_tensors(student.model.layers[j].state_dict(), teacher.model.layers[i].state_dict())

    all_moe = make_student(teacher, layers=[0, 2, 3])
    assert all_moe.config.mlp_only_layers == []
    assert teacher.config.mlp_only_layers == [1]


def test_heterogeneous_per_layer_config_is_remapped() -> None:
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=37,
        per_layer_config={1: {"intermediate_size": 64}, 3: {"intermediate_size": 48}},
    )
    student_config = _student_config(config, [0, 3], total=4)
    assert student_config.num_hidden_layers == 2
    assert student_config.per_layer_config[0].intermediate_size == 37
    assert student_config.per_layer_config[1].intermediate_size == 48

    homogeneous = _student_config(config, [0, 2], total=4)
    assert not homogeneous.is_heterogeneous
    assert config.per_layer_config[1].intermediate_size == 64


# --------------------------------------------------------------------------------------------------------------------
# Tied weights, dtype, mode, generation config, logging, teacher untouched
# --------------------------------------------------------------------------------------------------------------------


def test_gpt2_tied_embeddings_stay_tied() -> None:
    teacher = _gpt2()
    assert teacher.get_output_embeddings().weight is teacher.get_input_embeddings().weight

    student = make_student(teacher, layers=[0, 3, 5])

    assert student.get_output_embeddings().weight is student.get_input_embeddings().weight
    assert student.get_input_embeddings().weight is not teacher.get_input_embeddings().weight
    with torch.no_grad():
        student.get_input_embeddings().weight[0].fill_(3.0)
    assert torch.equal(student.get_output_embeddings().weight[0], torch.full((32,), 3.0))
    assert not torch.equal(teacher.get_output_embeddings().weight[0], torch.full((32,), 3.0))


def test_untied_head_stays_untied() -> None:
    teacher = _llama()
    assert teacher.lm_head.weight is not teacher.model.embed_tokens.weight
    student = make_student(teacher, num_layers=2)
    assert student.lm_head.weight is not student.model.embed_tokens.weight
    assert torch.equal(student.lm_head.weight, teacher.lm_head.weight)


def test_dtype_mode_and_generation_config_follow_the_teacher() -> None:
    teacher = _llama().to(torch.bfloat16)
    teacher.generation_config.max_new_tokens = 7
    teacher.train()

    student = make_student(teacher, layers=[0, 4])

    assert student.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in student.parameters())
    assert student.device == teacher.device
    assert student.training
    assert all(module.training for module in student.modules())
    assert student.generation_config.max_new_tokens == 7
    assert student.generation_config is not teacher.generation_config
    _assert_same_tensors(student.model.layers[1].state_dict(), teacher.model.layers[4].state_dict())

    teacher.eval()
    assert not make_student(teacher, layers=[0, 4]).training


def test_mixed_precision_teacher_keeps_per_tensor_dtypes() -> None:
    # e.g. a half-precision model whose head is kept in float32: the head must not be rounded through bfloat16.
    teacher = _llama().to(torch.bfloat16)
    teacher.lm_head.float()

    student = make_student(teacher, layers=[1, 3])

    assert student.model.embed_tokens.weight.dtype == torch.bfloat16
    assert student.lm_head.weight.dtype == torch.float32
    _assert_same_tensors(student.lm_head.state_dict(), teacher.lm_head.state_dict())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_student_is_built_on_the_teachers_device() -> None:
    teacher = _gpt2().to("cuda").eval()
    student = make_student(teacher, layers=list(range(6)))
    assert all(p.device == teacher.device for p in student.parameters())
    assert student.get_output_embeddings().weight is student.get_input_embeddings().weight
    inputs = {key: value.to("cuda") for key, value in _text_inputs().items()}
    assert torch.equal(_logits(student, inputs), _logits(teacher, inputs))


def test_teacher_is_not_modified() -> None:
    teacher = _qwen2_sliding()
    before = {key: value.clone() for key, value in teacher.state_dict().items()}
    config_before = teacher.config.to_dict()
    training_before = teacher.training

    make_student(teacher, layers=[0, 5])
    make_student(teacher, num_layers=2)

    _assert_same_tensors(teacher.state_dict(), before)
    assert teacher.config.to_dict() == config_before
    assert len(teacher.model.layers) == 6
    assert teacher.training == training_before


def test_logs_kept_layers_and_parameter_counts(caplog: pytest.LogCaptureFixture) -> None:
    teacher = _bert_mlm()
    with caplog.at_level(logging.INFO, logger="hf_distill.students"):
        student = make_student(teacher, layers=[0, 3])
    messages = [record.getMessage() for record in caplog.records if record.name == "hf_distill.students"]
    assert len(messages) == 1
    assert "[0, 3]" in messages[0]
    assert f"{teacher.num_parameters():,}" in messages[0]
    assert f"{student.num_parameters():,}" in messages[0]


# --------------------------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("layers", "num_layers"), [([0, 1], 2), (None, None)])
def test_exactly_one_of_layers_and_num_layers(layers, num_layers) -> None:
    with pytest.raises(ValueError, match="layers") as info:
        make_student(_bert_mlm(), layers=layers, num_layers=num_layers)
    assert "`layers`" in str(info.value) and "`num_layers`" in str(info.value)


@pytest.mark.parametrize("bad", [6, -1, 100])
def test_out_of_range_layer_is_named_with_the_valid_range(bad: int) -> None:
    teacher = _gpt2()  # 6 layers
    with pytest.raises(ValueError) as info:
        make_student(teacher, layers=[0, bad] if bad > 0 else [bad, 2])
    assert str(info.value) == f"`layers` contains {bad} but the teacher has 6 layers (valid: 0..5)."


def test_duplicate_layers_are_rejected() -> None:
    with pytest.raises(ValueError, match="contains 2 more than once"):
        make_student(_gpt2(), layers=[0, 2, 2, 5])


def test_unsorted_layers_are_rejected() -> None:
    with pytest.raises(ValueError, match="strictly increasing, but 0 comes after 2"):
        make_student(_gpt2(), layers=[2, 0])


def test_empty_and_non_integer_layers_are_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        make_student(_gpt2(), layers=[])
    with pytest.raises(TypeError, match="integer"):
        make_student(_gpt2(), layers=[0, 1.5])
    with pytest.raises(ValueError, match="num_layers"):
        make_student(_gpt2(), num_layers=7)


def _assert_unsupported_message(message: str, class_name: str) -> None:
    assert class_name in message
    for supported in ("decoder-only", "encoder-only", "BERT", "GPT-2", "Llama", "ViT"):
        assert supported in message
    assert "pass that student model explicitly" in message


def test_encoder_decoder_t5_is_rejected_with_guidance() -> None:
    config = T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_decoder_layers=3, num_heads=4)
    teacher = T5ForConditionalGeneration(config)
    with pytest.raises(ValueError) as info:
        make_student(teacher, layers=[1])
    _assert_unsupported_message(str(info.value), "T5ForConditionalGeneration")
    assert "encoder-decoder" in str(info.value)


def test_encoder_decoder_bart_is_rejected_with_guidance() -> None:
    config = BartConfig(
        vocab_size=VOCAB,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=37,
        decoder_ffn_dim=37,
        max_position_embeddings=64,
    )
    with pytest.raises(ValueError) as info:
        make_student(BartForConditionalGeneration(config), num_layers=1)
    _assert_unsupported_message(str(info.value), "BartForConditionalGeneration")


class _TwoStacks(PreTrainedModel):
    """A made-up model with two equally long ModuleLists, so the layer stack is ambiguous."""

    config_class = BertConfig
    base_model_prefix = "two_stacks"

    def __init__(self, config: BertConfig, stacks: int = 2) -> None:
        super().__init__(config)
        self.stacks = nn.ModuleList(
            [nn.ModuleList([nn.Linear(4, 4) for _ in range(config.num_hidden_layers)]) for _ in range(stacks)]
        )
        # The outer list of stacks has its own length; nested lists only count when they are outermost.
        self.post_init()


def test_ambiguous_layer_stack_is_rejected() -> None:
    teacher = _TwoStacks(_bert_config(3))
    with pytest.raises(ValueError) as info:
        make_student(teacher, num_layers=2)
    message = str(info.value)
    _assert_unsupported_message(message, "_TwoStacks")
    assert "found 2" in message and "`stacks.0`" in message and "`stacks.1`" in message


def test_missing_layer_stack_is_rejected() -> None:
    teacher = _TwoStacks(_bert_config(3), stacks=0)
    with pytest.raises(ValueError) as info:
        make_student(teacher, num_layers=2)
    _assert_unsupported_message(str(info.value), "_TwoStacks")
    assert "found 0 (none)" in str(info.value)


def test_non_pretrained_model_is_rejected() -> None:
    with pytest.raises(TypeError, match="PreTrainedModel"):
        make_student(nn.Linear(2, 2), num_layers=1)  # type: ignore[arg-type]
