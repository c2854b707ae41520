"""Do two processes clean like one? The same model cleaned by one process and by two real processes at an equal
global batch, over several cleaning seeds.

For each cleaning seed, ``recipes/clean_clip.py`` cleans ``--model-dir``'s model (``MODEL_DIR/model``, ASR measured
with ``MODEL_DIR/trigger.json``) twice with the same flags: once in one process with ``--batch-size B``, once in two
real processes (``accelerate launch``; gloo on a CPU) with ``--global-batch-size B``, so both take the same
unlearning steps on the same pairs (docs/method.md, "One process or several"). Per run: clean accuracy and ASR after,
the verdict, the named target, the verdict score and the wall time. Per process count: the mean and the range over
the seeds. **Agreement** (the criterion): on every seed the same verdict and the same named target, and for clean
accuracy and ASR after, the difference of the two means is at most the larger of the two seed ranges.

Writes ``OUTPUT/processes.csv`` (one row per run) and ``OUTPUT/processes.md``; finished runs (``OUTPUT/runs/...``)
are reused.

    python benchmarks/run.py --defenses bibau --attacks blended            # the seed-0 Blended model (once)
    python benchmarks/processes.py --model-dir OUT/seed0/poison_blended --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from run import cleaning_outcome
from scale import accelerate_command

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = (
    "run", "seed", "processes", "global_batch_size", "steps_per_epoch", "ca_before", "ca_after", "asr_before",
    "asr_after", "verdict", "recovered_target", "verdict_statistic", "verdict_score", "wall_s",
)  # fmt: skip
METRICS = ("ca_after", "asr_after")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--model-dir", required=True, help="a poison_clip.py output folder (model/, trigger.json)")
    parser.add_argument("--output", default="benchmarks/results", help="processes.csv/.md here; runs under runs/")
    parser.add_argument("--runs", default=None, help="where the runs go (default: OUTPUT/runs)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="cleaning seeds")
    parser.add_argument("--batch-size", type=int, default=64, help="the global batch of both settings")
    parser.add_argument("--clean-args", default="", help="extra clean_clip.py flags for every run")
    return parser.parse_args(argv)


def clean(model_dir: Path, folder: Path, seed: int, processes: int, args: argparse.Namespace) -> dict:
    """One cleaning (reused when ``folder/results.json`` exists); returns its row."""
    results = folder / "results.json"
    if not results.is_file():
        batch = ["--batch-size" if processes == 1 else "--global-batch-size", str(args.batch_size)]
        arguments = [
            *("--model", str(model_dir / "model"), "--clean-data", "digits:defender", "--eval-data", "digits:test"),
            *("--eval-trigger", str(model_dir / "trigger.json"), "--seed", str(seed), *batch, "--no-progress"),
            *("--output_dir", str(folder), "--overwrite", *args.clean_args.split()),
        ]
        env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        folder.mkdir(parents=True, exist_ok=True)
        started = time.time()
        with open(folder / "run.log", "w") as log:
            command = accelerate_command(ROOT / "recipes" / "clean_clip.py", arguments, processes)
            subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
        print(f"seed {seed}, {processes} process(es): {time.time() - started:.0f} s", flush=True)
    return {"run": folder.name, **row_of(seed, json.loads(results.read_text()))}


def row_of(seed: int, results: dict) -> dict:
    inversion = results.get("inversion") or {}
    return {
        "seed": seed,
        "processes": results["world_size"],
        "global_batch_size": results.get("global_batch_size"),
        "steps_per_epoch": results.get("steps_per_epoch"),
        **cleaning_outcome(results),
        "verdict_statistic": inversion.get("verdict_statistic"),
        "verdict_score": inversion.get("anomaly_index"),
        "wall_s": results.get("wall_time_s"),
    }


def summarise(rows: list[dict]) -> dict:
    """Mean and range per process count and metric, and the agreement criterion (module docstring)."""
    settings = sorted({row["processes"] for row in rows})
    summary: dict = {"settings": {}}
    for processes in settings:
        mine = [row for row in rows if row["processes"] == processes]
        summary["settings"][processes] = {
            metric: {
                "mean": statistics.mean(r[metric] for r in mine),
                "range": max(r[metric] for r in mine) - min(r[metric] for r in mine),
            }  # fmt: skip
            for metric in (*METRICS, "wall_s")
        }
    by_seed: dict[int, dict[int, dict]] = {}
    for row in rows:
        by_seed.setdefault(row["seed"], {})[row["processes"]] = row
    paired = [runs for runs in by_seed.values() if len(runs) == len(settings)]
    summary["seeds_compared"] = len(paired)
    summary["same_verdict"] = all(len({r["verdict"] for r in runs.values()}) == 1 for runs in paired)
    summary["same_target"] = all(len({r["recovered_target"] for r in runs.values()}) == 1 for runs in paired)
    if len(settings) == 2:
        one, two = (summary["settings"][s] for s in settings)
        summary["within_spread"] = {
            metric: abs(one[metric]["mean"] - two[metric]["mean"]) <= max(one[metric]["range"], two[metric]["range"])
            for metric in METRICS
        }
        summary["agree"] = bool(
            paired and summary["same_verdict"] and summary["same_target"] and all(summary["within_spread"].values())
        )
    return summary


def markdown(rows: list[dict], summary: dict, model_dir: Path, args: argparse.Namespace) -> str:
    lines = [
        f"<!-- {time.strftime('%Y-%m-%d')}, `python benchmarks/processes.py --model-dir {model_dir} --seeds "
        f"{' '.join(map(str, args.seeds))} --batch-size {args.batch_size}` -->",
        "",
        "| run | seed | processes | global batch | steps/epoch | CA % before → after | ASR % before → after | verdict "
        "| named target | verdict score | wall s |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r["seed"], r["processes"])):
        score = "-" if r["verdict_score"] is None else f"{r['verdict_score']:.2f}"
        lines.append(
            f"| {r['run']} | {r['seed']} | {r['processes']} | {r['global_batch_size']} | {r['steps_per_epoch']} "
            f"| {100 * r['ca_before']:.2f} → {100 * r['ca_after']:.2f} | {100 * r['asr_before']:.1f} → "
            f"{100 * r['asr_after']:.1f} | {r['verdict']} | {r['recovered_target']} | {score} | {r['wall_s']:.0f} |"
        )
    lines += ["", "<!-- derived: benchmarks/results/processes.csv, by benchmarks/processes.py -->",
              "| processes | CA after % (mean, range) | ASR after % (mean, range) | wall s (mean) |",
              "|---:|---:|---:|---:|"]  # fmt: skip
    for processes, metrics in summary["settings"].items():
        ca, asr = metrics["ca_after"], metrics["asr_after"]
        lines.append(f"| {processes} | {100 * ca['mean']:.2f} ({100 * ca['range']:.2f}) | {100 * asr['mean']:.2f} "
                     f"({100 * asr['range']:.2f}) | {metrics['wall_s']['mean']:.0f} |")  # fmt: skip
    if "agree" in summary:
        spread = ", ".join(f"{m}: {'yes' if ok else 'no'}" for m, ok in summary["within_spread"].items())
        lines += ["", f"Seeds compared: {summary['seeds_compared']}; same verdict on every seed: "
                  f"{'yes' if summary['same_verdict'] else 'no'}; same named target: "
                  f"{'yes' if summary['same_target'] else 'no'}; difference of means within the larger seed range: "
                  f"{spread}. **Agree: {'yes' if summary['agree'] else 'no'}.**"]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    args = parse_args(argv)
    model_dir = Path(args.model_dir).expanduser()
    if not (model_dir / "model").is_dir() or not (model_dir / "trigger.json").is_file():
        raise SystemExit(f"{model_dir}: expected a poison_clip.py output folder with model/ and trigger.json")
    output = Path(args.output)
    runs = Path(args.runs) if args.runs else output / "runs"
    rows = [
        clean(model_dir, runs / f"seed{seed}_p{processes}", seed, processes, args)
        for seed in args.seeds
        for processes in (1, 2)
    ]
    summary = summarise(rows)
    output.mkdir(parents=True, exist_ok=True)
    with open(output / "processes.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (output / "processes.md").write_text(markdown(rows, summary, model_dir, args))
    print(f"agree: {summary.get('agree')}  ({output / 'processes.md'})")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
