"""The two dataset kinds every source returns -- image-caption pairs and labelled images, both yielding
``FloatTensor (3, H, W)`` in [0, 1] -- and the ``DataLoader`` collate function."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from clipclean.data.pixels import (
    DECODE_ERRORS,
    DataError,
    ImageReference,
    as_size,
    describe_image,
    open_image,
    pixel_transform,
)


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
            if image_size is not None and as_size(image_size) != tensor_size:
                raise ValueError(f"image_size {image_size!r} does not match the image tensor's {tensor_size}")
            self.image_size = tensor_size
            self._tensor: torch.Tensor | None = images.float().expand(-1, 3, -1, -1)
            self._references: Sequence[ImageReference] | None = None
            self._transform: Callable[[Image.Image], torch.Tensor] | None = None
        else:
            self.image_size = as_size(32 if image_size is None else image_size)
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
            with open_image(reference) as image:
                return self._transform(image)
        except FileNotFoundError as exc:
            raise DataError(f"{self._location(index)}: image '{describe_image(reference)}' not found") from exc
        except DECODE_ERRORS as exc:
            raise DataError(
                f"{self._location(index)}: cannot decode image '{describe_image(reference)}' "
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
