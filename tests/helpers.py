"""Small builders shared by the tests: tiny random-config models (they stand in for real checkpoints, which cannot
be downloaded on the CI machine) and padded language-model batches."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
from datasets import Dataset
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

from hf_distill import DistillationConfig

VOCAB = 64
PAD = 0


def tiny_gpt2(layers: int = 2, vocab: int = VOCAB, hidden: int = 32, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab,
        n_positions=64,
        n_embd=hidden,
        n_layer=layers,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        pad_token_id=PAD,
    )
    return GPT2LMHeadModel(config)


def tiny_bert_classifier(layers: int = 2, num_labels: int = 3, vocab: int = VOCAB, seed: int = 0):
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config)


def lm_dataset(lengths: list[int], vocab: int = VOCAB, seed: int = 0) -> Dataset:
    """Token sequences of the given (uneven) lengths; ``labels`` = ``input_ids`` (the model shifts them)."""
    generator = torch.Generator().manual_seed(seed)
    rows = [torch.randint(1, vocab, (n,), generator=generator).tolist() for n in lengths]
    return Dataset.from_dict({"input_ids": rows, "labels": rows})


def pad_collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sequence of the micro-batch: pad id 0, attention 0, label -100."""
    longest = max(len(f["input_ids"]) for f in features)
    batch: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
    for f in features:
        n = len(f["input_ids"])
        batch["input_ids"].append(f["input_ids"] + [PAD] * (longest - n))
        batch["attention_mask"].append([1] * n + [0] * (longest - n))
        if "labels" in f:
            batch["labels"].append(f["labels"] + [-100] * (longest - n))
    if not batch["labels"]:
        del batch["labels"]
    return {k: torch.tensor(v) for k, v in batch.items()}


# `HF_DISTILL_TEST_DEVICE=cuda` runs the trainers that `config` sets up on the accelerator instead of the CPU (a check
# for a machine with a GPU; CI has none). Recipes and tests that set their own device are not affected.
TEST_ON_CPU = os.environ.get("HF_DISTILL_TEST_DEVICE", "cpu") == "cpu"


def config(tmp_path, **overrides: Any) -> DistillationConfig:
    defaults: dict[str, Any] = dict(
        output_dir=str(tmp_path / "out"),
        report_to="none",
        use_cpu=TEST_ON_CPU,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        data_seed=0,
    )
    defaults.update(overrides)
    return DistillationConfig(**defaults)


@pytest.fixture(scope="module")
def single_thread():
    """Tiny tensors: intra-op threading only adds overhead (and thrashes on a loaded machine). Use it in a module
    with ``pytestmark = pytest.mark.usefixtures("single_thread")`` after importing it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_vit(hidden: int = 16, layers: int = 2, num_labels: int = 4, seed: int = 0, image_size: int = 8):
    """A random-config ViT image classifier (patches of 4 pixels: 4 patches + the class token at image size 8)."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    config = ViTConfig(image_size=image_size, patch_size=4, num_channels=3, hidden_size=hidden,
                       num_hidden_layers=layers, num_attention_heads=2, intermediate_size=2 * hidden,
                       num_labels=num_labels, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return ViTForImageClassification(config)


def image_dataset(n: int, num_labels: int = 4, image_size: int = 8, seed: int = 0) -> Dataset:
    """``n`` random 3-channel images (``pixel_values``) with random ``labels``."""
    g = torch.Generator().manual_seed(seed)
    return Dataset.from_dict({
        "pixel_values": torch.randn(n, 3, image_size, image_size, generator=g).tolist(),
        "labels": torch.randint(0, num_labels, (n,), generator=g).tolist(),
    })


def word_tokenizer(texts: list[str], size: int = 300):
    """A word-level BERT-style tokenizer over the texts' ``size`` most frequent words: a vocabulary unlike
    MiniLM's (no second pretrained tokenizer installs offline), so the same ids mean other words to the two models."""
    import re
    from collections import Counter

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    counts = Counter(word for text in texts for word in re.findall(r"\w+", text.lower()))
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {token: i for i, token in enumerate([*special, *sorted(w for w, _ in counts.most_common(size))])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
