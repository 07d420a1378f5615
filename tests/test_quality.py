"""Distillation works on real text: a KD student tracks its teacher better than a CE-only student, at no cost in
quality. Teachers are small random-config models (GPT-2- and BERT-style) trained here on the bundled corpus of
Python standard-library documentation, since no pretrained LM can be downloaded on the CI machine."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DataCollatorWithPadding,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
    Trainer,
    TrainingArguments,
)

from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill.data import classification_dataset, load_corpus

pytestmark = pytest.mark.slow

BLOCK = 64
KD_CE = [{"name": "kl", "weight": 0.5, "temperature": 1.0}, {"name": "ce", "weight": 0.5}]
CE_ONLY = [{"name": "ce", "weight": 1.0}]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (512 tokens) trained on the corpus's training split."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<pad>", "<cls>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(load_corpus("train")["text"], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", cls_token="<cls>", eos_token="<eos>")


def _args(output_dir, steps: int, lr: float, **extra) -> dict:
    return dict(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=64,
        learning_rate=lr,
        warmup_steps=10,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        **extra,
    )


def _lm_blocks(tokenizer, split: str) -> Dataset:
    encoded = tokenizer(list(load_corpus(split)["text"]))["input_ids"]
    ids = [token for row in encoded for token in [*row, tokenizer.eos_token_id]]
    rows = [ids[i : i + BLOCK] for i in range(0, len(ids) - BLOCK + 1, BLOCK)]
    return Dataset.from_dict({"input_ids": rows, "labels": rows})


def _gpt2(tokenizer, layers: int, seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tokenizer), n_positions=BLOCK, n_embd=96, n_layer=layers, n_head=4,
                   pad_token_id=tokenizer.pad_token_id)
    )


def _distil(tmp_path, name, student, teacher, objectives, train, test, steps, lr, collator=None) -> dict:
    config = DistillationConfig(objectives=objectives, **_args(tmp_path / name, steps, lr))
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=config, train_dataset=train,
                                  eval_dataset=test, data_collator=collator)
    trainer.train()
    return trainer.evaluate()


def test_kd_beats_ce_only_for_a_causal_lm(tmp_path, tokenizer):
    train, test = _lm_blocks(tokenizer, "train"), _lm_blocks(tokenizer, "test")
    teacher = _gpt2(tokenizer, layers=4, seed=0)
    teacher_args = TrainingArguments(**_args(tmp_path / "teacher", 400, 2e-3))
    Trainer(model=teacher, args=teacher_args, train_dataset=train).train()

    kd = _distil(tmp_path, "kd", _gpt2(tokenizer, 2, seed=1), teacher, KD_CE, train, test, 120, 3e-3)
    ce = _distil(tmp_path, "ce", _gpt2(tokenizer, 2, seed=1), teacher, CE_ONLY, train, test, 120, 3e-3)
    print(f"\ncausal LM: KD {kd}\nCE-only {ce}")
    assert kd["eval_kl_to_teacher"] < ce["eval_kl_to_teacher"]
    assert kd["eval_perplexity"] <= ce["eval_perplexity"]
    assert kd["eval_teacher_perplexity"] == pytest.approx(ce["eval_teacher_perplexity"])


def _bert(tokenizer, layers: int, num_labels: int, seed: int) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(
        BertConfig(vocab_size=len(tokenizer), hidden_size=96, num_hidden_layers=layers, num_attention_heads=4,
                   intermediate_size=192, max_position_embeddings=128, num_labels=num_labels,
                   pad_token_id=tokenizer.pad_token_id)
    )


def test_kd_beats_ce_only_for_a_sequence_classifier(tmp_path, tokenizer):
    data = classification_dataset()
    num_labels = data["train"].features["label"].num_classes

    def encode(batch):
        return tokenizer(["<cls>" + text for text in batch["text"]], truncation=True, max_length=96)

    data = data.map(encode, batched=True, remove_columns=["text"])
    keep = ["input_ids", "attention_mask", "label"]
    data = data.remove_columns([c for c in data["train"].column_names if c not in keep])
    collator = DataCollatorWithPadding(tokenizer)
    teacher = _bert(tokenizer, layers=4, num_labels=num_labels, seed=0)
    Trainer(model=teacher, args=TrainingArguments(**_args(tmp_path / "teacher", 250, 1e-3)),
            train_dataset=data["train"], data_collator=collator).train()

    students = {}
    for name, objectives in (("kd", KD_CE), ("ce", CE_ONLY)):
        student = _bert(tokenizer, layers=2, num_labels=num_labels, seed=1)
        students[name] = _distil(tmp_path, name, student, teacher, objectives, data["train"], data["test"], 100,
                                 1e-3, collator)
    kd, ce = students["kd"], students["ce"]
    print(f"\nclassifier: KD {kd}\nCE-only {ce}")
    assert kd["eval_teacher_accuracy"] > 0.5  # the teacher learned the task (4 classes: chance is 0.25)
    assert kd["eval_kl_to_teacher"] < ce["eval_kl_to_teacher"]
    assert kd["eval_accuracy"] >= ce["eval_accuracy"]
