"""Image-caption and classification datasets that yield un-normalised [0, 1] pixels.

Every dataset here returns images as ``FloatTensor (3, H, W)`` with values in [0, 1] and **no** mean/std
normalisation: :class:`clipclean.models.PixelCLIP` normalises inside ``encode_image``, so triggers can be
pasted into the pixels the datasets return, exactly as an attacker edits an image file.

Image-caption sources (:func:`load_image_caption_dataset`):

* ``"digits"`` / ``"digits:train"`` / ``"digits:defender"`` / ``"digits:test"``: scikit-learn's 1,797 real
  handwritten 8x8 digits, upsampled and captioned from :data:`DIGIT_CAPTION_TEMPLATES` (built in, in memory);
* a ``.csv`` / ``.tsv`` file in the CleanCLIP format (an image-path column and a caption column; relative
  paths resolve against the file's folder);
* an imagefolder with ``metadata.jsonl`` or ``metadata.csv`` (the Hugging Face ``datasets`` convention:
  ``file_name`` plus a caption column);
* a folder written by ``datasets.Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``;
* webdataset shards: ``"shards/cc3m-{0000..0099}.tar"`` (``KEY.jpg`` + ``KEY.txt`` members; brace ranges, globs,
  ``::`` lists), read by :mod:`clipclean.webdataset` (which also streams them per process).

Classification sources (:func:`load_classification_dataset`): ``"digits[:split]"`` or a class-per-folder
tree (ImageNet synset folders map to the OpenAI class names; other folders take their names or a
``classnames`` file).

Bad input (a missing or undecodable image, an empty caption, a missing column, no rows at all) raises
:class:`DataError` naming the file and row; ``skip_bad=True`` drops bad rows with one logged warning.

Example::

    >>> from clipclean.data import load_image_caption_dataset, collate_pairs
    >>> dataset = load_image_caption_dataset("digits:defender", image_size=32)
    >>> image, caption = dataset[0]
    >>> image.shape, float(image.min()) >= 0.0, float(image.max()) <= 1.0
    (torch.Size([3, 32, 32]), True, True)
    >>> loader = torch.utils.data.DataLoader(dataset, batch_size=8, collate_fn=collate_pairs)
    >>> images, captions = next(iter(loader))      # (8, 3, 32, 32) in [0, 1], list of 8 str
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from clipclean.errors import ClipcleanError

logger = logging.getLogger(__name__)

__all__ = [
    "DIGIT_CAPTION_TEMPLATES",
    "DIGIT_CLASSNAMES",
    "IMAGE_EXTENSIONS",
    "ClassificationDataset",
    "DataError",
    "ImageCaptionDataset",
    "collate_pairs",
    "digits_split_indices",
    "load_classification_dataset",
    "load_image_caption_dataset",
    "pixel_transform",
]

DIGIT_CLASSNAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DIGIT_CAPTION_TEMPLATES = [
    "a photo of the number {}.",
    "a handwritten digit {}.",
    "an image of the digit {}.",
    "a scanned handwritten {}.",
    "the number {} written by hand.",
    "a black and white picture of the digit {}.",
]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")

DIGITS_SPLIT_SIZES = {"defender": 300, "test": 400}  # "train" is the rest (1,097 of 1,797)
IMAGE_COLUMN_CANDIDATES = ("image", "filepath", "path", "file_name", "filename", "image_path")
CAPTION_COLUMN_CANDIDATES = ("caption", "text", "title")
METADATA_FILENAMES = ("metadata.jsonl", "metadata.csv")
_DIGITS_SOURCE = "digits"
_DIGITS_CAPTION_SEED = 0
_SYNSET_PATTERN = re.compile(r"^n\d{8}$")

ImageReference = str | os.PathLike | bytes | dict | Image.Image
"""What a file-backed dataset stores per sample: a path, encoded bytes, a ``datasets`` image dict
(``{"bytes": ..., "path": ...}``) or a decoded PIL image."""


class DataError(ClipcleanError, ValueError):
    """Bad dataset input; the message names the file (and row) at fault."""


# ----------------------------------------------------------------------------------------------------------------
# Pixels
# ----------------------------------------------------------------------------------------------------------------


def _as_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    size = (int(image_size), int(image_size)) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"image_size must be a positive int or (height, width), got {image_size!r}")
    return size


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB. 16-bit greyscale (Pillow's ``I;16*`` modes, and ``I``, as it opens some 16-bit PNGs) is scaled by
    255 / 65535 -- ``convert("RGB")`` would clip it at 255 and turn a mid-grey image white --, float ``F`` is taken as
    [0, 1]; other modes (greyscale ``L``, palette, ``RGBA``/``LA`` whose alpha is dropped as open_clip's
    preprocessing does, CMYK) go through ``convert("RGB")``."""
    if image.mode == "I" or image.mode.startswith("I;16"):
        values = np.asarray(image, dtype=np.float64).clip(0, 65535) * (255.0 / 65535.0)
        image = Image.fromarray(np.round(values).astype(np.uint8))
    elif image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64)).clip(0.0, 1.0) * 255.0
        image = Image.fromarray(np.round(values).astype(np.uint8))
    return image.convert("RGB")


class _PixelTransform:
    """Picklable ``PIL.Image -> FloatTensor (3, H, W)`` in [0, 1] (see :func:`pixel_transform`)."""

    def __init__(self, image_size: int | tuple[int, int]) -> None:
        self.image_size = _as_size(image_size)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        height, width = self.image_size
        image = _to_rgb(image)
        in_width, in_height = image.size
        scale = max(height / in_height, width / in_width)
        new_width, new_height = max(width, round(in_width * scale)), max(height, round(in_height * scale))
        if (new_width, new_height) != (in_width, in_height):
            image = image.resize((new_width, new_height), Image.Resampling.BICUBIC)
        left, top = int(round((new_width - width) / 2.0)), int(round((new_height - height) / 2.0))
        image = image.crop((left, top, left + width, top + height))
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8))  # (H, W, 3), a writable copy
        return pixels.permute(2, 0, 1).float().div_(255.0)

    def __repr__(self) -> str:
        return f"pixel_transform(image_size={self.image_size})"


def pixel_transform(image_size: int | tuple[int, int]) -> Callable[[Image.Image], torch.Tensor]:
    """The image-file preprocessing of every clipclean dataset: pixels in [0, 1], not normalised.

    Converts to RGB, resizes (bicubic) so the image covers ``image_size`` (the shorter side matches for a
    square size), center-crops to ``image_size`` and returns ``FloatTensor (3, H, W)`` with values in
    [0, 1]. Mean/std normalisation is left to the model (:meth:`clipclean.models.PixelCLIP.encode_image`).

    Args:
        image_size: ``S`` for ``S x S`` or ``(H, W)``.

    Returns:
        A picklable callable (safe for ``DataLoader`` worker processes).

    Example::

        >>> transform = pixel_transform(32)
        >>> transform(PIL.Image.new("L", (64, 48), color=255)).shape
        torch.Size([3, 32, 32])
    """
    return _PixelTransform(image_size)


def _open_image(reference: ImageReference) -> Image.Image:
    """Open (lazily, PIL-style) whatever a dataset stores for one image."""
    if isinstance(reference, Image.Image):
        return reference
    if hasattr(reference, "open_image"):  # an image inside a tar shard (clipclean.webdataset.TarMember)
        return reference.open_image()
    if isinstance(reference, bytes):
        return Image.open(io.BytesIO(reference))
    if isinstance(reference, dict):
        if reference.get("bytes"):
            return Image.open(io.BytesIO(reference["bytes"]))
        if reference.get("path"):
            return Image.open(reference["path"])
        raise FileNotFoundError("image entry has neither bytes nor a path")
    return Image.open(reference)


def _describe_image(reference: ImageReference) -> str:
    if isinstance(reference, dict):
        return str(reference.get("path") or "<embedded bytes>")
    if isinstance(reference, (bytes, Image.Image)):
        return f"<{type(reference).__name__}>"
    return str(reference)


def _image_missing(reference: ImageReference) -> bool:
    """Whether a file-backed reference points at no file (embedded bytes and PIL images never are)."""
    if isinstance(reference, dict):
        return not reference.get("bytes") and not (reference.get("path") and os.path.isfile(reference["path"]))
    if isinstance(reference, (bytes, Image.Image)):
        return False
    if hasattr(reference, "exists"):  # clipclean.webdataset.TarMember
        return not reference.exists()
    return not os.path.isfile(reference)


_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _verify_image(reference: ImageReference) -> str | None:
    """``None`` if the image opens and passes ``PIL.Image.verify``, else the reason it does not."""
    if isinstance(reference, Image.Image):
        return None
    try:
        with _open_image(reference) as image:
            image.verify()
    except _DECODE_ERRORS as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


# ----------------------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------------------


class _PixelDataset(Dataset):
    """Shared storage for the two dataset kinds: an in-memory tensor or lazily decoded image references."""

    def __init__(
        self,
        images: torch.Tensor | Sequence[ImageReference],
        image_size: int | tuple[int, int] | None,
        source: str,
        locations: Sequence[str] | None,
    ) -> None:
        if isinstance(images, torch.Tensor):
            if images.dim() != 4 or images.shape[1] not in (1, 3):
                raise ValueError(f"expected an image tensor of shape (N, 3, H, W), got {tuple(images.shape)}")
            tensor_size = (int(images.shape[-2]), int(images.shape[-1]))
            if image_size is not None and _as_size(image_size) != tensor_size:
                raise ValueError(f"image_size {image_size!r} does not match the image tensor's {tensor_size}")
            self.image_size = tensor_size
            self._tensor: torch.Tensor | None = images.float().expand(-1, 3, -1, -1)
            self._references: Sequence[ImageReference] | None = None
            self._transform: Callable[[Image.Image], torch.Tensor] | None = None
        else:
            self.image_size = _as_size(32 if image_size is None else image_size)
            self._tensor = None
            self._references = images
            self._transform = pixel_transform(self.image_size)
        if locations is not None and len(locations) != len(self):
            raise ValueError(f"got {len(locations)} locations for {len(self)} images")
        self.source = source
        self._locations = locations

    def __len__(self) -> int:
        return len(self._tensor) if self._tensor is not None else len(self._references)

    def _location(self, index: int) -> str:
        return self._locations[index] if self._locations is not None else f"{self.source} sample {index}"

    def _load_image(self, index: int) -> torch.Tensor:
        if self._tensor is not None:
            # A contiguous copy: the stored digits tensor is a channel-broadcast view and must stay untouched.
            return self._tensor[index].clone(memory_format=torch.contiguous_format)
        reference = self._references[index]
        if isinstance(reference, Image.Image):  # already decoded; not ours to close
            return self._transform(reference)
        try:
            with _open_image(reference) as image:
                return self._transform(image)
        except FileNotFoundError as exc:
            raise DataError(f"{self._location(index)}: image '{_describe_image(reference)}' not found") from exc
        except _DECODE_ERRORS as exc:
            raise DataError(
                f"{self._location(index)}: cannot decode image '{_describe_image(reference)}' "
                f"({type(exc).__name__}: {exc})"
            ) from exc


class ImageCaptionDataset(_PixelDataset):
    """Image-caption pairs; ``dataset[i] -> (FloatTensor (3, H, W) in [0, 1], caption: str)``.

    Usually built by :func:`load_image_caption_dataset`; construct it directly to wrap images you already
    have (e.g. a poisoned copy of a dataset).

    Args:
        images: ``FloatTensor (N, 3, H, W)`` in [0, 1] kept in memory (``(N, 1, H, W)`` is broadcast to 3
            channels), or a sequence of ``N`` image references (file paths, encoded bytes, ``datasets``
            image dicts or PIL images) decoded lazily with :func:`pixel_transform`.
        captions: ``N`` captions.
        labels: optional ``N`` class indices into ``classnames`` (e.g. for the digits set).
        classnames: optional class names.
        source: where the data came from (for provenance and messages).
        image_size: output ``(H, W)`` for file-backed images (default 32); must match a tensor's size.
        locations: optional per-sample ``"file row r"`` strings that decoding errors quote.

    Attributes:
        captions: ``list[str]``, available without decoding any image.
        labels, classnames: as given (``None`` when the source has no classes).
        source: as given.
        image_size: ``(H, W)`` of every returned image.

    Example::

        >>> dataset = ImageCaptionDataset(torch.rand(2, 3, 32, 32), ["a cat.", "a dog."], source="memory")
        >>> dataset[1][1]
        'a dog.'
    """

    def __init__(
        self,
        images: torch.Tensor | Sequence[ImageReference],
        captions: Sequence[str],
        labels: Sequence[int] | None = None,
        classnames: Sequence[str] | None = None,
        source: str = "",
        image_size: int | tuple[int, int] | None = None,
        locations: Sequence[str] | None = None,
    ) -> None:
        super().__init__(images, image_size, source, locations)
        self.captions = [str(caption) for caption in captions]
        self.labels = None if labels is None else [int(label) for label in labels]
        self.classnames = None if classnames is None else list(classnames)
        if len(self.captions) != len(self):
            raise ValueError(f"got {len(self.captions)} captions for {len(self)} images")
        if self.labels is not None and len(self.labels) != len(self):
            raise ValueError(f"got {len(self.labels)} labels for {len(self)} images")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        return self._load_image(index), self.captions[index]

    def __repr__(self) -> str:
        return f"ImageCaptionDataset(source={self.source!r}, size={len(self)}, image_size={self.image_size})"


class ClassificationDataset(_PixelDataset):
    """Labelled images; ``dataset[i] -> (FloatTensor (3, H, W) in [0, 1], label: int)``.

    Args:
        images: as for :class:`ImageCaptionDataset`.
        labels: ``N`` class indices into ``classnames``.
        classnames: the class names, in label order (what zero-shot prompts are built from).
        source, image_size, locations: as for :class:`ImageCaptionDataset`.

    Attributes:
        labels: ``list[int]``; classnames: ``list[str]``; source: ``str``; image_size: ``(H, W)``.

    Example::

        >>> dataset = load_classification_dataset("digits:test", image_size=32)
        >>> image, label = dataset[0]
        >>> dataset.classnames[label] in DIGIT_CLASSNAMES
        True
    """

    def __init__(
        self,
        images: torch.Tensor | Sequence[ImageReference],
        labels: Sequence[int],
        classnames: Sequence[str],
        source: str = "",
        image_size: int | tuple[int, int] | None = None,
        locations: Sequence[str] | None = None,
    ) -> None:
        super().__init__(images, image_size, source, locations)
        self.labels = [int(label) for label in labels]
        self.classnames = list(classnames)
        if len(self.labels) != len(self):
            raise ValueError(f"got {len(self.labels)} labels for {len(self)} images")
        if self.labels and not 0 <= min(self.labels) <= max(self.labels) < len(self.classnames):
            raise ValueError(
                f"labels must lie in [0, {len(self.classnames)}), got {min(self.labels)}..{max(self.labels)}"
            )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self._load_image(index), self.labels[index]

    def __repr__(self) -> str:
        return (
            f"ClassificationDataset(source={self.source!r}, size={len(self)}, classes={len(self.classnames)}, "
            f"image_size={self.image_size})"
        )


def collate_pairs(batch: Sequence[tuple[torch.Tensor, Any]]) -> tuple[torch.Tensor, list | torch.Tensor]:
    """Collate ``(image, caption)`` or ``(image, label)`` pairs for a ``DataLoader``.

    Returns:
        ``(images, targets)``: images stacked to ``(B, 3, H, W)``; targets a ``LongTensor (B,)`` when every
        target is an integer (labels), otherwise the list of targets (captions).

    Example::

        >>> images, captions = collate_pairs([(torch.zeros(3, 8, 8), "a"), (torch.ones(3, 8, 8), "b")])
        >>> images.shape, captions
        (torch.Size([2, 3, 8, 8]), ['a', 'b'])
    """
    if len(batch) == 0:
        raise ValueError("cannot collate an empty batch")
    images = torch.stack([item[0] for item in batch])
    targets = [item[1] for item in batch]
    if all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in targets):
        return images, torch.tensor([int(t) for t in targets], dtype=torch.long)
    if all(isinstance(t, torch.Tensor) and t.dim() == 0 and not t.is_floating_point() for t in targets):
        return images, torch.stack(targets).long()
    return images, targets


# ----------------------------------------------------------------------------------------------------------------
# Row checking shared by every file-backed source
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class _Row:
    location: str  # "captions.csv row 3 (line 4)"
    image: ImageReference | None
    shown: str  # the image as the source wrote it, for messages
    caption: Any = None
    label: int | None = None
    index: int = -1  # position in the source (save_to_disk datasets)


class _RowChecker:
    """Validates rows one by one, then raises on (or warns once about) the bad ones."""

    def __init__(self, source: str, skip_bad: bool, needs_caption: bool) -> None:
        self.source = source
        self.skip_bad = skip_bad
        self.needs_caption = needs_caption
        self.total = 0
        self.problems: list[str] = []

    def problem(self, row: _Row) -> str | None:
        if row.image is None:
            return "empty image path"
        if self.needs_caption and (not isinstance(row.caption, str) or not row.caption.strip()):
            return f"empty caption for image '{row.shown}'"
        if _image_missing(row.image):
            return f"image '{row.shown}' not found"
        if self.skip_bad:  # decoding every image is the price of skipping undecodable ones up front
            reason = _verify_image(row.image)
            if reason is not None:
                return f"cannot decode image '{row.shown}' ({reason})"
        return None

    def reject(self, location: str, problem: str) -> None:
        """Count a row that is bad before it can even be made into a :class:`_Row`."""
        self.total += 1
        self.problems.append(f"{location}: {problem}")

    def keep(self, row: _Row) -> bool:
        problem = self.problem(row)
        if problem is not None:
            self.reject(row.location, problem)
            return False
        self.total += 1
        return True

    def finish(self, kept: int) -> None:
        if self.total == 0:
            raise DataError(f"{self.source}: the dataset is empty (no rows)")
        if self.problems and not self.skip_bad:
            more = len(self.problems) - 1
            suffix = f" (and {more} more bad row{'s' * (more > 1)}; skip_bad=True skips them)" if more else ""
            raise DataError(self.problems[0] + suffix)
        if self.problems:
            logger.warning(
                "%s: skipped %d bad row(s) of %d; first: %s",
                self.source,
                len(self.problems),
                self.total,
                self.problems[0],
            )
        if kept == 0:
            raise DataError(f"{self.source}: no usable rows left after skipping {len(self.problems)} bad row(s)")


def _pick_column(
    columns: Sequence[str], requested: str | None, candidates: Sequence[str], where: str, kind: str
) -> str:
    """The column to use for ``kind`` ("image"/"caption"): ``requested`` or the first candidate present."""
    by_lower = {column.lower(): column for column in reversed(list(columns))}
    wanted = [requested] if requested is not None else list(candidates)
    for name in wanted:
        if name.lower() in by_lower:
            return by_lower[name.lower()]
    if requested is not None:
        raise DataError(f"{where}: no {kind} column '{requested}' (columns: {list(columns)})")
    raise DataError(
        f"{where}: no {kind} column found; looked for {list(candidates)} (case-insensitive) in columns "
        f"{list(columns)}; pass {kind}_column= to choose one"
    )


# ----------------------------------------------------------------------------------------------------------------
# Digits
# ----------------------------------------------------------------------------------------------------------------


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


def _digits_split(source: str, split: str | None, default: str) -> str | None:
    """The split a ``"digits[:split]"`` source asks for, or ``None`` if ``source`` is not the digits set."""
    name, _, source_split = source.partition(":")
    if name != _DIGITS_SOURCE:
        return None
    if source_split and split is not None and source_split != split:
        raise DataError(f"{source}: conflicting splits '{source_split}' (in the source) and '{split}' (split=)")
    chosen = source_split or split or default
    if chosen not in ("train", "defender", "test"):
        raise DataError(f"{source}: unknown digits split '{chosen}' (use 'train', 'defender' or 'test')")
    return chosen


def _digits_tensors(split: str, image_size: int | tuple[int, int]) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """``(images (N, 3, H, W) in [0, 1], labels (N,), global indices (N,))`` for one digits split."""
    images, labels = _digits_arrays()
    indices = digits_split_indices()[split]
    small = torch.from_numpy(images[indices]).unsqueeze(1)  # (N, 1, 8, 8)
    upsampled = F.interpolate(small, size=_as_size(image_size), mode="bilinear", align_corners=False).clamp_(0, 1)
    # Broadcast (a view) rather than copy the grey channel three times: a third of the memory at 224 px.
    return upsampled.expand(-1, 3, -1, -1), labels[indices], indices


def _digit_captions(indices: np.ndarray, labels: np.ndarray) -> list[str]:
    """One caption per digit: a template fixed by the sample's global index, filled with its class name."""
    n = len(_digits_arrays()[1])
    choice = np.random.default_rng(_DIGITS_CAPTION_SEED).integers(len(DIGIT_CAPTION_TEMPLATES), size=n)
    return [DIGIT_CAPTION_TEMPLATES[choice[i]].format(DIGIT_CLASSNAMES[y]) for i, y in zip(indices, labels)]


# ----------------------------------------------------------------------------------------------------------------
# Table files (CSV / TSV / JSONL)
# ----------------------------------------------------------------------------------------------------------------


def _read_table(path: Path) -> tuple[list[str], list[tuple[str, dict[str, Any] | None]]]:
    """``(columns, [(location, record or None if unparsable), ...])`` of a .csv, .tsv or .jsonl file."""
    records: list[tuple[str, dict[str, Any] | None]] = []
    try:
        if path.suffix.lower() == ".jsonl":
            columns: dict[str, None] = {}
            with path.open(encoding="utf-8-sig") as f:
                for line_number, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    location = f"{path} row {len(records) + 1} (line {line_number})"
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        record = None
                    if not isinstance(record, dict):
                        records.append((location, None))
                        continue
                    columns.update(dict.fromkeys(record))
                    records.append((location, record))
            return list(columns), records
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            header = list(reader.fieldnames or [])
            for row_number, record in enumerate(reader, start=1):
                records.append((f"{path} row {row_number} (line {reader.line_num})", record))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the file ({type(exc).__name__}: {exc})") from exc
    if not header:
        raise DataError(f"{path}: the dataset is empty (no header row)")
    return header, records


def _resolve_path(value: str, base: Path) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else base / path)


def _load_table_pairs(
    path: Path,
    image_size: int | tuple[int, int],
    skip_bad: bool,
    image_column: str | None,
    caption_column: str | None,
) -> ImageCaptionDataset:
    columns, records = _read_table(path)
    if not records:
        raise DataError(f"{path}: the dataset is empty (no rows)")
    image_column = _pick_column(columns, image_column, IMAGE_COLUMN_CANDIDATES, str(path), "image")
    caption_column = _pick_column(columns, caption_column, CAPTION_COLUMN_CANDIDATES, str(path), "caption")
    checker = _RowChecker(str(path), skip_bad, needs_caption=True)
    kept: list[_Row] = []
    for location, record in records:
        if record is None:
            checker.reject(location, "not a JSON object")
            continue
        value = record.get(image_column)
        shown = "" if value is None else str(value).strip()
        caption = record.get(caption_column)
        row = _Row(location, _resolve_path(shown, path.parent) if shown else None, shown, caption)
        if checker.keep(row):
            kept.append(row)
    checker.finish(len(kept))
    return ImageCaptionDataset(
        [row.image for row in kept],
        [row.caption.strip() for row in kept],
        source=str(path),
        image_size=image_size,
        locations=[row.location for row in kept],
    )


# ----------------------------------------------------------------------------------------------------------------
# datasets.save_to_disk folders
# ----------------------------------------------------------------------------------------------------------------


def _is_saved_hf_dataset(directory: Path) -> bool:
    return (directory / "dataset_dict.json").is_file() or (
        (directory / "state.json").is_file() and (directory / "dataset_info.json").is_file()
    )


class _SavedDatasetImages(Sequence):
    """Lazy image references from one column of a ``datasets.Dataset`` (picklable, decoded by clipclean)."""

    def __init__(self, dataset: Any, column: str, base: Path, indices: Sequence[int]) -> None:
        self._dataset = dataset.select_columns([column])
        self._column = column
        self._base = base
        self._indices = list(indices)

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, index: int) -> ImageReference:
        return _saved_image_reference(self._dataset[self._indices[index]][self._column], self._base)


def _saved_image_reference(value: Any, base: Path) -> ImageReference | None:
    """A ``datasets`` image value (an undecoded dict or a path string) as an :data:`ImageReference`."""
    if isinstance(value, dict):
        path = value.get("path")
        if not value.get("bytes") and path and not os.path.isabs(path) and not os.path.isfile(path):
            return {"bytes": None, "path": str(base / path)}
        return value
    if isinstance(value, str) and value.strip():
        return _resolve_path(value.strip(), base)
    return None


def _load_saved_pairs(
    directory: Path,
    image_size: int | tuple[int, int],
    split: str | None,
    skip_bad: bool,
    image_column: str | None,
    caption_column: str | None,
) -> ImageCaptionDataset:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(directory))
    except Exception as exc:  # datasets raises several unrelated types for a damaged folder
        raise DataError(f"{directory}: cannot load the save_to_disk dataset ({type(exc).__name__}: {exc})") from exc
    where = str(directory)
    if isinstance(loaded, datasets.DatasetDict):
        split = split or "train"
        if split not in loaded:
            raise DataError(f"{directory}: no split '{split}' (splits: {list(loaded)})")
        loaded, where = loaded[split], f"{directory}[{split}]"
    features = loaded.features
    columns = list(features)
    if image_column is None:
        typed = [name for name in columns if isinstance(features[name], datasets.Image)]
        image_column = typed[0] if typed else _pick_column(columns, None, IMAGE_COLUMN_CANDIDATES, where, "image")
    else:
        image_column = _pick_column(columns, image_column, (), where, "image")
    if isinstance(features[image_column], datasets.Image):
        loaded = loaded.cast_column(image_column, datasets.Image(decode=False))
    elif getattr(features[image_column], "dtype", None) not in ("string", "large_string"):
        raise DataError(f"{where}: image column '{image_column}' holds {features[image_column]}, not images or paths")
    caption_column = _pick_column(columns, caption_column, CAPTION_COLUMN_CANDIDATES, where, "caption")
    label_column = next(
        (name for name in ("label", "labels") if isinstance(features.get(name), datasets.ClassLabel)), None
    )
    wanted = [image_column, caption_column] + ([label_column] if label_column else [])

    checker = _RowChecker(where, skip_bad, needs_caption=True)
    kept: list[_Row] = []
    for index, record in enumerate(loaded.select_columns(wanted)):
        image = _saved_image_reference(record[image_column], directory)
        shown = _describe_image(image) if image is not None else ""
        label = record[label_column] if label_column else None
        row = _Row(f"{where} row {index}", image, shown, record[caption_column], label, index)
        if checker.keep(row):
            row.image = None  # drop embedded bytes; images are re-read lazily from the arrow file
            kept.append(row)
    checker.finish(len(kept))
    return ImageCaptionDataset(
        _SavedDatasetImages(loaded, image_column, directory, [row.index for row in kept]),
        [row.caption.strip() for row in kept],
        labels=[row.label for row in kept] if label_column else None,
        classnames=features[label_column].names if label_column else None,
        source=where,
        image_size=image_size,
        locations=[row.location for row in kept],
    )


# ----------------------------------------------------------------------------------------------------------------
# Loaders
# ----------------------------------------------------------------------------------------------------------------


def _find_metadata(directory: Path, split: str | None) -> Path | None:
    folders = [directory / split, directory] if split else [directory, directory / "train"]
    for folder in folders:
        for name in METADATA_FILENAMES:
            if (folder / name).is_file():
                return folder / name
    return None


def load_image_caption_dataset(
    source: str,
    image_size: int | tuple[int, int] = 32,
    split: str | None = None,
    skip_bad: bool = False,
    image_column: str | None = None,
    caption_column: str | None = None,
) -> ImageCaptionDataset:
    """Load image-caption pairs from any supported source (see the module docstring for the formats).

    Args:
        source: ``"digits"`` or ``"digits:<split>"``; a ``.csv``/``.tsv`` file (CleanCLIP format); an
            imagefolder with ``metadata.jsonl``/``metadata.csv``; a ``save_to_disk`` folder; or webdataset
            ``.tar`` shards (``"data/shard-{000..009}.tar"``).
        image_size: output size ``S`` or ``(H, W)`` (default 32, the tiny configs' size).
        split: digits split (``"train"`` default, ``"defender"``, ``"test"``), ``DatasetDict`` split
            (default ``"train"``) or imagefolder sub-folder; ignored for a single CSV file.
        skip_bad: drop rows with a missing/undecodable image or empty caption (one warning) instead of raising.
            Also verifies every image decodes up front; otherwise a corrupt file raises when it is read.
        image_column, caption_column: column names (case-insensitive); auto-detected from
            ``image``/``filepath``/``path``/``file_name`` and ``caption``/``text``/``title`` when omitted.

    Returns:
        An :class:`ImageCaptionDataset` of ``(FloatTensor (3, H, W) in [0, 1], str)`` pairs. Digits also
        carry ``labels`` and ``classnames``.

    Raises:
        DataError: unknown source, missing column, no rows, or a bad row (naming the file and row).

    Example::

        >>> dataset = load_image_caption_dataset("data/cc_subset.csv", image_size=224)
        >>> image, caption = dataset[0]                  # (3, 224, 224) in [0, 1], str
    """
    from clipclean.webdataset import is_shard_spec, load_shards

    if is_shard_spec(source):
        return load_shards(source, image_size=image_size, skip_bad=skip_bad)
    digits_split = None if os.path.exists(source) else _digits_split(source, split, default="train")
    if digits_split is not None:
        images, labels, indices = _digits_tensors(digits_split, image_size)
        return ImageCaptionDataset(
            images,
            _digit_captions(indices, labels),
            labels=labels.tolist(),
            classnames=DIGIT_CLASSNAMES,
            source=f"{_DIGITS_SOURCE}:{digits_split}",
        )
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix.lower() not in (".csv", ".tsv", ".jsonl"):
            raise DataError(f"{path}: unsupported file type (expected .csv, .tsv or .jsonl)")
        if split is not None:
            logger.debug("%s: split=%r ignored for a single table file", path, split)
        return _load_table_pairs(path, image_size, skip_bad, image_column, caption_column)
    if path.is_dir():
        if _is_saved_hf_dataset(path):
            return _load_saved_pairs(path, image_size, split, skip_bad, image_column, caption_column)
        metadata = _find_metadata(path, split)
        if metadata is not None:
            return _load_table_pairs(metadata, image_size, skip_bad, image_column, caption_column)
        raise DataError(
            f"{path}: not an image-caption folder (no metadata.jsonl/metadata.csv and no save_to_disk files "
            "dataset_info.json + state.json / dataset_dict.json)"
        )
    raise DataError(
        f"{source}: no such file or directory (expected 'digits[:split]', a .csv/.tsv file, an imagefolder "
        "with metadata.jsonl/metadata.csv, or a datasets.save_to_disk folder)"
    )


@functools.lru_cache(maxsize=1)
def _imagenet_synset_names() -> dict[str, str]:
    """``{wnid: OpenAI class name}`` for the 1,000 ImageNet classes.

    The names are open_clip's ``IMAGENET_CLASSNAMES`` (OpenAI's, in ImageNet index order); the synset ids, which
    open_clip does not ship, are bundled in ``clipclean/data/imagenet_synsets.txt`` (sorted, the same order).
    """
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    text = resources.files("clipclean").joinpath("data", "imagenet_synsets.txt").read_text(encoding="utf-8")
    return dict(zip(text.split(), IMAGENET_CLASSNAMES, strict=True))


def _read_classnames_file(path: Path) -> list[tuple[int, str]]:
    """The non-blank lines of a class-names file as ``(line number, text)``; spaces trimmed, tabs kept."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the classnames file ({type(exc).__name__}: {exc})") from exc
    return [(number, line.strip(" \r\n")) for number, line in enumerate(lines, start=1) if line.strip()]


def _classnames_mapping(lines: Sequence[tuple[int, str]], folders: Sequence[str], where: str) -> dict[str, str] | None:
    """``{folder: name}`` from ``folder<TAB>name`` (or ``folder,name``) lines; ``None`` for a list of plain names.

    A TAB anywhere makes it a mapping file (every line then needs one); without TABs, the file is a mapping only
    when every line starts with a folder name and a comma (otherwise commas belong to the names).
    """
    folder_set = set(folders)
    if any("\t" in text for _, text in lines):
        separator = "\t"
    elif lines and all(text.partition(",")[1] and text.partition(",")[0].strip() in folder_set for _, text in lines):
        separator = ","
    else:
        return None
    mapping: dict[str, str] = {}
    for number, text in lines:
        folder, found, name = text.partition(separator)
        folder, name = folder.strip(), name.strip()
        if not found:
            raise DataError(f"{where} line {number}: no TAB in '{text}' (give every line as 'folder<TAB>name')")
        if folder not in folder_set:
            raise DataError(f"{where} line {number}: '{folder}' is not a class folder (folders: {list(folders)[:5]})")
        if folder in mapping:
            raise DataError(f"{where} line {number}: folder '{folder}' is named twice")
        mapping[folder] = name
    missing = [folder for folder in folders if folder not in mapping]
    if missing:
        raise DataError(f"{where}: no class name for folder(s) {missing[:5]}")
    return mapping


def _positional_classnames(
    names: Sequence[str], folders: Sequence[str], where: str, entries: Sequence[str]
) -> list[str]:
    """Plain names (``entries`` say where each came from, e.g. ``"line 3"``) given to ``folders`` (label order)."""
    if len(names) != len(folders):
        raise DataError(f"{where}: {len(names)} class names for {len(folders)} classes")
    if sorted(names) == sorted(folders):  # the folder names themselves, in any order: each folder keeps its own
        return list(folders)
    folder_set = set(folders)
    for name, folder, entry in zip(names, folders, entries):
        if name in folder_set and name != folder:
            raise DataError(
                f"{where} {entry}: '{name}' would name folder '{folder}' (plain names go to the folders in sorted "
                f"order), but '{name}' is another class folder; write one 'folder<TAB>name' line per class"
            )
    return list(names)


def _check_distinct(names: Sequence[str], folders: Sequence[str], where: str) -> None:
    """Refuse an empty name, or two classes whose names differ only in case or spacing (their prompts would tie)."""
    seen: dict[str, str] = {}
    for name, folder in zip(names, folders):
        if not name:
            raise DataError(f"{where}: empty class name for class '{folder}'")
        key = " ".join(name.lower().split())
        if key in seen:
            raise DataError(
                f"{where}: classes '{seen[key]}' and '{folder}' are both named '{name}' (their zero-shot prompts "
                "would tie); give every class a distinct name"
            )
        seen[key] = folder


def _resolve_classnames(
    folders: Sequence[str], classnames: str | os.PathLike | Sequence[str] | None, source: str = ""
) -> list[str]:
    """Class names for class ``folders`` given in label (sorted) order: the rule of ``docs/evaluation.md``.

    * ``None``: ImageNet synset folders take OpenAI's names (as published, duplicates "missile" and "sunglasses"
      included), other folders their own names with ``_`` as spaces.
    * A file of ``folder<TAB>name`` (or ``folder,name``) lines: each folder its mapped name, in any line order.
    * A file of plain names, or a list: if the names are exactly the folder names (any order), each folder keeps its
      own name; otherwise the names go to the folders in label order, and a name equal to *another* folder's name
      is an error (it would silently relabel that class).

    Raises:
        DataError: a count mismatch, a name that would mislabel a folder, a bad mapping line, an empty name, or two
            classes with the same name (case and spacing ignored).
    """
    if classnames is None:
        synset_names = _imagenet_synset_names()
        if all(_SYNSET_PATTERN.match(folder) and folder in synset_names for folder in folders):
            return [synset_names[folder] for folder in folders]
        names, where = [folder.replace("_", " ") for folder in folders], source or "class folders"
    elif isinstance(classnames, (str, os.PathLike)):
        where = str(classnames)
        lines = _read_classnames_file(Path(classnames).expanduser())
        mapping = _classnames_mapping(lines, folders, where)
        if mapping is not None:
            names = [mapping[folder] for folder in folders]
        else:
            names = _positional_classnames(
                [text for _, text in lines], folders, where, [f"line {number}" for number, _ in lines]
            )
    else:
        where = "classnames"
        listed = [str(name).strip() for name in classnames]
        names = _positional_classnames(listed, folders, where, [f"entry {index}" for index in range(len(listed))])
    _check_distinct(names, folders, where)
    return names


def _list_images(folder: Path) -> Iterator[Path]:
    for root, directories, files in os.walk(folder, followlinks=True):
        directories[:] = sorted(d for d in directories if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                yield Path(root) / name


def _class_folder_rows(root: Path) -> tuple[list[str], Iterable[_Row]]:
    folders = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))

    def rows() -> Iterator[_Row]:
        for label, folder in enumerate(folders):
            for path in _list_images(root / folder):
                yield _Row(str(path), str(path), str(path), label=label)

    return folders, rows()


def load_classification_dataset(
    source: str,
    image_size: int | tuple[int, int] = 32,
    classnames: str | list[str] | None = None,
    split: str | None = None,
    skip_bad: bool = False,
) -> ClassificationDataset:
    """Load a labelled image set for zero-shot evaluation.

    Args:
        source: ``"digits"`` / ``"digits:<split>"`` (default split ``"test"``), or a folder with one
            sub-folder per class (ImageNet style; images found recursively, extensions
            jpg/jpeg/png/bmp/gif/webp in any case). Label = position of the folder in sorted order, so a
            full ImageNet synset tree gets the standard ImageNet indices.
        image_size: output size ``S`` or ``(H, W)``.
        classnames: ``None`` (synset folders ``n01440764``... map to the OpenAI ImageNet class names, other
            folders give their names with ``_`` as spaces); a file of ``folder<TAB>name`` (or ``folder,name``)
            lines, in any order; or a file with one plain name per line, or a list of names. Plain names that are
            exactly the folder names (in any order) keep each folder its own name; other plain names go to the
            folders in label (sorted) order, and one that equals a *different* folder's name is refused (it would
            relabel that class). The rule is written out in ``docs/evaluation.md``. For digits the "folders" are
            ``"0"`` ... ``"9"``.
        split: digits split, or a sub-folder of ``source`` (e.g. ``"val"``) used when it exists.
        skip_bad: verify every image up front and drop undecodable ones (one warning) instead of raising
            when a corrupt file is read.

    Returns:
        A :class:`ClassificationDataset` of ``(FloatTensor (3, H, W) in [0, 1], int)`` pairs.

    Raises:
        DataError: missing folder, no class folders or images, bad classnames (a count mismatch, a name that
            would mislabel another folder, an empty name, two classes with the same name), or (with ``skip_bad``)
            no decodable image left.

    Example::

        >>> dataset = load_classification_dataset("/data/imagenet", split="val", image_size=224)
        >>> dataset.classnames[0]
        'tench'
    """
    digits_split = None if os.path.exists(source) else _digits_split(source, split, default="test")
    if digits_split is not None:
        images, labels, _ = _digits_tensors(digits_split, image_size)
        names = (
            DIGIT_CLASSNAMES
            if classnames is None
            else _resolve_classnames([str(d) for d in range(10)], classnames, _DIGITS_SOURCE)
        )
        return ClassificationDataset(images, labels.tolist(), names, source=f"{_DIGITS_SOURCE}:{digits_split}")
    root = Path(source).expanduser()
    if not root.is_dir():
        raise DataError(f"{source}: no such directory (expected 'digits[:split]' or a class-per-folder tree)")
    if split is not None and (root / split).is_dir():
        root = root / split
    folders, rows = _class_folder_rows(root)
    if not folders:
        raise DataError(f"{root}: the dataset is empty (no class sub-folders)")
    names = _resolve_classnames(folders, classnames, str(root))
    checker = _RowChecker(str(root), skip_bad, needs_caption=False)
    kept = [row for row in rows if checker.keep(row)]
    if checker.total == 0:
        raise DataError(f"{root}: the dataset is empty (no {'/'.join(IMAGE_EXTENSIONS)} images in the class folders)")
    checker.finish(len(kept))
    return ClassificationDataset(
        [row.image for row in kept],
        [row.label for row in kept],
        names,
        source=str(root),
        image_size=image_size,
        locations=[row.location for row in kept],
    )
