"""Does ``recipes/poison_clip.py`` with its defaults implant a usable backdoor for every attack, seed and target?

Trains one digits CLIP per attack x target x model seed with nothing but ``--attack``, ``--target`` and ``--seed``
set (every other flag at the recipe's default: 5% poisoned, Blended alpha 0.2 noise, BadNet's noise patch, BadCLIP's
patch optimised against the model being trained as loaded, the trigger's noise from ``--trigger-seed`` 0 whatever the
run's seed; the first grid, ``poisoning_trigger_per_seed.csv``, drew it from the run's seed, before that flag
existed), then tabulates clean accuracy and attack success rate
against the bar of issue 16 (CA >= 90% and ASR >= 90%). The zoo (``benchmarks/zoo.py``) uses weaker trigger variants
on purpose; this grid is the recipe's own defaults.

    python benchmarks/poisoning.py --jobs 2                  # 3 attacks x 4 targets x seeds 0-4 = 60 models
    python benchmarks/poisoning.py --report-only             # tables from the finished runs

Models are cached (and resumed) under ``--zoo-dir``/``poison_defaults``/NAME; the tables go to
``--output``/``poisoning.{csv,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo  # noqa: E402  (the zoo's cached, resumable runner)

from clipclean.fileio import write_csv  # noqa: E402

BAR = 0.90  # CA and ASR both at least 90% (issue 16, item 1)
COLUMNS = ("name", "attack", "target", "seed", "poison_rate", "converged", "ca", "asr", "usable", "wall_s")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo-dir", default=str(Path.home() / ".cache" / "clipclean" / "zoo"))
    parser.add_argument("--output", default="benchmarks/results")
    parser.add_argument("--attacks", nargs="+", default=list(zoo.ATTACKS), choices=zoo.ATTACKS)
    parser.add_argument("--targets", nargs="+", default=list(zoo.DEFAULT_TARGETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (one CPU thread each)")
    parser.add_argument("--poison-args", default="", help="extra poison_clip.py flags (smoke: --epochs 2)")
    parser.add_argument("--report-only", action="store_true", help="no training: tables from finished runs")
    return parser.parse_args(argv)


def grid(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    """(attack, target, seed) of every run, seeds interleaved so that a stopped build covers every attack."""
    return [(attack, target, seed) for seed in args.seeds for target in args.targets for attack in args.attacks]


def folder(root: Path, attack: str, target: str, seed: int) -> Path:
    return root / "poison_defaults" / f"{attack}_{target}_s{seed}"


def train(root: Path, attack: str, target: str, seed: int, extra: str) -> dict:
    arguments = ["--attack", attack, "--target", target, "--seed", str(seed), *extra.split()]
    return zoo.run_script("recipes/poison_clip.py", arguments, folder(root, attack, target, seed))


def row(results: dict, attack: str, target: str, seed: int) -> dict:
    ca, asr = results["clean_accuracy"], results["attack_success_rate"]
    return {
        "name": f"{attack}_{target}_s{seed}", "attack": attack, "target": target, "seed": seed,
        "poison_rate": results.get("poison_rate"), "converged": results.get("converged"), "ca": ca, "asr": asr,
        "usable": ca >= BAR and asr >= BAR, "wall_s": results.get("wall_time_s"),
    }  # fmt: skip


def markdown(rows: list[dict]) -> str:
    lines = [
        "<!-- derived: benchmarks/results/poisoning.csv, by benchmarks/poisoning.py -->",
        "| attack | models | CA >= 90% and ASR >= 90% | CA % min / median | ASR % min / median | below the bar |",
        "|---|---:|---|---|---|---|",
    ]
    for attack in zoo.ATTACKS:
        chosen = [r for r in rows if r["attack"] == attack]
        if not chosen:
            continue
        usable = sum(r["usable"] for r in chosen)
        low, high = zoo.wilson_interval(usable, len(chosen))
        ca, asr = [100 * r["ca"] for r in chosen], [100 * r["asr"] for r in chosen]
        below = [r for r in chosen if not r["usable"]]
        misses = ", ".join(f"{r['name']} ({100 * r['ca']:.1f} / {100 * r['asr']:.1f})" for r in below)
        lines.append(
            f"| {attack} | {len(chosen)} | {usable}/{len(chosen)} (95% CI {100 * low:.0f}-{100 * high:.0f}) | "
            f"{min(ca):.1f} / {statistics.median(ca):.1f} | {min(asr):.1f} / {statistics.median(asr):.1f} | "
            f"{misses or '-'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    root, output = Path(args.zoo_dir).expanduser(), Path(args.output)
    runs = grid(args)
    if not args.report_only:
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = [pool.submit(train, root, *run, args.poison_args) for run in runs]
            for future in futures:
                try:
                    future.result()
                except Exception as error:  # one failed run must not hide the others' results
                    print(f"a run failed: {error}", file=sys.stderr)
    rows = []
    for attack, target, seed in runs:
        results = folder(root, attack, target, seed) / "results.json"
        if results.is_file():
            rows.append(row(json.loads(results.read_text()), attack, target, seed))
    print(f"{len(rows)} of {len(runs)} runs finished")
    if rows:
        output.mkdir(parents=True, exist_ok=True)
        write_csv(output / "poisoning.csv", rows, COLUMNS)
        (output / "poisoning.md").write_text(markdown(rows))
        print((output / "poisoning.md").read_text())
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
