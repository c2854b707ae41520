"""Persistence mechanisms of BI-BAU: each variant x attack x cleaning seed, then the retuning attack x retuning seeds.

Reads the models ``benchmarks/run.py`` wrote (``BENCHMARK_OUTPUT/seed{S}/poison_*``), cleans each backdoored model
with ``recipes/clean_clip.py --defense bibau`` plus a variant's flags, once per cleaning seed (the seed of the
inversion, the batch order and every random draw of the defense), runs :func:`clipclean.complete.retuning_attack`
with every retuning seed on the cleaned model, and writes ``mechanisms.md`` / ``mechanisms.csv``: per variant and
attack, CA and ASR after cleaning, the verdicts, and RA-ASR mean ± std over all cleaning x retuning seeds next to
the never-poisoned reference under the same retuning seeds. Finished cleanings and retuning attacks are reused
(``retuning.json`` next to each cleaned model; delete a cleaning's folder to redo it); ``--jobs`` runs that many
cleanings at once (one CPU thread each).

    python benchmarks/run.py --attacks badnet blended badclip --defenses bibau      # the models (once)
    python benchmarks/mechanisms.py --variants default epochs6="--epochs 6" --clean-seeds 0 1 2 --jobs 2

A variant is ``NAME=FLAGS`` (extra ``clean_clip.py`` flags) or ``default`` (none).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from clipclean.complete import RetuningConfig
from clipclean.fileio import write_csv

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = (
    "variant", "attack", "n_cleanings", "ca_before", "ca_after_mean", "asr_after_mean", "asr_after_max", "verdicts",
    "n_retunes", "ra_asr_mean", "ra_asr_std", "reference_ra_asr_mean", "reference_ra_asr_std", "flags",
)  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("--benchmark-output", default="benchmarks/results", help="the folder benchmarks/run.py wrote")
    parser.add_argument("--model-seed", type=int, default=0, help="which benchmark seed's models")
    parser.add_argument("--attacks", nargs="+", default=["badnet", "blended", "badclip"])
    parser.add_argument("--variants", nargs="+", default=["default"], metavar="NAME=FLAGS")
    parser.add_argument("--clean-seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="retuning seeds")
    parser.add_argument("--setting", default="60:0.1:1e-4", metavar="STEPS:FRACTION:LR", help="the retuning attack")
    parser.add_argument("--jobs", type=int, default=1, help="cleanings run at once")
    parser.add_argument("--clean-args", default="", help="flags for every cleaning (e.g. budgets of a smoke run)")
    parser.add_argument("--output", default=None, help="default: BENCHMARK_OUTPUT/mechanisms")
    args = parser.parse_args(argv)
    try:
        args.variants = dict(parse_variant(text) for text in args.variants)
        RetuningConfig.from_setting(args.setting)
    except ValueError as error:
        parser.error(str(error))
    return args


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``"NAME=FLAGS"`` -> ``(NAME, [flags])``; ``"default"`` -> ``("default", [])``."""
    name, _, flags = text.partition("=")
    if not name or (not flags and name != "default"):
        raise ValueError(f"a variant is NAME=FLAGS or 'default', got {text!r}")
    return name, shlex.split(flags)


def clean(source: Path, attack: str, flags: list[str], seed: int, folder: Path) -> dict:
    """``clean_clip.py --defense bibau FLAGS --seed SEED`` on the backdoored model, unless its results exist."""
    results = folder / "results.json"
    if not results.is_file():
        poisoned = source / f"poison_{attack}"
        command = [sys.executable, str(ROOT / "recipes" / "clean_clip.py"), "--model", str(poisoned / "model"),
                   "--clean-data", "digits:defender", "--eval-data", "digits:test", "--eval-trigger",
                   str(poisoned / "trigger.json"), "--defense", "bibau", "--seed", str(seed), *flags,
                   "--output_dir", str(folder), "--no-progress", "--overwrite"]  # fmt: skip
        folder.mkdir(parents=True, exist_ok=True)
        print("+", shlex.join(command), flush=True)
        with (folder.parent / f"{folder.name}.log").open("w") as log:
            subprocess.run(command, cwd=ROOT, check=True, stdout=log, stderr=subprocess.STDOUT,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    return json.loads(results.read_text())


def retune(model_path: Path, trigger, data, setting: str, seeds: list[int], cache: Path) -> list[float]:
    """RA-ASR of the model at ``model_path`` for each retuning seed; finished ones are read from ``cache`` (a JSON
    file ``{setting: {seed: ra_asr}}`` kept next to the model it belongs to)."""
    from clipclean.complete import retuning_attack
    from clipclean.data import DIGIT_CAPTION_TEMPLATES
    from clipclean.fileio import write_json
    from clipclean.models import load_clip

    done = json.loads(cache.read_text()) if cache.is_file() else {}
    measured = done.setdefault(setting, {})
    todo = [seed for seed in seeds if str(seed) not in measured]
    if todo:
        clean_pairs, test = data
        model = load_clip(str(model_path))
        templates = list(DIGIT_CAPTION_TEMPLATES)
        for seed in todo:
            config = RetuningConfig.from_setting(setting, seed)
            result = retuning_attack(model, clean_pairs, trigger, "zero", test, test.classnames, templates, config)
            measured[str(seed)] = result["ra_asr"]
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_json(cache, done)
    return [measured[str(seed)] for seed in seeds]


def spread(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main(argv=None) -> list[dict]:
    from clipclean.data import load_classification_dataset, load_image_caption_dataset
    from clipclean.triggers import load_trigger

    args = parse_args(argv)
    torch.set_num_threads(1)
    source = Path(args.benchmark_output) / f"seed{args.model_seed}"
    output = Path(args.output or Path(args.benchmark_output) / "mechanisms")
    missing = [a for a in ["none", *args.attacks] if not (source / f"poison_{a}" / "model").is_dir()]
    if missing:
        raise SystemExit(f"missing models in {source} (run benchmarks/run.py first): {missing}")
    started = time.time()
    extra = shlex.split(args.clean_args)
    jobs = [(variant, attack, seed) for variant in args.variants for attack in args.attacks
            for seed in args.clean_seeds]  # fmt: skip

    def run(job):
        variant, attack, seed = job
        return clean(source, attack, [*args.variants[variant], *extra], seed, output / variant / f"{attack}_s{seed}")

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        cleaned = dict(zip(jobs, pool.map(run, jobs)))
    data = (load_image_caption_dataset("digits:defender", image_size=32),
            load_classification_dataset("digits:test", image_size=32))  # fmt: skip
    rows = []
    for attack in args.attacks:
        trigger = load_trigger(source / f"poison_{attack}" / "trigger.json")
        reference_cache = output / "reference" / f"{attack}_retuning.json"
        reference = retune(source / "poison_none" / "model", trigger, data, args.setting, args.seeds, reference_cache)
        for variant, flags in args.variants.items():
            results = [cleaned[(variant, attack, seed)] for seed in args.clean_seeds]
            ra = []
            for folder in (output / variant / f"{attack}_s{seed}" for seed in args.clean_seeds):
                ra += retune(folder / "cleaned", trigger, data, args.setting, args.seeds, folder / "retuning.json")
            verdicts = [(result.get("inversion") or {}).get("verdict") or "-" for result in results]
            rows.append(dict(zip(COLUMNS, (
                variant, attack, len(results), results[0]["before"]["clean_accuracy"],
                statistics.fmean(r["after"]["clean_accuracy"] for r in results),
                statistics.fmean(r["after"]["attack_success_rate"] for r in results),
                max(r["after"]["attack_success_rate"] for r in results),
                ", ".join(f"{verdicts.count(v)}x {v}" for v in sorted(set(verdicts))),
                len(ra), *spread(ra), *spread(reference), shlex.join(flags),
            ))))  # fmt: skip
            print(format_row(rows[-1]), flush=True)
    write_outputs(rows, output)
    print(f"mechanism study finished in {time.time() - started:.0f} s: {output / 'mechanisms.md'}")
    return rows


def format_row(row: dict) -> str:
    def percent(value: float) -> str:
        return f"{100 * value:.1f}"

    return (
        f"| {row['variant']} | {row['attack']} | {row['n_cleanings']} | {percent(row['ca_before'])} → "
        f"{percent(row['ca_after_mean'])} | {percent(row['asr_after_mean'])} (max {percent(row['asr_after_max'])}) | "
        f"{row['verdicts']} | {row['n_retunes']} | {percent(row['ra_asr_mean'])} ± {percent(row['ra_asr_std'])} | "
        f"{percent(row['reference_ra_asr_mean'])} ± {percent(row['reference_ra_asr_std'])} |"
    )


def write_outputs(rows: list[dict], output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    write_csv(output / "mechanisms.csv", rows, COLUMNS)
    header = [
        "| variant | attack | cleanings | CA % before → after (mean) | ASR % after (mean, max) | verdicts | "
        "retunes | RA-ASR % (mean ± std) | reference RA-ASR % |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    (output / "mechanisms.md").write_text("\n".join(header + [format_row(row) for row in rows]) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
