"""``--global-batch-size`` and the agreement of 1 and N processes at equal global batch (issue 17, item 3).

``--batch-size`` is per process (the documented contract); ``--global-batch-size N`` gives each process
``N / processes``. One optimisation step of N processes then takes the pairs of one step of one process (the seedable
sampler shuffles alike on every process and the loader deals consecutive per-process batches in turn), so the two runs
take the same number of steps per epoch, and the image counts of the trigger search (``verdict_batch_size``,
``reset_samples``, AGE's ``n_samples``) are totals that each process takes its share of.
"""

import argparse
import json
import math

import pytest
import torch
from conftest import launch_two_processes, save_tiny_clip_and_patch_trigger

from clipclean.cli import clean_classifier, clean_clip, poison_classifier, poison_clip
from clipclean.cli.common import BatchSizes, check_batch_size_arguments, resolve_batch_sizes
from clipclean.errors import UsageError
from clipclean.inversion import process_share
from clipclean.units import collect_images

PARSERS = {
    "clean_clip": (clean_clip.parse_args, ["--model", "m", "--clean-data", "digits"], 64),
    "clean_classifier": (clean_classifier.parse_args, ["--model", "m", "--clean-data", "digits"], 64),
    "poison_clip": (poison_clip.parse_args, [], 128),
    "poison_classifier": (poison_classifier.parse_args, [], 64),
}


def _namespace(batch_size=None, global_batch_size=None) -> argparse.Namespace:
    return argparse.Namespace(batch_size=batch_size, global_batch_size=global_batch_size)


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_batch_size_stays_per_process_with_its_default_and_excludes_the_global_flag(name, capsys):
    parse, required, default = PARSERS[name]
    args = parse(required)
    assert (args.batch_size, args.global_batch_size) == (default, None)  # the default, unchanged
    args = parse([*required, "--global-batch-size", "96"])
    assert (args.batch_size, args.global_batch_size) == (None, 96)  # resolved once the processes are known
    # argparse's mutual exclusion misses a value equal to the default unless the default is applied after parsing
    for given in (str(default), "32"):
        with pytest.raises(SystemExit):
            parse([*required, "--batch-size", given, "--global-batch-size", "128"])
        assert "not allowed with argument --batch-size" in capsys.readouterr().err
    for flag in ("--batch-size", "--global-batch-size"):
        with pytest.raises(UsageError, match=f"{flag} must be >= 1, got 0"):
            parse([*required, flag, "0"])


def test_the_per_process_batch_is_the_global_batch_over_the_processes():
    assert resolve_batch_sizes(_namespace(64), 1) == BatchSizes(per_process=64, num_processes=1)
    per_process = _namespace(64)
    assert resolve_batch_sizes(per_process, 2).global_batch_size == 128  # --batch-size: per process, as documented
    for processes, expected in ((1, 64), (2, 32), (4, 16), (64, 1)):
        args = _namespace(global_batch_size=64)
        batch = resolve_batch_sizes(args, processes)
        assert (batch.per_process, batch.global_batch_size, args.batch_size) == (expected, 64, expected)
    assert resolve_batch_sizes(_namespace(global_batch_size=64), 2).describe() == (
        "global batch 64 = 32 per process x 2 processes"
    )
    assert BatchSizes(64, 1).describe() == "global batch 64 = 64 per process x 1 process"


def test_a_global_batch_the_processes_do_not_divide_is_refused_naming_both_numbers():
    with pytest.raises(UsageError, match=r"--global-batch-size 100 is not divisible by the 3 processes.*99 or 102"):
        resolve_batch_sizes(_namespace(global_batch_size=100), 3)
    with pytest.raises(UsageError, match=r"--global-batch-size 1 is not divisible by the 2 processes.*e\.g\. 2 or 4"):
        resolve_batch_sizes(_namespace(global_batch_size=1), 2)
    args = _namespace()
    check_batch_size_arguments(args, 64)  # neither flag: the recipe's default, per process
    assert resolve_batch_sizes(args, 3) == BatchSizes(64, 3)


def test_sample_counts_of_the_trigger_search_are_totals_shared_by_the_processes():
    assert [process_share(32, n) for n in (1, 2, 3, 4, 64)] == [32, 16, 11, 8, 1]
    with pytest.raises(ValueError, match="world_size"):
        process_share(32, 0)
    # the unit scores' images: two processes fed the halves of each global batch take the images one process takes
    images = torch.arange(256, dtype=torch.float32).view(256, 1, 1, 1)
    global_batches = [(images[start : start + 64],) for start in range(0, 256, 64)]
    one = collect_images(global_batches, 128)
    halves = [[(batch[0][rank * 32 : (rank + 1) * 32],) for batch in global_batches] for rank in (0, 1)]
    two = [collect_images(batches, 128, world_size=2) for batches in halves]
    assert sorted(torch.cat(two).flatten().tolist()) == sorted(one.flatten().tolist())
    assert collect_images(global_batches, 4, world_size=8).shape[0] == 2  # at least 2 per process (a spread)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_clip_and_patch_trigger(tmp_path_factory.mktemp("global_batch"))


def _finetune_args(tiny, output, *batch: str) -> list[str]:
    # 100 pairs: fewer than two global batches of 64, so the last partial batch is kept (2 steps per epoch). The
    # drop_last rule judged on the per-process batch (2 x 32 <= 100) dropped it on two processes: 1 step per epoch.
    return [
        *("--model", str(tiny / "model"), "--clean-data", "digits:defender", "--max-clean-pairs", "100"),
        *("--defense", "finetune", "--rounds", "1", "--epochs", "1", "--no-progress", "--output_dir", str(output)),
        *batch,
    ]


def test_two_processes_at_equal_global_batch_take_the_steps_of_one(tiny, tmp_path):
    one = clean_clip.main(_finetune_args(tiny, tmp_path / "one", "--batch-size", "64"))
    assert (one["world_size"], one["global_batch_size"], one["steps_per_epoch"]) == (1, 64, 2)
    output = tmp_path / "two"
    arguments = _finetune_args(tiny, output, "--global-batch-size", "64")
    completed = launch_two_processes("recipes/clean_clip.py", *arguments)
    two = json.loads((output / "results.json").read_text())
    assert two["world_size"] == 2
    assert (two["global_batch_size"], two["steps_per_epoch"]) == (one["global_batch_size"], one["steps_per_epoch"])
    assert two["config"]["recipe"]["batch_size"] == 32 and two["config"]["recipe"]["global_batch_size"] == 64
    assert two["rounds"][0]["steps"] == one["rounds"][0]["steps"] == 2
    # logged once, by the main process
    assert completed.stderr.count("global batch 64 = 32 per process x 2 processes; 2 optimiser steps per epoch") == 1


def test_the_poisoning_recipes_record_the_global_batch(tmp_path):
    common = ["--train-data", "digits:defender", "--warmup-steps", "1", "--no-progress"]
    results = poison_clip.main([*common, "--global-batch-size", "64", "--max-steps", "1", "--output_dir",
                                str(tmp_path / "clip")])  # fmt: skip
    assert (results["global_batch_size"], results["steps_per_epoch"]) == (64, 300 // 64)
    assert results["training"]["collapsed_loss"] == pytest.approx(math.log(64))  # ln(global batch)
    tiny = ["--epochs", "1", "--architecture-kwargs", '{"width": 2}', "--no-progress"]
    results = poison_classifier.main([*tiny, "--global-batch-size", "256", "--output_dir", str(tmp_path / "cnn")])
    assert results["global_batch_size"] == 256 and results["config"]["training"]["batch_size"] == 256
    assert results["steps_per_epoch"] >= 1


@pytest.mark.slow
def test_one_and_two_processes_clean_alike_at_equal_global_batch(digits_clips, tmp_path):
    """The issue-17 measurement, fixed: Blended cleaned by one process (--batch-size 64) lost 1.9 points of clean
    accuracy and by two (--batch-size 64 each, global 128: half the unlearning steps) 4.0. At an equal global batch
    of 64 the runs take the same steps on the same pairs; what remains is floating-point reduction order and the
    verdict's per-process image subsets. Margins: clean accuracy within 1.5 points (the 2.1-point gap of the issue
    would fail it), ASR within 3 points, the same verdict and target."""
    folder, _ = digits_clips("blended")
    flags = [
        *("--model", str(folder / "model"), "--clean-data", "digits:defender", "--eval-data", "digits:test"),
        *("--eval-trigger", str(folder / "trigger.json"), "--eval-target", "zero", "--seed", "0", "--no-progress"),
    ]
    one = clean_clip.main([*flags, "--batch-size", "64", "--output_dir", str(tmp_path / "one")])
    output = tmp_path / "two"
    launch_two_processes("recipes/clean_clip.py", *flags, "--global-batch-size", "64", "--output_dir", str(output),
                         timeout=3600)  # fmt: skip
    two = json.loads((output / "results.json").read_text())
    assert two["world_size"] == 2 and two["global_batch_size"] == one["global_batch_size"] == 64
    assert two["steps_per_epoch"] == one["steps_per_epoch"]
    assert two["inversion"]["verdict"] == one["inversion"]["verdict"] == "backdoored"
    assert two["inversion"]["recovered_target"] == one["inversion"]["recovered_target"] == "zero"
    assert abs(two["after"]["clean_accuracy"] - one["after"]["clean_accuracy"]) <= 0.015
    assert abs(two["after"]["attack_success_rate"] - one["after"]["attack_success_rate"]) <= 0.03


def _run(seed, processes, ca, asr, verdict="backdoored", target="zero"):
    return {"run": f"seed{seed}_p{processes}", "seed": seed, "processes": processes,
            "global_batch_size": 64, "steps_per_epoch": 4, "ca_before": 0.95,
            "ca_after": ca, "asr_before": 0.9, "asr_after": asr, "verdict": verdict, "recovered_target": target,
            "verdict_statistic": "winner-lift", "verdict_score": 4.0, "wall_s": 100.0}  # fmt: skip


def test_the_processes_benchmark_agrees_only_within_the_seed_spread_with_the_same_verdicts_and_targets(tmp_path):
    from conftest import load_script

    processes = load_script("benchmarks/processes.py")
    one = [_run(0, 1, 0.950, 0.00), _run(1, 1, 0.960, 0.01), _run(2, 1, 0.955, 0.00)]  # CA range 1 point
    close = [_run(0, 2, 0.955, 0.00), _run(1, 2, 0.950, 0.00), _run(2, 2, 0.960, 0.01)]
    summary = processes.summarise(one + close)
    assert summary["seeds_compared"] == 3 and summary["agree"]
    far = [_run(0, 2, 0.92, 0.00), _run(1, 2, 0.925, 0.01), _run(2, 2, 0.92, 0.00)]  # 3 points lower: outside
    summary = processes.summarise(one + far)
    assert not summary["within_spread"]["ca_after"] and not summary["agree"]
    other_target = [*close[:2], _run(2, 2, 0.96, 0.01, target="nine")]
    assert not processes.summarise(one + other_target)["agree"]
    args = processes.parse_args(["--model-dir", str(tmp_path)])
    table = processes.markdown(one + close, processes.summarise(one + close), tmp_path, args)
    assert "**Agree: yes.**" in table and "| seed2_p2 | 2 | 2 | 64 | 4 |" in table
    with pytest.raises(SystemExit, match="model/ and trigger.json"):
        processes.main(["--model-dir", str(tmp_path), "--output", str(tmp_path / "out")])
