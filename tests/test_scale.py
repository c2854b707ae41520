"""Micro-batched unlearning steps (the gradient cache) and benchmarks/scale.py in its tiny mode, one and two processes;
benchmarks/gpu_scale.sh in its CPU check mode."""

import copy
import csv
import os
import subprocess

import pytest
import torch
from accelerate import Accelerator
from conftest import ROOT, load_script

from clipclean.cli.cleaning import unlearning_step
from clipclean.data import load_classification_dataset
from clipclean.data.webdataset import load_shards
from clipclean.defenses import DefenseContext, build_defense
from clipclean.evaluation import imagenet_classnames
from clipclean.inversion import InversionConfig
from clipclean.training import GradientCache


@pytest.fixture(scope="module")
def scale():
    return load_script("benchmarks/scale.py")


def _batch(model, size=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(size, 3, 32, 32, generator=generator)
    names = imagenet_classnames()
    captions = [f"a photo of a {names[int(k)]}." for k in torch.randint(len(names), (size,), generator=generator)]
    return images, model.tokenize(captions)


def _defense(name, model):
    """A fresh defense (same seeds each time: same triggers, same augmentations)."""
    context = DefenseContext(reference=model.fresh_copy().requires_grad_(False).eval())
    if name == "bibau":
        names = imagenet_classnames()[:10]
        context.candidate_names = names
        context.candidate_embeddings = model.encode_text([f"a photo of a {n}." for n in names]).detach()
        options = {"inversion": InversionConfig(patch_hypotheses=2, mask_budgets=(0.05,))}
    else:
        options = None
    defense = build_defense(name, model, context, options)
    if name == "bibau":
        defense.inverter.e_step([_batch(model, seed=1)])  # directions and scores, as after an inversion
    return defense


@pytest.mark.parametrize("name", ["bibau", "cleanclip", "finetune"])
def test_micro_batched_unlearning_step_gives_the_whole_batch_gradients_and_update(tiny_clip, name):
    """The contrastive loss couples the batch; the gradient cache still gives the one-pass gradients and update (SGD:
    Adam's first step ``g / (|g| + eps)`` turns float rounding of near-zero gradients into lr-sized differences)."""
    accelerator = Accelerator(cpu=True)
    batch = _batch(tiny_clip)
    updated, gradients = [], []
    for micro_batch in (None, 5):
        model = copy.deepcopy(tiny_clip).train()
        defense = _defense(name, model)
        optimizer = torch.optim.SGD(defense.trainable_parameters(), lr=0.1, momentum=0.9)
        losses = unlearning_step(accelerator, model, defense, batch, micro_batch)
        assert torch.isfinite(losses["loss"])
        gradients.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        optimizer.step()
        updated.append(model.state_dict())
    whole, chunked = gradients
    assert whole.keys() == chunked.keys() and len(whole) > 10
    for key in whole:
        torch.testing.assert_close(chunked[key], whole[key], rtol=1e-4, atol=1e-6, msg=key)
    for key in updated[0]:
        torch.testing.assert_close(updated[1][key], updated[0][key], rtol=1e-4, atol=1e-6, msg=key)


def test_gradient_cache_splits_every_input_and_keeps_the_scalar_outputs(tiny_clip):
    model = tiny_clip.train()
    images, tokens = _batch(model, size=10)
    cache = GradientCache(model, micro_batch=4)
    image_features, text_features, scale = cache(torch.cat([images, images]), tokens)  # 20 images, 10 captions
    assert image_features.shape == (20, 64) and text_features.shape == (10, 64) and scale.dim() == 0
    assert image_features.grad_fn is None and image_features.requires_grad  # leaves: no graph through the model
    chunks = cache.calls[0][0]
    assert len(chunks) == 5 and all(len(c[0]) == 4 and len(c[1]) == 2 for c in chunks)
    with pytest.raises(ValueError, match="micro_batch"):
        GradientCache(model, 0)


def test_gradient_cache_updates_batch_norm_statistics_once_per_micro_batch():
    """A BatchNorm tower (RN50) sees micro-batches: its running statistics move once per micro-batch, in the gradient
    pass only (the pass without gradient leaves them as they were)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten()).train()
    images = torch.rand(9, 3, 6, 6)
    cache = GradientCache(model, micro_batch=3)
    outputs = cache(images)
    assert int(model[1].num_batches_tracked) == 0
    outputs.pow(2).sum().backward()
    cache.backward()
    assert int(model[1].num_batches_tracked) == 3
    assert model[0].weight.grad is not None and torch.isfinite(model[0].weight.grad).all()


def test_synthetic_shards_and_synset_tree(scale, tmp_path):
    shards = scale.write_shards(tmp_path / "shards", 48, 16, 32)
    assert [path.name for path in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    small = load_shards(scale.shard_spec(tmp_path / "shards", 32, 16), image_size=32)
    large = load_shards(scale.shard_spec(tmp_path / "shards", 48, 16), image_size=32)
    assert len(small) == 32 and len(large) == 48 and large.keys[:32] == small.keys
    image, caption = large[40]
    assert image.shape == (3, 32, 32) and caption.startswith("a photo of a ")
    tree = scale.write_synset_tree(tmp_path / "tree", classes=5, images_per_class=2, size=48)
    assert sorted(p.name for p in tree.iterdir() if p.is_dir())[:2] == ["n01440764", "n01443537"]
    dataset = load_classification_dataset(str(tree), image_size=32)
    assert list(dataset.classnames) == imagenet_classnames()[:5]  # ImageNet synsets map to the OpenAI names
    assert len(dataset) == 10 and dataset[0][0].shape == (3, 32, 32)


def test_memory_table_compares_the_memory_runs_across_shard_sizes(scale):
    base = {"model": "m", "processes": 1, "workers_uss_mib": 10.0, "run": "memory"}
    rows = [
        {**base, "phase": "stream", "shard_pairs": 2000, "peak_rss_mib": 500.0},
        {**base, "phase": "stream", "shard_pairs": 20000, "peak_rss_mib": 530.0},
        {**base, "phase": "unlearning", "shard_pairs": 2000, "peak_rss_mib": 900.0, "run": "phases"},
    ]
    assert scale.memory_by_shard_size(rows) == {("m", "stream", 1): {2000: (500.0, 10.0), 20000: (530.0, 10.0)}}
    assert "| m | stream | 1 | 500 + 10 | 530 + 10 |" in scale.memory_markdown(rows[:2], ["header"])
    assert "| m | unlearning | 1 | 2000 |" in scale.markdown(rows[2:], ["header"])  # the runs of every phase
    timing = [
        {"model": "m", "phase": "m_step", "run": "phases", "shard_pairs": 64, "processes": n, "s_per_step": s}
        for n, s in ((1, 8.0), (2, 5.0))
    ]
    scale.add_efficiency(timing)
    assert timing[1]["efficiency"] == pytest.approx(8.0 / (2 * 5.0))


def test_scale_tiny_runs_every_phase_with_one_and_two_processes(scale, tmp_path):
    rows = scale.main(["--tiny", "--output", str(tmp_path / "out"), "--work-dir", str(tmp_path / "work")])
    phases = [row for row in rows if row["run"] == "phases"]
    measured = set(scale.DEFAULT_PHASES)
    for processes in (1, 2):
        done = {row["phase"]: row for row in phases if row["processes"] == processes}
        assert set(done) == measured | {"micro_batch_check"}, processes
        for phase in measured:
            assert done[phase]["s_per_step"] > 0 and done[phase]["images_per_s"] > 0, (processes, phase)
            assert done[phase]["peak_rss_mib"] > 100, (processes, phase)
        # micro-batched and whole-batch unlearning steps give the same gradients, also under DDP (gloo)
        differences = done["micro_batch_check"]["notes"].split(": ")[1]
        for entry in differences.split(", "):
            assert float(entry.split()[1]) < 1e-4, entry
        assert done["zeroshot_classifier"]["images_per_step"] == 12 * 80  # classes x templates
        assert done["zeroshot_eval"]["images_per_step"] == 24
    assert all(row["efficiency"] > 0 for row in phases if row["processes"] == 2 and row.get("s_per_step"))
    memory = scale.memory_by_shard_size(rows)
    assert {key[1:] for key in memory} == {("stream", 1), ("unlearning", 1), ("stream", 2), ("unlearning", 2)}
    for entry in memory.values():
        assert set(entry) == {64, 256}
        assert abs(entry[256][0] - entry[64][0]) < 50  # the main process's peak does not follow the set's size
    for name, kind in (("scale", "phases"), ("scale_memory", "memory")):
        with (tmp_path / "out" / f"{name}.csv").open() as handle:
            table = list(csv.DictReader(handle))
        assert len(table) == sum(row["run"] == kind for row in rows) and set(table[0]) == set(scale.COLUMNS)
        assert "synthetic images" in (tmp_path / "out" / f"{name}.md").read_text()
    assert "Peak memory per defender-set size" in (tmp_path / "out" / "scale_memory.md").read_text()


def test_gpu_scale_script_runs_on_the_cpu_in_tiny_mode(tmp_path):
    env = {**os.environ, "OUTPUT": str(tmp_path), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = ["bash", "benchmarks/gpu_scale.sh", "--tiny", "--phases", "m_step", "unlearning", "--shard-pairs", "64"]
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-3000:]
    assert "| clipclean-tiny | unlearning | 1 |" in completed.stdout
    with (tmp_path / "gpu_scale_tiny.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert {row["phase"] for row in table} == {"m_step", "unlearning", "micro_batch_check"}
    assert all(row["precision"] == "bf16" for row in table)
