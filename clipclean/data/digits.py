"""scikit-learn's 1,797 real handwritten 8x8 digits (bundled, no download), upsampled and captioned: the built-in data
set every demo, test and benchmark uses, split into train / defender / test."""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from clipclean.data.classnames import resolve_classnames
from clipclean.data.dataset import ClassificationDataset, ImageCaptionDataset
from clipclean.data.pixels import DataError, as_size

DIGIT_CLASSNAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DIGIT_CAPTION_TEMPLATES = [
    "a photo of the number {}.",
    "a handwritten digit {}.",
    "an image of the digit {}.",
    "a scanned handwritten {}.",
    "the number {} written by hand.",
    "a black and white picture of the digit {}.",
]
DIGITS_SPLIT_SIZES = {"defender": 300, "test": 400}  # "train" is the rest (1,097 of 1,797)
DIGITS_SOURCE = "digits"
_DIGITS_CAPTION_SEED = 0


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as ``(float32 (1797, 8, 8) in [0, 1], int64 (1797,))``; bundled, no download."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 16.0).clip(0.0, 1.0)
    images.flags.writeable = False
    labels = bunch.target.astype(np.int64)
    labels.flags.writeable = False
    return images, labels


def digits_split_indices(seed: int = 0) -> dict[str, np.ndarray]:
    """A fixed, disjoint split of scikit-learn's 1,797 digits into train / defender / test.

    One permutation from ``np.random.default_rng(seed)``: its first 300 indices are ``"defender"`` (the
    small clean set a defender holds), the next 400 ``"test"``, the remaining 1,097 ``"train"`` (what an
    attacker poisons). Not stratified. Each array is sorted.

    Args:
        seed: permutation seed (default 0, the split every clipclean experiment uses).

    Returns:
        ``{"train": int64 (1097,), "defender": int64 (300,), "test": int64 (400,)}`` indices into
        ``sklearn.datasets.load_digits()``.

    Example::

        >>> {name: len(idx) for name, idx in digits_split_indices().items()}
        {'train': 1097, 'defender': 300, 'test': 400}
    """
    n = len(_digits_arrays()[1])
    permutation = np.random.default_rng(seed).permutation(n)
    n_defender, n_test = DIGITS_SPLIT_SIZES["defender"], DIGITS_SPLIT_SIZES["test"]
    return {
        "train": np.sort(permutation[n_defender + n_test :]),
        "defender": np.sort(permutation[:n_defender]),
        "test": np.sort(permutation[n_defender : n_defender + n_test]),
    }


def requested_digits_split(source: str, split: str | None, default: str) -> str | None:
    """The split a ``"digits[:split]"`` source asks for, or ``None`` if ``source`` is not the digits set."""
    name, _, source_split = source.partition(":")
    if name != DIGITS_SOURCE:
        return None
    if source_split and split is not None and source_split != split:
        raise DataError(f"{source}: conflicting splits '{source_split}' (in the source) and '{split}' (split=)")
    chosen = source_split or split or default
    if chosen not in ("train", "defender", "test"):
        raise DataError(f"{source}: unknown digits split '{chosen}' (use 'train', 'defender' or 'test')")
    return chosen


def digits_tensors(split: str, image_size: int | tuple[int, int]) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """``(images (N, 3, H, W) in [0, 1], labels (N,), global indices (N,))`` for one digits split."""
    images, labels = _digits_arrays()
    indices = digits_split_indices()[split]
    small = torch.from_numpy(images[indices]).unsqueeze(1)  # (N, 1, 8, 8)
    upsampled = F.interpolate(small, size=as_size(image_size), mode="bilinear", align_corners=False).clamp_(0, 1)
    # Broadcast (a view) rather than copy the grey channel three times: a third of the memory at 224 px.
    return upsampled.expand(-1, 3, -1, -1), labels[indices], indices


def digit_captions(indices: np.ndarray, labels: np.ndarray) -> list[str]:
    """One caption per digit: a template fixed by the sample's global index, filled with its class name."""
    n = len(_digits_arrays()[1])
    choice = np.random.default_rng(_DIGITS_CAPTION_SEED).integers(len(DIGIT_CAPTION_TEMPLATES), size=n)
    return [DIGIT_CAPTION_TEMPLATES[choice[i]].format(DIGIT_CLASSNAMES[y]) for i, y in zip(indices, labels)]


def digits_caption_dataset(split: str, image_size: int | tuple[int, int]) -> ImageCaptionDataset:
    """One digits split as image-caption pairs (with ``labels`` and ``classnames``)."""
    images, labels, indices = digits_tensors(split, image_size)
    return ImageCaptionDataset(
        images,
        digit_captions(indices, labels),
        labels=labels.tolist(),
        classnames=DIGIT_CLASSNAMES,
        source=f"{DIGITS_SOURCE}:{split}",
    )


def digits_classification_dataset(
    split: str, image_size: int | tuple[int, int], classnames: str | list[str] | None = None
) -> ClassificationDataset:
    """One digits split as labelled images; ``classnames`` name the "folders" ``"0"`` ... ``"9"``
    (:func:`~clipclean.data.classnames.resolve_classnames`; default :data:`DIGIT_CLASSNAMES`)."""
    images, labels, _ = digits_tensors(split, image_size)
    names = (
        DIGIT_CLASSNAMES
        if classnames is None
        else resolve_classnames([str(d) for d in range(10)], classnames, DIGITS_SOURCE)
    )
    return ClassificationDataset(images, labels.tolist(), names, source=f"{DIGITS_SOURCE}:{split}")
