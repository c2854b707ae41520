"""The two loaders: any image-caption source, any labelled-image source, by what ``source`` names (see
:mod:`clipclean.data` for the formats)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from clipclean.data.dataset import ClassificationDataset, ImageCaptionDataset
from clipclean.data.digits import digits_caption_dataset, digits_classification_dataset, requested_digits_split
from clipclean.data.imagefolder import find_metadata, load_class_folders
from clipclean.data.pixels import DataError
from clipclean.data.save_to_disk import is_saved_hf_dataset, load_saved_pairs
from clipclean.data.tables import load_table_pairs
from clipclean.data.webdataset import is_shard_spec, load_shards

logger = logging.getLogger(__name__)


def load_image_caption_dataset(
    source: str,
    image_size: int | tuple[int, int] = 32,
    split: str | None = None,
    skip_bad: bool = False,
    image_column: str | None = None,
    caption_column: str | None = None,
) -> ImageCaptionDataset:
    """Load image-caption pairs from any supported source (see :mod:`clipclean.data` for the formats).

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
    if is_shard_spec(source):
        return load_shards(source, image_size=image_size, skip_bad=skip_bad)
    digits_split = None if os.path.exists(source) else requested_digits_split(source, split, default="train")
    if digits_split is not None:
        return digits_caption_dataset(digits_split, image_size)
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix.lower() not in (".csv", ".tsv", ".jsonl"):
            raise DataError(f"{path}: unsupported file type (expected .csv, .tsv or .jsonl)")
        if split is not None:
            logger.debug("%s: split=%r ignored for a single table file", path, split)
        return load_table_pairs(path, image_size, skip_bad, image_column, caption_column)
    if path.is_dir():
        if is_saved_hf_dataset(path):
            return load_saved_pairs(path, image_size, split, skip_bad, image_column, caption_column)
        metadata = find_metadata(path, split)
        if metadata is not None:
            return load_table_pairs(metadata, image_size, skip_bad, image_column, caption_column)
        raise DataError(
            f"{path}: not an image-caption folder (no metadata.jsonl/metadata.csv and no save_to_disk files "
            "dataset_info.json + state.json / dataset_dict.json)"
        )
    raise DataError(
        f"{source}: no such file or directory (expected 'digits[:split]', a .csv/.tsv file, an imagefolder "
        "with metadata.jsonl/metadata.csv, or a datasets.save_to_disk folder)"
    )


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
    digits_split = None if os.path.exists(source) else requested_digits_split(source, split, default="test")
    if digits_split is not None:
        return digits_classification_dataset(digits_split, image_size, classnames)
    return load_class_folders(source, image_size, classnames, split, skip_bad)
