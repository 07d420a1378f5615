"""Bundled image data: scikit-learn's 8×8 handwritten digits as an image-classification dataset for vision recipes.

``sklearn.datasets.load_digits`` ships with scikit-learn (no download): 1,797 real greyscale scans of handwritten
digits 0-9, 8×8 pixels with integer intensities 0..16 (the test set of the UCI "Optical Recognition of Handwritten
Digits" data, E. Alpaydin & C. Kaynak, 1998; scikit-learn is BSD-3-Clause). Provenance and the exact preprocessing:
``README.md`` in this folder and ``docs/data.md``.

Preprocessing, done by the image processor that `digits_image_processor` returns (so the processor saved with a
student reproduces the training inputs exactly, from any greyscale or RGB image):

1. intensities 0..16 → uint8 0..255 (``round(v · 255 / 16)``), the grey value copied into 3 channels (RGB);
2. resized to ``image_size × image_size`` (default 16) with bilinear resampling;
3. rescaled by 1/255 and normalised with mean 0.5 and std 0.5 per channel: ``pixel_values`` in [-1, 1].

The split is stratified by class: a fixed ``test_fraction`` of each digit goes to ``test``
(`sklearn.model_selection.train_test_split` with ``random_state=seed``), so it never depends on anything but the
arguments. With the defaults (0.2, seed 0): 1,437 training and 360 test images.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = ["DIGITS_SIZES", "digits_dataset", "digits_image_processor"]

#: Images and classes of ``load_digits``: (images, classes).
DIGITS_SIZES = (1797, 10)

_SPLITS = ("train", "test")


def _sklearn_digits() -> Any:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError(
            "The bundled `digits` images come from scikit-learn (`sklearn.datasets.load_digits`, no download), "
            "which is not installed. Install it: pip install scikit-learn"
        ) from err
    return load_digits()


def digits_image_processor(image_size: int = 16) -> Any:
    """The ViT image processor that turns a digit (any greyscale/RGB image, uint8 0..255) into ``pixel_values``
    ``[3, image_size, image_size]`` in [-1, 1]: bilinear resize, ×1/255, mean 0.5 / std 0.5. It is saved with
    students of the `digits` recipes (``preprocessor_config.json``), so ``AutoImageProcessor.from_pretrained``
    preprocesses new images as in training."""
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 8:
        raise ValueError(f"`image_size` must be an integer >= 8 (the digits are 8×8), got {image_size!r}.")
    import transformers

    # transformers >= 5 names the PIL backend ViTImageProcessorPil (ViTImageProcessor then needs torchvision).
    cls = getattr(transformers, "ViTImageProcessorPil", None) or transformers.ViTImageProcessor
    return cls(do_resize=True, size={"height": image_size, "width": image_size}, resample=2,  # 2 = PIL bilinear
               do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=[0.5] * 3, image_std=[0.5] * 3)


@functools.lru_cache(maxsize=4)
def _digits_arrays(image_size: int, test_fraction: float, seed: int) -> dict[str, tuple[Any, Any]]:
    import numpy as np
    from sklearn.model_selection import train_test_split

    digits = _sklearn_digits()
    grey = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # [N, 8, 8], 0..255
    rgb = np.repeat(grey[..., None], 3, axis=-1)  # [N, 8, 8, 3]
    pixels = digits_image_processor(image_size)(images=list(rgb), return_tensors="np")["pixel_values"]
    index = np.arange(len(digits.target))
    train, test = train_test_split(index, test_size=test_fraction, random_state=seed, stratify=digits.target)
    return {name: (pixels[rows].astype(np.float32), digits.target[rows].astype(np.int64))
            for name, rows in (("train", train), ("test", test))}


def digits_dataset(split: str = "train", image_size: int = 16, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """The bundled image-classification task: which digit (0-9) is this 8×8 handwritten scan?

    Args:
        split: ``"train"`` or ``"test"`` (stratified by class, disjoint, fixed by ``test_fraction`` and ``seed``).
        image_size: side of the square ``pixel_values`` after bilinear upsampling (default 16).
        test_fraction: share of each class in ``test`` (default 0.2: 1,437 / 360 images).
        seed: changes which images are held out.

    Returns:
        A ``datasets.Dataset`` in torch format with ``pixel_values`` (float32 ``[3, image_size, image_size]``, in
        [-1, 1]) and ``label`` (``ClassLabel`` with names ``"0"`` … ``"9"``). Works offline.
    """
    from datasets import Array3D, ClassLabel, Dataset, Features

    if split not in _SPLITS:
        raise ValueError(f"`split` must be 'train' or 'test', got {split!r}.")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"`test_fraction` must be strictly between 0 and 1, got {test_fraction!r}.")
    pixels, labels = _digits_arrays(image_size, float(test_fraction), int(seed))[split]
    features = Features({"pixel_values": Array3D(shape=(3, image_size, image_size), dtype="float32"),
                         "label": ClassLabel(names=[str(d) for d in range(DIGITS_SIZES[1])])})
    dataset = Dataset.from_dict({"pixel_values": pixels, "label": labels.tolist()}, features=features)
    return dataset.with_format("torch")
