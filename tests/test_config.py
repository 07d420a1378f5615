"""DistillationConfig validation, the objectives registry, and the public API."""

from __future__ import annotations

import json

import pytest
from transformers import HfArgumentParser

import hf_distill
from hf_distill import DistillationConfig
from hf_distill.objectives import OBJECTIVES
from hf_distill.registry import Registry


def make(tmp_path, **kwargs) -> DistillationConfig:
    return DistillationConfig(output_dir=str(tmp_path / "out"), report_to="none", **kwargs)


def test_defaults_and_normalisation(tmp_path):
    config = make(tmp_path)
    assert config.objectives == [{"name": "kl", "weight": 1.0, "temperature": 1.0}]
    config = make(tmp_path, objectives=["ce", {"name": "kl", "temperature": 2}], teacher_dtype="bf16")
    assert config.objectives == [{"name": "ce", "weight": 1.0}, {"name": "kl", "temperature": 2, "weight": 1.0}]
    assert config.teacher_dtype == "bfloat16"
    json.loads(config.to_json_string())  # serialisable like any TrainingArguments


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"objectives": [{"name": "kll"}]}, r"`objectives\[0\]`: Unknown objective 'kll'. Did you mean 'kl'\?"),
        ({"objectives": [{"name": "kl", "temprature": 2}]}, r"no parameter 'temprature'. Did you mean 'temperature'"),
        ({"objectives": [{"name": "kl", "weight": -1}]}, r"`objectives\[0\]`.weight must be a finite number >= 0"),
        ({"objectives": [{"name": "kl", "weight": "high"}]}, r"weight must be a finite number >= 0, got 'high'"),
        ({"objectives": [{"name": "kl", "temperature": 0}]}, r"`temperature` must be a finite number > 0, got 0"),
        ({"objectives": [{"name": "jsd", "beta": 1.5}]}, r"`beta` must be a number in \[0, 1\], got 1.5"),
        ({"objectives": [{"weight": 1.0}]}, r"`objectives\[0\]` has no `name`"),
        ({"objectives": []}, r"`objectives` is empty"),
        ({"objectives": {"name": "kl"}}, r"`objectives` must be a list"),
        ({"objectives": "[{'name': 'kl'}]"}, r"`objectives` given as a string must be JSON"),
        ({"task": "lang"},
         r"`task` must be one of auto, classification, embedding, language, ranking, vision, got 'lang'. Did"),
        ({"teacher_dtype": "bfloat"}, r"`teacher_dtype` must be one of .* Did you mean 'bfloat16'"),
        ({"teacher_model_init_kwargs": {"dtype": "float16"}}, r"set `teacher_dtype` instead"),
    ],
)
def test_bad_values_fail_with_the_key_and_the_fix(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(tmp_path, **kwargs)
    assert not (tmp_path / "out").exists()


def test_command_line_parsing_with_json_values():
    parser = HfArgumentParser(DistillationConfig)
    (config,) = parser.parse_args_into_dataclasses(
        ["--output_dir", "x", "--report_to", "none", "--objectives", '[{"name": "jsd", "beta": 0.25}]',
         "--teacher_dtype", "fp16", "--teacher_model_init_kwargs", '{"revision": "v1"}']
    )
    assert config.objectives == [{"name": "jsd", "beta": 0.25, "weight": 1.0}]
    assert config.teacher_dtype == "float16" and config.teacher_model_init_kwargs == {"revision": "v1"}


def test_registry_bare_and_named_registration_and_duplicates():
    registry: Registry[type] = Registry("widget")

    @registry.register
    class Alpha:
        name = "alpha"

    @registry.register("beta")
    class Beta: ...

    assert registry.get("alpha") is Alpha and registry.get("beta") is Beta and registry.names() == ["alpha", "beta"]
    with pytest.raises(ValueError, match="already registered"):
        registry.register("alpha")(Beta)
    with pytest.raises(KeyError, match="Unknown widget 'alpah'. Did you mean 'alpha'\\? Registered widgets"):
        registry.get("alpah")


def test_builtin_objectives_and_public_api():
    assert {"kl", "reverse_kl", "jsd", "ce"} <= set(OBJECTIVES.names())
    for name in hf_distill.__all__:
        assert getattr(hf_distill, name) is not None
    with pytest.raises(AttributeError):
        hf_distill.does_not_exist  # noqa: B018
