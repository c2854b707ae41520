"""Image files to pixels: what a dataset stores per image, how it is opened and checked, and the one transform that
turns it into ``FloatTensor (3, H, W)`` in [0, 1] (un-normalised: the model normalises inside ``encode_image``)."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from clipclean.errors import ClipcleanError

ImageReference = str | os.PathLike | bytes | dict | Image.Image
"""What a file-backed dataset stores per sample: a path, encoded bytes, a ``datasets`` image dict
(``{"bytes": ..., "path": ...}``) or a decoded PIL image."""


class DataError(ClipcleanError, ValueError):
    """Bad dataset input; the message names the file (and row) at fault."""


def as_size(image_size: int | Sequence[int]) -> tuple[int, int]:
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
        self.image_size = as_size(image_size)

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


def open_image(reference: ImageReference) -> Image.Image:
    """Open (lazily, PIL-style) whatever a dataset stores for one image."""
    if isinstance(reference, Image.Image):
        return reference
    if hasattr(reference, "open_image"):  # an image inside a tar shard (clipclean.data.webdataset.TarMember)
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


def describe_image(reference: ImageReference) -> str:
    if isinstance(reference, dict):
        return str(reference.get("path") or "<embedded bytes>")
    if isinstance(reference, (bytes, Image.Image)):
        return f"<{type(reference).__name__}>"
    return str(reference)


def image_missing(reference: ImageReference) -> bool:
    """Whether a file-backed reference points at no file (embedded bytes and PIL images never are)."""
    if isinstance(reference, dict):
        return not reference.get("bytes") and not (reference.get("path") and os.path.isfile(reference["path"]))
    if isinstance(reference, (bytes, Image.Image)):
        return False
    if hasattr(reference, "exists"):  # clipclean.data.webdataset.TarMember
        return not reference.exists()
    return not os.path.isfile(reference)


DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def verify_image(reference: ImageReference) -> str | None:
    """``None`` if the image opens and passes ``PIL.Image.verify``, else the reason it does not."""
    if isinstance(reference, Image.Image):
        return None
    try:
        with open_image(reference) as image:
            image.verify()
    except DECODE_ERRORS as exc:
        return f"{type(exc).__name__}: {exc}"
    return None
