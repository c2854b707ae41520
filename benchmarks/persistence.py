"""Persistence study: the retuning attack over several seeds and strengths, for every cleaned model of a benchmark.

Reads the models that ``benchmarks/run.py`` wrote (``OUTPUT/seed{S}/poison_*`` and ``clean_*_*/cleaned``) and runs
:func:`clipclean.complete.retuning_attack` on each cleaned model, on the undefended backdoored model (``none``) and
on the never-poisoned reference, for every retuning setting and retuning seed; writes ``persistence.md`` and
``persistence.csv`` (mean and standard deviation of RA-ASR and of the retuned clean accuracy over the seeds).

    python benchmarks/run.py --attacks badnet                     # the models (once)
    python benchmarks/persistence.py --attacks badnet             # 3 retuning seeds x 3 settings

A setting is ``STEPS:POISON_FRACTION:LR`` (e.g. ``60:0.1:1e-4``, method.md's default retuning attack).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from clipclean.complete import RetuningConfig, retuning_attack
from clipclean.data import DIGIT_CAPTION_TEMPLATES, load_classification_dataset, load_image_caption_dataset
from clipclean.fileio import write_csv
from clipclean.models import load_clip
from clipclean.triggers import load_trigger

DEFAULT_SETTINGS = ("60:0.1:1e-4", "120:0.1:1e-4", "60:0.2:1e-4", "60:0.1:3e-4")
COLUMNS = ("attack", "defense", "setting", "n_seeds", "ra_asr_mean", "ra_asr_std", "ra_ca_mean", "ra_ca_std")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark-output", default="benchmarks/results", help="the folder benchmarks/run.py wrote")
    parser.add_argument("--model-seed", type=int, default=0, help="which benchmark seed's models")
    parser.add_argument("--attacks", nargs="+", default=["badnet"])
    parser.add_argument("--defenses", nargs="+", default=None, help="default: every cleaned model found")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="retuning seeds")
    parser.add_argument("--settings", nargs="+", default=list(DEFAULT_SETTINGS), metavar="STEPS:FRACTION:LR")
    parser.add_argument("--output", default=None, help="default: BENCHMARK_OUTPUT")
    args = parser.parse_args(argv)
    for setting in args.settings:
        try:
            RetuningConfig.from_setting(setting)
        except ValueError as error:
            parser.error(f"bad setting {setting!r}: {error}")
    return args


def models_of(folder: Path, attack: str, defenses: list[str] | None) -> dict[str, Path]:
    """The models to attack: the reference, the undefended backdoored model, then each cleaned one."""
    found = {"reference": folder / "poison_none" / "model", "none": folder / f"poison_{attack}" / "model"}
    for cleaned in sorted(folder.glob(f"clean_{attack}_*/cleaned")):
        defense = cleaned.parent.name.removeprefix(f"clean_{attack}_")
        if defenses is None or defense in defenses:
            found[defense] = cleaned
    missing = [str(path) for path in found.values() if not path.is_dir()]
    if missing:
        raise SystemExit(f"missing models (run benchmarks/run.py first): {missing}")
    return found


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(1)  # tiny models: one thread is several times faster than two competing ones
    source = Path(args.benchmark_output) / f"seed{args.model_seed}"
    output = Path(args.output or args.benchmark_output)
    clean = load_image_caption_dataset("digits:defender", image_size=32)
    test = load_classification_dataset("digits:test", image_size=32)
    templates = list(DIGIT_CAPTION_TEMPLATES)
    rows, started = [], time.time()
    for attack in args.attacks:
        trigger = load_trigger(source / f"poison_{attack}" / "trigger.json")
        for defense, path in models_of(source, attack, args.defenses).items():
            model = load_clip(str(path))
            for setting in args.settings:
                runs = [
                    retuning_attack(model, clean, trigger, "zero", test, test.classnames, templates,
                                    RetuningConfig.from_setting(setting, seed))
                    for seed in args.seeds
                ]  # fmt: skip
                rows.append(summarise(attack, defense, setting, runs))
                print(format_row(rows[-1]), flush=True)
    write_outputs(rows, output)
    print(f"persistence study finished in {time.time() - started:.0f} s: {output / 'persistence.md'}")
    return rows


def summarise(attack: str, defense: str, setting: str, runs: list[dict]) -> dict:
    def spread(values: list[float]) -> tuple[float, float]:
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    asr_mean, asr_std = spread([run["ra_asr"] for run in runs])
    ca_mean, ca_std = spread([run["ra_clean_accuracy"] for run in runs])
    return dict(zip(COLUMNS, (attack, defense, setting, len(runs), asr_mean, asr_std, ca_mean, ca_std)))


def format_row(row: dict) -> str:
    return (
        f"| {row['attack']} | {row['defense']} | {row['setting']} | {row['n_seeds']} | "
        f"{100 * row['ra_asr_mean']:.1f} ± {100 * row['ra_asr_std']:.1f} | "
        f"{100 * row['ra_ca_mean']:.1f} ± {100 * row['ra_ca_std']:.1f} |"
    )


def write_outputs(rows: list[dict], output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    write_csv(output / "persistence.csv", rows, COLUMNS)
    header = [
        "| attack | defense | steps:poison fraction:lr | seeds | RA-ASR % (mean ± std) | CA after retuning % |",
        "|---|---|---|---:|---:|---:|",
    ]
    (output / "persistence.md").write_text("\n".join(header + [format_row(row) for row in rows]) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
