"""hf_distill.metrics: the shipped evaluate modules load by path offline and compute the right numbers."""

from __future__ import annotations

import doctest
import math
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset

from hf_distill import DistillationTrainer, metrics
from tests.helpers import VOCAB, config, lm_dataset, pad_collate, tiny_bert_classifier, tiny_gpt2

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def accuracy():
    return metrics.load("accuracy")


@pytest.fixture(scope="module")
def perplexity():
    return metrics.load("perplexity")


def _files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if "__pycache__" not in p.parts}


# --- the registry -------------------------------------------------------------------------------------------------


def test_available_lists_the_shipped_modules_and_setup_ships_them():
    assert metrics.available() == ["accuracy", "embedding_fidelity", "perplexity", "ranking", "retrieval"]
    assert metrics.METRICS_DIR == ROOT / "hf_distill" / "metrics"
    for name in metrics.available():
        assert (metrics.METRICS_DIR / name / f"{name}.py").is_file()
    assert '"metrics/*/*.py"' in (ROOT / "setup.py").read_text()


def test_unknown_name_suggests_the_closest_and_lists_the_rest():
    with pytest.raises(ValueError, match="Did you mean 'accuracy'") as error:
        metrics.load("acuracy")
    assert "accuracy, embedding_fidelity, perplexity, ranking, retrieval" in str(error.value)
    available = "Available metrics: accuracy, embedding_fidelity, perplexity, ranking, retrieval"
    with pytest.raises(ValueError, match=available) as error:
        metrics.load("bleu")
    assert "Did you mean" not in str(error.value)
    with pytest.raises(ValueError, match="Unknown metric"):
        metrics.load("../metrics/accuracy")


def test_import_is_light():
    code = "import sys, hf_distill.metrics; print(sorted(m for m in ('evaluate', 'torch') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "[]"


def test_modules_load_and_run_with_the_network_cut(monkeypatch):
    """Every socket connection refused: both modules still load by path and compute (the run sets the HF_*_OFFLINE
    flags too; a fresh interpreter is not used because `import evaluate` alone takes ~10 s on a small CPU)."""

    def refuse(*args, **kwargs):
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    assert metrics.load("accuracy").compute(predictions=[1, 0], references=[1, 1]) == {"accuracy": 0.5}
    assert metrics.load("perplexity").compute(predictions=[[0.0, 0.0]])["perplexity"] == 1.0


def test_loading_writes_nothing_into_the_package():
    before = _files_under(metrics.METRICS_DIR)
    metrics.load("accuracy").compute(predictions=[0], references=[0])
    metrics.load("perplexity").compute(predictions=[[1.0]])
    assert _files_under(metrics.METRICS_DIR) == before


@pytest.mark.parametrize("name", ["accuracy", "perplexity"])
def test_docstring_examples_run(name, accuracy, perplexity):
    module = {"accuracy": accuracy, "perplexity": perplexity}[name]
    assert module.description and module.inputs_description and module.citation == ""
    test = doctest.DocTestParser().get_doctest(module.inputs_description, {}, name, None, 0)
    assert test.examples, f"{name} has no example"
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


# --- accuracy -----------------------------------------------------------------------------------------------------


def test_accuracy_by_hand(accuracy):
    predictions, references = [0, 1, 2, 1], [0, 1, 2, 2]
    assert accuracy.compute(predictions=predictions, references=references) == {"accuracy": 0.75}
    assert accuracy.compute(predictions=predictions, references=references, normalize=False) == {"accuracy": 3}
    # weights: the wrong example weighs 3 of 6 -> 0.5; normalize=False gives the weight of the right ones
    weights = [1.0, 1.0, 1.0, 3.0]
    assert accuracy.compute(predictions=predictions, references=references, sample_weight=weights)["accuracy"] == 0.5
    assert accuracy.compute(
        predictions=predictions, references=references, sample_weight=[0.5, 2.0, 1.0, 3.0], normalize=False
    )["accuracy"] == pytest.approx(3.5)
    assert accuracy.compute(predictions=np.array([4, 4]), references=np.array([4, 4]))["accuracy"] == 1.0


def test_accuracy_rejects_bad_weights(accuracy):
    with pytest.raises(ValueError, match="one weight per example"):
        accuracy.compute(predictions=[0, 1], references=[0, 1], sample_weight=[1.0])
    with pytest.raises(ValueError, match="negative"):
        accuracy.compute(predictions=[0, 1], references=[0, 1], sample_weight=[1.0, -1.0])
    with pytest.raises(ValueError, match="sum to zero"):
        accuracy.compute(predictions=[0, 1], references=[0, 1], sample_weight=[0.0, 0.0])


# --- perplexity ---------------------------------------------------------------------------------------------------


def test_perplexity_by_hand(perplexity):
    out = perplexity.compute(predictions=[[math.log(2), math.log(2)]])
    assert out["perplexity"] == pytest.approx(2.0)
    assert out["mean_nll"] == pytest.approx(math.log(2))
    assert out["num_tokens"] == 2
    assert out["perplexities"] == [pytest.approx(2.0)]


def test_perplexity_is_token_weighted_not_a_mean_over_examples(perplexity):
    # 1 token at NLL log 2 and 3 tokens at NLL log 8 = 3 log 2: mean NLL = (1 + 9) log 2 / 4 = 2.5 log 2
    out = perplexity.compute(predictions=[[math.log(2)], [math.log(8)] * 3])
    assert out["mean_nll"] == pytest.approx(2.5 * math.log(2))
    assert out["perplexity"] == pytest.approx(2**2.5)  # 4 * sqrt(2) = 5.657
    assert out["num_tokens"] == 4
    assert out["perplexities"] == [pytest.approx(2.0), pytest.approx(8.0)]
    # the mean of the per-example perplexities (5.0) and exp of the mean per-example NLL (4.0) are both different
    assert np.mean(out["perplexities"]) == pytest.approx(5.0)
    assert out["perplexity"] != pytest.approx(5.0) and out["perplexity"] != pytest.approx(4.0)


def test_perplexity_edge_cases(perplexity):
    out = perplexity.compute(predictions=[[math.log(3)], []])
    assert out["perplexity"] == pytest.approx(3.0) and out["num_tokens"] == 1
    assert math.isnan(out["perplexities"][1])
    assert perplexity.compute(predictions=[[1000.0]])["perplexity"] == math.inf
    with pytest.raises(ValueError, match="at least one token"):
        perplexity.compute(predictions=[[], []])


# --- token_nlls ---------------------------------------------------------------------------------------------------


def _random_batch(seed: int = 0, batch: int = 3, length: int = 6, vocab: int = 11):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, length, vocab, generator=generator) * 3
    labels = torch.randint(0, vocab, (batch, length), generator=generator)
    labels[0, 4:] = -100  # right padding
    labels[1, :3] = -100  # an unscored prompt
    labels[2, 2] = -100  # a hole
    return logits, labels


def _reference_nlls(logits: torch.Tensor, labels: torch.Tensor, shift: int) -> list[list[float]]:
    """Float64, one position at a time: position t is scored against label t + shift."""
    logits = logits.double()
    out = []
    for b in range(logits.shape[0]):
        row = []
        for t in range(logits.shape[1] - shift):
            target = int(labels[b, t + shift])
            if target != -100:
                row.append((torch.logsumexp(logits[b, t], -1) - logits[b, t, target]).item())
        out.append(row)
    return out


def test_token_nlls_match_a_float64_reference_with_shift_and_ignored_positions():
    logits, labels = _random_batch()
    causal = metrics.token_nlls(logits, labels)
    assert [len(row) for row in causal] == [3, 3, 4]  # labels[:, 1:] that are not -100
    for got, want in zip(causal, _reference_nlls(logits, labels, shift=1), strict=True):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-5)

    aligned = metrics.token_nlls(logits, labels, causal=False)
    assert [len(row) for row in aligned] == [4, 3, 5]
    for got, want in zip(aligned, _reference_nlls(logits, labels, shift=0), strict=True):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-5)

    # pre-shifted inputs with causal=False give the causal answer; numpy inputs (EvalPrediction) work the same
    assert metrics.token_nlls(logits[:, :-1], labels[:, 1:], causal=False) == causal
    assert metrics.token_nlls(logits.numpy(), labels.numpy()) == causal


def test_token_nlls_upcast_half_precision_and_check_inputs():
    logits, labels = _random_batch(seed=1)
    half = metrics.token_nlls(logits.to(torch.bfloat16), labels)
    want = _reference_nlls(logits.to(torch.bfloat16).float(), labels, shift=1)
    for got, ref in zip(half, want, strict=True):
        assert got == pytest.approx(ref, rel=1e-5, abs=1e-5)
    with pytest.raises(ValueError, match=r"\[B, L, V\]"):
        metrics.token_nlls(logits[0], labels[0])
    bad = labels.clone()
    bad[0, 1] = 11
    with pytest.raises(ValueError, match="token id in"):
        metrics.token_nlls(logits, bad)


def test_perplexity_from_token_nlls_is_exp_of_the_cross_entropy(perplexity):
    logits, labels = _random_batch(seed=2)
    cross_entropy = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
    out = perplexity.compute(predictions=metrics.token_nlls(logits, labels))
    assert out["num_tokens"] == int((labels[:, 1:] != -100).sum())
    assert out["mean_nll"] == pytest.approx(cross_entropy.item(), rel=1e-5)
    assert out["perplexity"] == pytest.approx(math.exp(cross_entropy.item()), rel=1e-5)


def test_perplexity_matches_the_models_own_loss(perplexity):
    model = tiny_gpt2(layers=1, seed=3).eval()
    batch = pad_collate([lm_dataset([4, 9, 6], seed=3)[i] for i in range(3)])
    with torch.no_grad():
        outputs = model(**batch)
    out = perplexity.compute(predictions=metrics.token_nlls(outputs.logits, batch["labels"]))
    assert out["perplexity"] == pytest.approx(math.exp(outputs.loss.item()), rel=1e-5)


# --- compute_metrics with the trainer -----------------------------------------------------------------------------


def test_compute_metrics_in_distillation_trainer_agrees_with_its_builtin_metrics(tmp_path, accuracy, perplexity):
    def lm_metrics(eval_pred):
        # DistillationTrainer passes the student's logits and labels already shifted: causal=False
        nlls = metrics.token_nlls(eval_pred.predictions, eval_pred.label_ids, causal=False)
        return {"module_perplexity": perplexity.compute(predictions=nlls)["perplexity"]}

    args = config(tmp_path, per_device_eval_batch_size=2, objectives=[{"name": "kl"}])
    trainer = DistillationTrainer(model=tiny_gpt2(1, seed=1), teacher_model=tiny_gpt2(2, seed=2), args=args,
                                  eval_dataset=lm_dataset([3, 8, 5, 7, 4], seed=4), data_collator=pad_collate,
                                  compute_metrics=lm_metrics)
    scores = trainer.evaluate()
    assert scores["eval_module_perplexity"] == pytest.approx(scores["eval_perplexity"], rel=1e-5)

    def classification_metrics(eval_pred):
        predictions = np.argmax(eval_pred.predictions, axis=-1)
        scores = accuracy.compute(predictions=predictions, references=eval_pred.label_ids)
        return {"module_accuracy": scores["accuracy"]}

    generator = torch.Generator().manual_seed(5)
    data = Dataset.from_dict({
        "input_ids": torch.randint(1, VOCAB, (10, 6), generator=generator).tolist(),
        "attention_mask": [[1] * 6] * 10,
        "labels": torch.randint(0, 3, (10,), generator=generator).tolist(),
    })
    args = config(tmp_path, per_device_eval_batch_size=4, objectives=[{"name": "kl"}])
    trainer = DistillationTrainer(model=tiny_bert_classifier(1, seed=1), teacher_model=tiny_bert_classifier(2, seed=2),
                                  args=args, eval_dataset=data, compute_metrics=classification_metrics)
    scores = trainer.evaluate()
    assert scores["eval_module_accuracy"] == pytest.approx(scores["eval_accuracy"])
