"""webdataset shards (``.tar`` files of ``KEY.jpg`` + ``KEY.txt`` pairs) as image-caption data, streamed per process.

The format CC3M/LAION mirrors ship (``img2dataset`` output): each shard is a plain tar file; the members of one
sample share a key (the member name up to the first dot of its base name) and differ by extension -- an image
(``jpg``, ``jpeg``, ``png``, ``webp``) and a caption (``txt``); other members (``json``...) are ignored. Shard specs
are expanded and member names split into key and extension by the ``webdataset`` package (``expand_urls``,
``base_plus_ext``: the same rules as ``webdataset.WebDataset``; a test reads the same keys, captions and image
bytes through both). The map-style view keeps its own index of each image's offset in the tar file (standard library
``tarfile``), because ``webdataset`` reads shards as streams only and has no random access by index.

Two views of the same shards:

* :func:`load_shards` -> :class:`ShardedImageCaptionDataset`, a map-style
  :class:`~clipclean.data.ImageCaptionDataset` (``dataset[i] -> (image (3, H, W) in [0, 1], caption)``; images are
  decoded lazily from their offset in the tar file, captions are read once up front). Everything that takes an
  image-caption dataset takes it: ``load_image_caption_dataset("shards/cc3m-{0000..0099}.tar")`` returns one.
* :class:`ShardStream`, an ``IterableDataset`` over a dataset with shard structure (the map-style one, or a
  :class:`~clipclean.poisoning.PoisonedDataset` wrapping it) that reads shards sequentially and holds only a shuffle
  buffer of sample indices (not decoded images) in memory. Per epoch, the shard order is shuffled with ``(seed,
  epoch)`` -- the same on every process --, the samples in that order are cut into ``world_size`` contiguous equal
  slices (one per process; each process reads only the shards its slice covers) and each slice into ``num_workers``
  contiguous parts (one per ``DataLoader`` worker). So every sample is read **exactly once per epoch** across all
  processes and workers, and every process gets the same number of samples (DDP steps stay in lockstep). When the
  sample count is not a multiple of ``world_size``, the remainder (fewer than ``world_size`` samples, different ones
  each epoch) is left out, as ``DistributedSampler(drop_last=True)`` does.

Shard specs: one ``.tar`` path, a brace range ``data/shard-{000..127}.tar`` (webdataset's syntax, zero padding
kept), a glob ``data/*.tar``, or several of those joined with ``::``.

Example::

    >>> from clipclean.data.webdataset import ShardStream, load_shards
    >>> train = load_shards("data/cc3m-{0000..0003}.tar", image_size=224)
    >>> stream = ShardStream(train, rank=accelerator.process_index, world_size=accelerator.num_processes, seed=0)
    >>> loader = torch.utils.data.DataLoader(stream, batch_size=64, num_workers=4, collate_fn=collate_pairs)
    >>> for epoch in range(epochs):
    ...     stream.set_epoch(epoch)
    ...     for images, captions in loader: ...          # (64, 3, 224, 224) in [0, 1], 64 captions
"""

from __future__ import annotations

import glob
import io
import logging
import math
import os
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from clipclean.data.dataset import ImageCaptionDataset
from clipclean.data.pixels import DataError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXTENSION = "txt"
SPEC_SEPARATOR = "::"


# ---------------------------------------------------------------------------------------------------- shard specs


def is_shard_spec(source: str) -> bool:
    """Whether ``source`` names webdataset shards (every ``::``-separated part ends in ``.tar``)."""
    return all(part.strip().lower().endswith(".tar") for part in str(source).split(SPEC_SEPARATOR))


def expand_shard_spec(spec: str) -> list[Path]:
    """The shard files of a spec (brace ranges, globs, ``::`` lists), in order.

    Raises:
        DataError: a named shard is missing, or a glob matches nothing.
    """
    from webdataset.shardlists import expand_urls  # `::` lists and brace ranges, as webdataset.WebDataset reads them

    paths: list[Path] = []
    for part in str(spec).split(SPEC_SEPARATOR):
        for pattern in expand_urls(os.path.expanduser(part.strip())):
            if glob.has_magic(pattern):
                matches = sorted(glob.glob(pattern))
                if not matches:
                    raise DataError(f"{pattern}: no shard matches")
                paths.extend(Path(match) for match in matches)
            elif os.path.isfile(pattern):
                paths.append(Path(pattern))
            else:
                raise DataError(f"{pattern}: shard not found")
    if not paths:
        raise DataError(f"{spec}: no shards")
    return paths


# ---------------------------------------------------------------------------------------------------- map-style view


@dataclass(frozen=True)
class TarMember:
    """An image stored in a tar shard: read lazily by offset (a :data:`clipclean.data.pixels.ImageReference`)."""

    path: str
    offset: int
    size: int
    name: str

    def read_bytes(self) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read(self.size)

    def open_image(self) -> Image.Image:
        return Image.open(io.BytesIO(self.read_bytes()))

    def exists(self) -> bool:
        return os.path.isfile(self.path)

    def __str__(self) -> str:
        return f"{self.path}:{self.name}"


def _index_shard(path: Path) -> list[tuple[str, TarMember | None, str | None]]:
    """``(key, image, caption)`` per sample of one shard, in tar order; headers are read, images are not."""
    from webdataset.tariterators import base_plus_ext  # key: the member name up to its base name's first dot

    samples: dict[str, list] = {}
    try:
        with tarfile.open(path, mode="r:") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                key, extension = base_plus_ext(member.name)
                if key is None:  # no extension: not part of a sample
                    continue
                extension = extension.lower()
                entry = samples.setdefault(key, [None, None])
                if extension in IMAGE_EXTENSIONS and entry[0] is None:
                    entry[0] = TarMember(str(path), member.offset_data, member.size, member.name)
                elif extension == CAPTION_EXTENSION:
                    entry[1] = archive.extractfile(member).read().decode("utf-8").strip()
    except (tarfile.TarError, OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read the shard ({type(error).__name__}: {error})") from error
    return [(key, image, caption) for key, (image, caption) in samples.items()]


class ShardedImageCaptionDataset(ImageCaptionDataset):
    """An :class:`~clipclean.data.ImageCaptionDataset` read from webdataset shards (see :func:`load_shards`).

    Attributes:
        keys: ``list[str]``, the sample keys in dataset order (shard by shard, tar order).
        shards: ``list[str]``, the shard files.
        shard_ranges: ``list[tuple[int, int]]``, the ``[start, stop)`` dataset indices of each shard.
        members: ``list[TarMember]``, where each sample's image lies in its shard (dataset order).
    """

    def __init__(
        self,
        members: Sequence[TarMember],
        captions: Sequence[str],
        *,
        keys: Sequence[str],
        shards: Sequence[str],
        shard_ranges,
        **kwargs,
    ) -> None:
        super().__init__(members, captions, **kwargs)
        self.members = list(members)
        self.keys = list(keys)
        self.shards = [str(shard) for shard in shards]
        self.shard_ranges = [(int(start), int(stop)) for start, stop in shard_ranges]
        if len(self.keys) != len(self) or (self.shard_ranges and self.shard_ranges[-1][1] != len(self)):
            raise ValueError("keys and shard ranges must cover the dataset")


def load_shards(spec: str, image_size: int | tuple[int, int] = 32, skip_bad: bool = False):
    """Index webdataset shards (tar headers and captions; images stay on disk) as a map-style dataset.

    Args:
        spec: shard spec (see the module docstring).
        image_size: output size ``S`` or ``(H, W)``.
        skip_bad: drop samples without an image or a caption (one warning) instead of raising.

    Returns:
        A :class:`ShardedImageCaptionDataset` of ``(FloatTensor (3, H, W) in [0, 1], caption)`` pairs.

    Raises:
        DataError: a missing or unreadable shard, a sample without image or caption (naming shard and key), or no
            samples at all.
    """
    images: list[TarMember] = []
    captions: list[str] = []
    keys: list[str] = []
    shards: list[Path] = []
    ranges: list[tuple[int, int]] = []
    problems: list[str] = []
    for path in expand_shard_spec(spec):
        start = len(keys)
        for key, image, caption in _index_shard(path):
            if image is None or not caption:
                problems.append(f"{path}: sample '{key}' has no {'image' if image is None else 'caption'}")
                continue
            images.append(image)
            captions.append(caption)
            keys.append(key)
        if len(keys) > start:
            shards.append(path)
            ranges.append((start, len(keys)))
    if problems and not skip_bad:
        more = f" (and {len(problems) - 1} more; skip_bad=True skips them)" if len(problems) > 1 else ""
        raise DataError(problems[0] + more)
    if problems:
        logger.warning("%s: skipped %d incomplete sample(s); first: %s", spec, len(problems), problems[0])
    if not keys:
        raise DataError(f"{spec}: the shards hold no image-caption pairs")
    return ShardedImageCaptionDataset(
        images,
        captions,
        source=str(spec),
        image_size=image_size,
        locations=[f"{image.path} sample '{key}'" for image, key in zip(images, keys)],
        keys=keys,
        shards=shards,
        shard_ranges=ranges,
    )


def _find_in_wrappers(dataset, attribute: str):
    """``dataset.<attribute>``, looking through wrappers that keep the indices and a ``source`` (PoisonedDataset)."""
    while dataset is not None:
        if isinstance(dataset, ShardedImageCaptionDataset):
            return getattr(dataset, attribute)
        dataset = getattr(dataset, "source", None)
    return None


def shard_ranges_of(dataset) -> list[tuple[int, int]] | None:
    """The shard ranges of a sharded dataset or of the one it wraps; ``None`` for any other dataset."""
    return _find_in_wrappers(dataset, "shard_ranges")


def sample_keys_of(dataset) -> list[str] | None:
    """The sample keys of a sharded dataset or of the one it wraps; ``None`` for any other dataset."""
    return _find_in_wrappers(dataset, "keys")


# ---------------------------------------------------------------------------------------------------- streaming


def _split_evenly(count: int, parts: int, part: int) -> tuple[int, int]:
    """``[start, stop)`` of part ``part`` when ``count`` items are cut into ``parts`` contiguous near-equal parts."""
    return part * count // parts, (part + 1) * count // parts


class ShardStream(IterableDataset):
    """Stream a sharded dataset: shard-order shuffling, a shuffle buffer, exact per-process/per-worker splits.

    Args:
        dataset: a map-style dataset with shard structure: a :class:`ShardedImageCaptionDataset`, or a wrapper of
            one with the same indices (``PoisonedDataset``); items are read with ``dataset[i]`` in shard order.
        shard_ranges: ``[start, stop)`` per shard (default: found on ``dataset`` or the dataset it wraps).
        rank, world_size: this process and the number of processes (``accelerator.process_index`` /
            ``num_processes``).
        shuffle: shuffle the shard order per epoch and the samples in a buffer.
        buffer_size: shuffle buffer (sample indices per worker; each sample is decoded when it leaves the buffer).
        seed: the shuffling seed; the shard order depends on ``(seed, epoch)`` only, so all processes agree.
        with_index: yield ``(index, item)`` instead of ``item`` (to log which samples were seen).

    ``len(stream)`` is the number of samples this process reads per epoch (``len(dataset) // world_size``).
    Call :meth:`set_epoch` before each epoch.
    """

    def __init__(
        self,
        dataset,
        shard_ranges: Sequence[tuple[int, int]] | None = None,
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        buffer_size: int = 1000,
        seed: int = 0,
        with_index: bool = False,
    ) -> None:
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, world_size), got rank={rank}, world_size={world_size}")
        self.dataset = dataset
        self.shard_ranges = list(shard_ranges if shard_ranges is not None else shard_ranges_of(dataset) or [])
        if not self.shard_ranges:
            raise ValueError("the dataset has no shard structure: pass shard_ranges")
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.buffer_size, self.seed = shuffle, max(1, buffer_size), seed
        self.with_index = with_index
        self.epoch = 0
        self.total = sum(stop - start for start, stop in self.shard_ranges)
        if self.total < world_size:
            raise ValueError(f"{self.total} samples cannot be split across {world_size} processes")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.total // self.world_size

    def _shard_order(self) -> list[tuple[int, int]]:
        if not self.shuffle:
            return list(self.shard_ranges)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return [self.shard_ranges[i] for i in torch.randperm(len(self.shard_ranges), generator=generator).tolist()]

    def indices(self, worker: int = 0, num_workers: int = 1) -> list[int]:
        """The dataset indices this process's ``worker`` reads this epoch, in read order (before the buffer)."""
        per_process = len(self)
        process_start = self.rank * per_process
        worker_start, worker_stop = _split_evenly(per_process, num_workers, worker)
        start, stop = process_start + worker_start, process_start + worker_stop
        selected: list[int] = []
        position = 0  # position of the current shard's first sample in the epoch's global order
        for shard_start, shard_stop in self._shard_order():
            size = shard_stop - shard_start
            low, high = max(start, position), min(stop, position + size)
            if low < high:
                selected.extend(range(shard_start + low - position, shard_start + high - position))
            position += size
            if position >= stop:
                break
        return selected

    def __iter__(self) -> Iterator:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        indices = self.indices(worker, num_workers)
        generator = torch.Generator().manual_seed(
            ((self.seed * 1_000_003 + self.epoch) * 1009 + self.rank) * 1009 + worker
        )
        for index in self._buffered(indices, generator):
            yield (index, self.dataset[index]) if self.with_index else self.dataset[index]

    def _buffered(self, indices: list[int], generator: torch.Generator) -> Iterator[int]:
        """``indices`` through the shuffle buffer. The buffer holds sample *indices*, not decoded images: a sample is
        read when it leaves the buffer, so memory does not depend on ``buffer_size`` times the image size (1,000
        decoded 224 px images would be 600 MB per worker)."""
        if not self.shuffle:
            yield from indices
            return
        buffer: list[int] = []
        for index in indices:
            buffer.append(index)
            if len(buffer) >= self.buffer_size:
                position = int(torch.randint(len(buffer), (1,), generator=generator))
                buffer[position], buffer[-1] = buffer[-1], buffer[position]
                yield buffer.pop()
        while buffer:
            position = int(torch.randint(len(buffer), (1,), generator=generator))
            buffer[position], buffer[-1] = buffer[-1], buffer[position]
            yield buffer.pop()

    def num_batches(self, batch_size: int, num_workers: int = 0, drop_last: bool = False) -> int:
        """Batches a ``DataLoader(stream, batch_size, num_workers, drop_last)`` yields per epoch (every worker
        batches its own part, so each part has its own last, possibly partial, batch)."""
        rounding = math.floor if drop_last else math.ceil
        parts = max(1, num_workers)
        return sum(
            rounding((stop - start) / batch_size)
            for start, stop in (_split_evenly(len(self), parts, w) for w in range(parts))
        )
