"""benchmarks/trigger_seed.py: its runs vary one thing at a time around the first grid's miss, its patches are
what the rows say, and the committed CSV is the one its run plan writes (the runs themselves: slow, not here)."""

import csv

import numpy as np
from conftest import ROOT, load_script

trigger_seed = load_script("benchmarks/trigger_seed.py")


def test_every_run_differs_from_the_miss_in_one_thing():
    miss = ("s3_t3", 3, trigger_seed.DARK, "as drawn")
    assert miss in trigger_seed.RUNS and len({name for name, *_ in trigger_seed.RUNS}) == len(trigger_seed.RUNS)
    for run in trigger_seed.RUNS:
        assert sum(a != b for a, b in zip(run[1:], miss[1:])) == (0 if run == miss else 1), run


def test_the_patches_are_the_draw_inverted_and_brightened():
    drawn = trigger_seed.patch(trigger_seed.DARK, "as drawn")
    inverted = trigger_seed.patch(trigger_seed.DARK, "inverted")
    brightened = trigger_seed.patch(trigger_seed.DARK, "brightened")
    assert drawn.shape == (3, trigger_seed.SIZE, trigger_seed.SIZE)
    assert np.abs(inverted - (1 - drawn)).max() <= 0.5 / 255 + 1e-6  # 8-bit, as the PNG the run reads
    assert np.abs(brightened - (0.5 + drawn / 2)).max() <= 0.5 / 255 + 1e-6
    # the dark draw is the darkest of trigger seeds 0-4 (what the docs say of it)
    means = [float(trigger_seed.patch(seed, "as drawn").mean()) for seed in range(5)]
    assert min(means) == means[trigger_seed.DARK]


def test_the_committed_csv_has_one_row_per_run_with_its_patch_mean():
    rows = list(csv.DictReader((ROOT / "benchmarks" / "results" / "trigger_seed.csv").open()))
    assert [row["name"] for row in rows] == [name for name, *_ in trigger_seed.RUNS]
    for row, (_, seed, trigger, how) in zip(rows, trigger_seed.RUNS):
        assert (int(row["seed"]), int(row["trigger_seed"]), row["patch"]) == (seed, trigger, how)
        assert float(row["patch_mean"]) == round(float(trigger_seed.patch(trigger, how).mean()), 3)
