"""Vision recipes: the bundled digits (scikit-learn's real 8×8 handwritten digits) and how recipes accept them."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from hf_distill.data.images import digits_dataset, digits_image_processor
from hf_distill.pipeline import _collator, load_data
from hf_distill.recipes import RecipeError, load_recipe, validate_recipe

pytest.importorskip("sklearn")

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _pixels(dataset) -> np.ndarray:
    return dataset[:]["pixel_values"].numpy()


def test_digits_shapes_labels_and_a_stratified_disjoint_deterministic_split():
    train, test = digits_dataset("train"), digits_dataset("test")
    assert (len(train), len(test)) == (1437, 360)
    assert train.features["label"].names == [str(d) for d in range(10)]
    row = train[0]
    assert tuple(row["pixel_values"].shape) == (3, 16, 16) and str(row["pixel_values"].dtype) == "torch.float32"
    pixels = {name: _pixels(ds) for name, ds in (("train", train), ("test", test))}
    for values in pixels.values():
        assert values.min() >= -1.0 and values.max() <= 1.0
        assert np.array_equal(values[:, 0], values[:, 1]) and np.array_equal(values[:, 0], values[:, 2])  # grey
    # Stratified: every digit has ~20 % of its images in test (load_digits has 174-183 per class).
    counts = Counter(test[:]["label"].tolist())
    assert set(counts) == set(range(10)) and all(35 <= n <= 37 for n in counts.values())
    # Disjoint (load_digits has no duplicate images, so equal rows would mean a shared image).
    train_rows = {r.tobytes() for r in pixels["train"]}
    assert not any(r.tobytes() in train_rows for r in pixels["test"])
    # Deterministic: rebuilt from scratch, the same rows in the same order; another seed holds out other images.
    from hf_distill.data import images

    images._digits_arrays.cache_clear()
    assert np.array_equal(_pixels(digits_dataset("test")), pixels["test"])
    other = _pixels(digits_dataset("test", seed=1))
    assert not np.array_equal(other, pixels["test"])
    assert tuple(digits_dataset("train", image_size=32)[0]["pixel_values"].shape) == (3, 32, 32)
    with pytest.raises(ValueError, match="`split` must be 'train' or 'test', got 'valid'"):
        digits_dataset("valid")
    with pytest.raises(ValueError, match="`image_size` must be an integer >= 8"):
        digits_image_processor(4)


def test_the_saved_image_processor_reproduces_the_training_pixels(tmp_path):
    from sklearn.datasets import load_digits
    from transformers import AutoImageProcessor

    digits_image_processor().save_pretrained(tmp_path)  # what a vision recipe saves next to the student
    grey = np.round(load_digits().images[0] * 255 / 16).astype(np.uint8)
    image = np.repeat(grey[..., None], 3, -1)
    pixels = AutoImageProcessor.from_pretrained(tmp_path)(images=[image], return_tensors="np")["pixel_values"][0]
    rows = np.concatenate([_pixels(digits_dataset("train")), _pixels(digits_dataset("test"))])
    assert np.abs(rows - pixels).reshape(len(rows), -1).max(axis=1).min() < 1e-6


@pytest.mark.parametrize("name", ["vision-vit", "vision-vit-to-cnn"])
def test_vision_recipes_are_accepted_and_load_their_images(name):
    recipe = load_recipe(RECIPES / f"{name}.yaml", ["data.max_train_samples=8", "data.max_eval_samples=4"])
    assert recipe["task"] == "vision" and "tokenizer" not in recipe.raw
    data = load_data(recipe, "vision")
    assert len(data["train"]) == 8 and len(data["eval"]) == 4
    batch = _collator("vision", False, None)([data["train"][i] for i in range(4)])
    assert tuple(batch["pixel_values"].shape) == (4, 3, 16, 16) and tuple(batch["labels"].shape) == (4,)


def test_vision_recipe_mistakes_name_the_key():
    raw = {"task": "vision", "teacher": {"config": {"model_type": "vit"}, "finetune": {"max_steps": 2}},
           "student": {"from_teacher": {"num_layers": 1}}, "tokenizer": "bert-base-uncased",
           "data": {"train": {"bundled": "topics"}}, "objectives": [{"name": "kl"}]}
    with pytest.raises(RecipeError) as err:
        validate_recipe(raw)
    message = str(err.value)
    assert "`tokenizer`: a vision recipe reads images" in message
    assert "`data.train.bundled`: 'topics' is text; task vision needs images" in message
    raw = {**raw, "task": "classification", "data": {"train": {"bundled": "digits"}}}
    with pytest.raises(RecipeError, match=r"`data.train.bundled`: 'digits' holds images, not text; set `task: vision`"):
        validate_recipe(raw)
    with pytest.raises(RecipeError, match=r"`data.train.bundled` must be one of .*digits.*Did you mean 'digits'"):
        validate_recipe({**{k: v for k, v in raw.items() if k != "tokenizer"}, "task": "vision",
                         "data": {"train": {"bundled": "digit"}}})
