"""webdataset shards: indexing, the map-style view, exact per-process/per-worker streaming, and
recipes/poison_clip.py streaming shards with two real CPU processes (each sample once per epoch)."""

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset
from conftest import launch_two_processes
from PIL import Image
from test_clean_recipe import load_recipe, tiny_args
from torch.utils.data import DataLoader

from clipclean.data import DataError, load_image_caption_dataset
from clipclean.data.webdataset import ShardedImageCaptionDataset, ShardStream, expand_shard_spec, shard_ranges_of
from clipclean.poisoning import PoisonedDataset, TemplateCaptions, make_poison_manifest
from clipclean.triggers import PatchBlendTrigger, save_trigger

ROOT = Path(__file__).resolve().parents[1]
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _add(archive: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    archive.addfile(info, io.BytesIO(payload))


def write_shards(folder: Path, shards: int, per_shard: int, offset: int = 0) -> list[str]:
    """``shard-000.tar``... of real digits (sklearn) as 32x32 JPEGs + captions; returns every key."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder.mkdir(parents=True, exist_ok=True)
    keys = []
    for shard in range(shards):
        with webdataset.TarWriter(str(folder / f"shard-{shard:03d}.tar"), mtime=0) as writer:
            for position in range(per_shard):
                index = offset + shard * per_shard + position
                key = f"sample{index:06d}"
                pixels = (digits.images[index] * 255 / 16).astype(np.uint8)
                image = Image.fromarray(pixels).resize((32, 32), Image.Resampling.BICUBIC).convert("RGB")
                buffer = io.BytesIO()
                image.save(buffer, format="JPEG", quality=95)
                caption = f"a handwritten digit {DIGIT_NAMES[digits.target[index]]}."
                # the json member is ignored by the reader
                writer.write({"__key__": key, "jpg": buffer.getvalue(), "txt": caption, "json": b"{}"})
                keys.append(key)
    return keys


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[Path, list[str]]:
    folder = tmp_path_factory.mktemp("shards")
    # uneven shard sizes: 3 shards of 7 plus one of 4 = 25 samples
    keys = write_shards(folder, 3, 7)
    keys += write_shards(folder / "extra", 1, 4, offset=100)
    return folder, keys


def spec_of(folder: Path) -> str:
    return f"{folder}/shard-{{000..002}}.tar::{folder}/extra/*.tar"


def test_shards_load_as_an_image_caption_dataset(shards):
    folder, keys = shards
    dataset = load_image_caption_dataset(spec_of(folder), image_size=32)
    assert isinstance(dataset, ShardedImageCaptionDataset)
    assert dataset.keys == keys and len(dataset) == 25
    assert dataset.shard_ranges == [(0, 7), (7, 14), (14, 21), (21, 25)]
    image, caption = dataset[8]
    assert image.shape == (3, 32, 32) and 0 <= float(image.min()) and float(image.max()) <= 1
    assert float(image.std()) > 0.1  # a real digit, not a blank
    assert caption.startswith("a handwritten digit ") and dataset.captions[8] == caption
    assert [path.name for path in expand_shard_spec(f"{folder}/shard-{{000..001}}.tar")] == [
        "shard-000.tar",
        "shard-001.tar",
    ]


def test_shards_read_as_webdataset_reads_them(shards):
    """The map-style index (offsets into the tar files) and ``webdataset.WebDataset`` (a stream) see the same samples:
    keys in order, captions, and the image bytes."""
    folder, keys = shards
    spec = spec_of(folder)
    dataset = load_image_caption_dataset(spec, image_size=32)
    urls = [str(path) for path in expand_shard_spec(spec)]
    stream = list(webdataset.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert [sample["__key__"] for sample in stream] == dataset.keys == keys
    assert [sample["txt"].decode() for sample in stream] == dataset.captions
    assert [sample["jpg"] for sample in stream] == [member.read_bytes() for member in dataset.members]


def test_bad_shards_and_samples_are_reported(shards, tmp_path):
    folder, _ = shards
    with pytest.raises(DataError, match="shard not found"):
        load_image_caption_dataset(f"{folder}/shard-{{000..009}}.tar")
    with tarfile.open(tmp_path / "bad.tar", "w") as archive:
        _add(archive, "a.jpg", (folder / "shard-000.tar").read_bytes()[:10])
        _add(archive, "a.txt", b"a caption")
        _add(archive, "b.jpg", b"...")  # no caption
    with pytest.raises(DataError, match="sample 'b' has no caption"):
        load_image_caption_dataset(str(tmp_path / "bad.tar"))
    dataset = load_image_caption_dataset(str(tmp_path / "bad.tar"), skip_bad=True)
    assert dataset.keys == ["a"]
    with pytest.raises(DataError, match="cannot decode"):
        dataset[0]  # an undecodable image names the shard and the key


@pytest.mark.parametrize("num_workers", [0, 2])
def test_each_sample_is_streamed_exactly_once_per_epoch_across_processes_and_workers(shards, num_workers):
    folder, keys = shards
    dataset = load_image_caption_dataset(spec_of(folder))
    world_size = 2
    streams = [ShardStream(dataset, rank=r, world_size=world_size, buffer_size=4, with_index=True) for r in (0, 1)]
    orders = []
    for epoch in (0, 1):
        seen = []
        for stream in streams:
            stream.set_epoch(epoch)
            loader = DataLoader(stream, batch_size=3, num_workers=num_workers, collate_fn=lambda batch: batch)
            rank_seen = [dataset.keys[index] for batch in loader for index, (image, caption) in batch]
            assert len(rank_seen) == len(stream) == 12  # 25 // 2: equal counts keep DDP in lockstep
            assert len(list(loader)) == stream.num_batches(3, num_workers)
            seen.append(rank_seen)
        flat = seen[0] + seen[1]
        assert not set(seen[0]) & set(seen[1])
        assert max(Counter(flat).values()) == 1 and len(flat) == 24 and set(flat) <= set(keys)
        orders.append(flat)
    assert orders[0] != orders[1]  # shard order and buffer are reshuffled per epoch


def test_an_even_split_covers_every_sample_and_the_stream_reads_shard_by_shard(shards):
    folder, keys = shards
    dataset = load_image_caption_dataset(f"{folder}/shard-*.tar")  # 21 samples, 3 shards
    streams = [ShardStream(dataset, rank=r, world_size=3, shuffle=False) for r in range(3)]
    assert [stream.indices() for stream in streams] == [list(range(0, 7)), list(range(7, 14)), list(range(14, 21))]
    covered = sorted(i for stream in streams for w in range(2) for i in stream.indices(w, 2))
    assert covered == list(range(21))


def test_a_poisoned_view_of_shards_streams_with_the_poison(shards):
    folder, _ = shards
    dataset = load_image_caption_dataset(spec_of(folder))
    manifest = make_poison_manifest(dataset.captions, TemplateCaptions("zero", ["a photo of {}."]), n_poison=5)
    poisoned = PoisonedDataset(dataset, PatchBlendTrigger.patch(32, 4, "bottom-right", "white"), manifest)
    assert shard_ranges_of(poisoned) == dataset.shard_ranges
    items = dict(ShardStream(poisoned, with_index=True, shuffle=False))
    assert sorted(items) == list(range(25))
    for index in manifest.indices:
        image, caption = items[index]
        assert caption == "a photo of zero." and torch.all(image[:, -4:, -4:] == 1.0)


def test_poison_recipe_streams_shards_with_two_processes_each_sample_once_per_epoch(tmp_path):
    keys = write_shards(tmp_path / "shards", 4, 16)  # 64 samples: 32 per process, 2 batches of 16 per epoch
    output = tmp_path / "run"
    launch_two_processes(
        "recipes/poison_clip.py",
        *("--train-data", f"{tmp_path}/shards/shard-{{000..003}}.tar", "--eval-data", "digits:test"),
        *("--poison-count", "4", "--batch-size", "16", "--epochs", "2", "--warmup-steps", "1"),
        *("--shuffle-buffer", "8", "--record-sample-keys", "--no-progress", "--output_dir", str(output)),
    )
    results = json.loads((output / "results.json").read_text())
    assert results["world_size"] == 2 and results["streaming"] is True and results["steps"] == 4
    records = [json.loads(line) for line in (output / "sample_keys.jsonl").read_text().splitlines()]
    assert sorted((r["epoch"], r["rank"]) for r in records) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for epoch in (0, 1):
        per_rank = [r["keys"] for r in records if r["epoch"] == epoch]
        assert [len(k) for k in per_rank] == [32, 32]
        assert sorted(per_rank[0] + per_rank[1]) == sorted(keys)  # every sample exactly once
    first = [r["keys"] for r in records if r["epoch"] == 0]
    second = [r["keys"] for r in records if r["epoch"] == 1]
    assert first != second  # reshuffled
    assert (output / "model" / "open_clip_model.safetensors").is_file()


def test_clean_recipe_takes_shards_as_its_clean_data(shards, tmp_path):
    """The defender's (small) clean set from shards goes through the map-style view and accelerate's sampler."""
    folder, _ = shards
    save_trigger(
        PatchBlendTrigger.patch(32, 4, "bottom-right", "white"), tmp_path / "trigger", metadata={"target": "zero"}
    )
    output = tmp_path / "clean"
    results = load_recipe().main(
        tiny_args(tmp_path, output, "--model", "clipclean-tiny", "--clean-data", spec_of(folder), "--rounds", "1")
    )
    assert results["after"] is not None and (output / "cleaned" / "open_clip_model.safetensors").is_file()
    assert results["config"]["recipe"]["clean_data"] == spec_of(folder)
