"""Training loaders of the recipes for streamed webdataset shards.

A map-style dataset goes through ``accelerator.prepare`` (accelerate shards it with a seedable sampler). A dataset
read from webdataset shards is streamed instead with :class:`clipclean.data.webdataset.ShardStream`, which already
splits the samples across processes and ``DataLoader`` workers; accelerate must not split it again, so the recipe keeps
:class:`StreamingLoader` out of ``accelerator.prepare`` and the loader places batches on the device itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from accelerate.utils import send_to_device
from torch.utils.data import DataLoader

from clipclean.data.webdataset import ShardStream, sample_keys_of, shard_ranges_of


class _IndexedCollate:
    """``[(index, item), ...] -> (collate(items), indices)`` (picklable, for worker processes)."""

    def __init__(self, collate_fn: Callable) -> None:
        self.collate_fn = collate_fn

    def __call__(self, batch):
        return self.collate_fn([item for _, item in batch]), [index for index, _ in batch]


class StreamingLoader:
    """A ``DataLoader`` over a :class:`ShardStream` of ``dataset`` for this process, with the interface the recipes
    use on a prepared loader: ``set_epoch``, ``len`` (batches per epoch, exact), iteration yielding batches on
    ``accelerator.device``, and :meth:`skip_first_batches` for resuming.

    Args:
        dataset: a sharded dataset (or a wrapper of one, e.g. a ``PoisonedDataset``).
        accelerator: gives the rank, world size and device.
        batch_size, collate_fn, num_workers, drop_last: as for ``DataLoader``.
        seed, buffer_size: shuffling (see :class:`ShardStream`).
        keys: names of the samples (default: the sharded dataset's keys) recorded in :attr:`seen`.

    Attributes:
        seen: the keys of the samples this process yielded since the last :meth:`set_epoch`.
    """

    def __init__(
        self,
        dataset,
        accelerator,
        *,
        batch_size: int,
        collate_fn: Callable,
        num_workers: int = 0,
        drop_last: bool = True,
        seed: int = 0,
        buffer_size: int = 1000,
        keys: Sequence[str] | None = None,
    ) -> None:
        self.stream = ShardStream(
            dataset,
            rank=accelerator.process_index,
            world_size=accelerator.num_processes,
            seed=seed,
            buffer_size=buffer_size,
            with_index=True,
        )
        self.loader = DataLoader(
            self.stream,
            batch_size=batch_size,
            num_workers=num_workers,
            drop_last=drop_last,
            collate_fn=_IndexedCollate(collate_fn),
        )
        self.batch_size, self.num_workers, self.drop_last = batch_size, num_workers, drop_last
        self.device = accelerator.device
        self.keys = keys if keys is not None else sample_keys_of(dataset)
        self.seen: list = []

    def set_epoch(self, epoch: int) -> None:
        self.stream.set_epoch(epoch)
        self.seen = []

    def __len__(self) -> int:
        return self.stream.num_batches(self.batch_size, self.num_workers, self.drop_last)

    def __iter__(self) -> Iterator:
        for batch, indices in self.loader:
            self.seen.extend(self.keys[i] if self.keys is not None else i for i in indices)
            yield send_to_device(batch, self.device)

    def skip_first_batches(self, count: int) -> Iterator:
        """Iterate the epoch from batch ``count`` on (the skipped batches are read, not trained on)."""
        for position, batch in enumerate(self):
            if position >= count:
                yield batch


def is_streamable(dataset) -> bool:
    """Whether ``dataset`` has shard structure (it came from webdataset shards) and is streamed."""
    return shard_ranges_of(dataset) is not None
