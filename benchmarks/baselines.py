"""Equal-budget baselines: every baseline defense gets BI-BAU's optimiser steps on the same defender data, at a
learning rate chosen for it on the model zoo's *development* half only.

The budget (``equal_budget``): BI-BAU's default ``rounds x epochs`` passes over the defender pairs (3 x 6 = 18). A
baseline keeps its own number of rounds and runs ``ceil(18 / rounds)`` epochs per round (fine-tune, CleanCLIP,
BAERASE, AGE: 1 x 18; I-BAU: 3 x 6), with the same defender data and batch size. Trigger-search steps (BI-BAU's
inversion, BAERASE's generator, I-BAU's inner maximisation) update no model weight and are not counted.

The tuning (``tune``): for each baseline and each learning rate of ``--lrs``, clean every finished development
backdoored model of the zoo (``benchmarks/zoo.py``; at most ``--models`` per attack) at the equal budget, and keep the
rate with the most successful cleanings (ASR after < 5% and clean accuracy down by at most 2 points: the zoo's rule),
ties broken by the smaller mean of ``ASR after + max(CA drop, 0)``. Held-out models are never used here. Writes
``OUTPUT/baseline_lr.json`` (the budget, the grid, every run's numbers and the chosen rates), which
``benchmarks/run.py --equal-budget`` reads.

    python benchmarks/baselines.py --jobs 2                          # tune on the zoo's development half
    python benchmarks/baselines.py --report-only                     # the choice from the runs that finished
    python benchmarks/baselines.py --jobs 2 --lrs 3e-3 1e-2 --extend   # widen the recorded grid (same models)
    python benchmarks/baselines.py --jobs 2 --defenses cleanclip --tag noflip \\
        --clean-args "--set flip_probability=0" --prefix baseline_lr_noflip  # a variant: baseline_lr_noflip.{json,csv}

Then, on a held-out set, every defense cleans every model through ``benchmarks/zoo.py`` (a cleaning folder per
defense; ``--flags DEFENSE`` prints the equal-budget ``clean_clip.py`` flags at the chosen rate), and ``--compare``
puts the sets' zoo CSVs side by side: cleaning success (the zoo's rule) with a 95% Wilson interval, mean ASR after
and mean clean-accuracy drop with 95% bootstrap intervals (over the implanted backdoored models), and the mean drop
on the never-poisoned models:

    for D in finetune cleanclip ibau age baerase; do
        python benchmarks/zoo.py --jobs 2 $SET --clean-name clean_$D --prefix PREFIX_clean_$D \\
            --clean-args "$(python benchmarks/baselines.py --flags $D)"
    done
    python benchmarks/baselines.py --compare bibau=benchmarks/results/PREFIX.csv \\
        finetune=benchmarks/results/PREFIX_clean_finetune.csv ... --output benchmarks/results/defenses_PREFIX

A defense cleaned again at other cleaning seeds (``zoo.py --clean-name clean_seed1 --clean-args "--seed 1"``) is
compared over all its cleanings with ``NAME=CSV1,CSV2,...``: each model's numbers are averaged over its seeds, the
intervals are over models (a model's seeds are not independent draws), and the per-seed counts and means are listed.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import zoo

BASELINES = ("finetune", "cleanclip", "baerase", "age", "ibau")
DEFAULT_LRS = (3e-5, 1e-4, 3e-4, 1e-3)
CHOSEN_FILENAME = "baseline_lr.json"


def bibau_epochs() -> int:
    """BI-BAU's default passes over the defender data: ``rounds x epochs`` of its config."""
    from clipclean.defenses import DEFENSES

    config = DEFENSES["bibau"][0]()
    return config.rounds * config.epochs


def equal_budget(defense: str, total_epochs: int | None = None, lr: float | None = None) -> list[str]:
    """``clean_clip.py`` flags that give ``defense`` ``total_epochs`` (default: BI-BAU's) passes over the defender
    data in its own number of rounds, and learning rate ``lr`` (``None``: the defense's default)."""
    from clipclean.defenses import DEFENSES

    total = bibau_epochs() if total_epochs is None else total_epochs
    rounds = DEFENSES[defense][0]().rounds
    flags = ["--rounds", str(rounds), "--epochs", str(math.ceil(total / rounds))]
    return flags if lr is None else [*flags, "--lr", f"{lr:g}"]


def load_tuning(path: Path) -> dict:
    """A tuning's file (``{"chosen": {}}`` when it has not been run)."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"chosen": {}}


def load_chosen(path: Path) -> dict[str, float]:
    """The learning rates ``tune`` chose (``{}`` when it has not been run)."""
    return load_tuning(path)["chosen"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("--zoo-dir", default=str(Path.home() / ".cache" / "clipclean" / "zoo"))
    parser.add_argument("--output", default="benchmarks/results")
    parser.add_argument(
        "--prefix", default=Path(CHOSEN_FILENAME).stem,
        help="the tuning's files: OUTPUT/PREFIX.json (the choice; --chosen reads it, and run.py the default one) "
        "and OUTPUT/PREFIX.csv (every run)",
    )  # fmt: skip
    parser.add_argument("--targets", nargs="+", default=None, help="the zoo's (default: zoo.py's)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="the zoo's backdoored model seeds")
    parser.add_argument("--defenses", nargs="+", default=list(BASELINES), choices=BASELINES)
    parser.add_argument("--lrs", nargs="+", type=float, default=list(DEFAULT_LRS))
    parser.add_argument("--models", type=int, default=2, help="development backdoored models per attack")
    parser.add_argument(
        "--total-epochs", type=int, default=None, help="the budget (default: BI-BAU's rounds x epochs)"
    )
    parser.add_argument("--clean-args", default="", help="extra clean_clip.py flags for every run")
    parser.add_argument(
        "--tag", default="",
        help="a name for a tuning with other --clean-args (its runs' folders are DEFENSE_TAG_lrLR; the file records "
        "the flags, and --flags prints them)",
    )  # fmt: skip
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (one CPU thread each)")
    parser.add_argument("--report-only", action="store_true", help="no training: the choice from finished runs")
    parser.add_argument(
        "--extend", action="store_true",
        help="widen an earlier tuning: keep the runs recorded in OUTPUT/PREFIX.json (same models) for the grid "
        "points not run now, and choose over the union",
    )  # fmt: skip
    parser.add_argument(
        "--flags", metavar="DEFENSE", choices=BASELINES, default=None,
        help="print DEFENSE's clean_clip.py flags at the equal budget and the rate chosen in --chosen, and exit",
    )  # fmt: skip
    parser.add_argument("--chosen", default=f"benchmarks/results/{CHOSEN_FILENAME}", help="the tuning's file")
    parser.add_argument(
        "--compare", nargs="+", metavar="NAME=CSV", default=None,
        help="compare the defenses' cleanings of one set (zoo CSVs, one per defense; NAME=CSV1,CSV2,...: the "
        "same defense's cleanings at several cleaning seeds) and exit; --output: the tables' path without suffix",
    )  # fmt: skip
    return parser.parse_args(argv)


def flags(defense: str, chosen_path: str | Path, total_epochs: int | None = None) -> list[str]:
    """``clean_clip.py`` flags for ``defense`` at the equal budget and the learning rate the tuning chose (its
    default when the tuning did not run it), plus the ``--clean-args`` of a tuning run with ``--tag``."""
    tuning = load_tuning(Path(chosen_path))
    lr = tuning["chosen"].get(defense)
    return ["--defense", defense, *equal_budget(defense, total_epochs, lr), *tuning.get("clean_args", "").split()]


def mean_interval(
    values: list[float], confidence: float = 0.95, resamples: int = 10_000
) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean and its percentile bootstrap interval (``resamples`` draws, seeded, so a
    report regenerates to the digit). A bootstrap rather than a t interval: ASRs after cleaning pile up at 0 with a
    few large values, and a t interval would reach below 0."""
    import numpy as np

    array = np.asarray(values, dtype=float)
    mean = float(array.mean())
    if len(array) < 2:
        return mean, mean, mean
    draws = np.random.default_rng(0).choice(array, size=(resamples, len(array)), replace=True).mean(axis=1)
    low, high = np.quantile(draws, [(1 - confidence) / 2, (1 + confidence) / 2])
    return mean, float(low), float(high)


def _asr_after(row: dict) -> float:
    return row["asr_after"]


def _ca_drop(row: dict) -> float:
    return row["ca_before"] - row["ca_after"]


def _per_model(seeds: list[dict[str, dict]], models: list[str], value) -> list[float]:
    """Each model's ``value`` averaged over its cleaning seeds."""
    return [statistics.mean(value(seed[model]) for seed in seeds) for model in models]


def _seed_spread(seeds: list[dict[str, dict]], models: list[str], value) -> list[float]:
    """The lowest and highest per-seed mean of ``value`` over ``models``."""
    means = [statistics.mean(value(seed[model]) for model in models) for seed in seeds]
    return [min(means), max(means)]


def compare_defenses(named_rows: dict[str, dict[str, dict] | list[dict[str, dict]]]) -> dict:
    """Per defense (``{name: rows by model}``, rows as ``zoo.recorded_rows`` reads them, or ``{name: [rows by model,
    ...]}``, one mapping per cleaning seed): over its implanted backdoored models (``zoo.counted``) the successes
    (``cleaned``, over every cleaning), per attack, the cleanings left under 5% ASR whatever the clean-accuracy cost
    (``asr_removed``), and the mean ASR after and clean-accuracy drop with bootstrap intervals; over its never-poisoned
    models the mean clean-accuracy drop. The successes' interval is Wilson's over the models (with several cleaning
    seeds, at the mean count per seed); with several cleaning seeds each model's numbers are first averaged over its
    seeds and every interval is over models (the seeds of one model are not independent draws), and
    ``cleaned_per_seed`` and ``seed_spread`` (the lowest and highest per-seed mean) show what the cleaning seed alone
    moves; for a defense that records verdicts, the detections, targets named and false alarms over every cleaning
    (and for every defense the wall time of a cleaning). Every defense and every seed must have cleaned the same
    models (a paired comparison)."""
    runs = {name: rows if isinstance(rows, list) else [rows] for name, rows in named_rows.items()}
    first = sorted(next(iter(runs.values()))[0])
    for name, seeds in runs.items():
        for rows in seeds:
            if sorted(rows) != first:
                changed = sorted(set(rows) ^ set(first))
                raise ValueError(f"{name} cleaned other models than the first defense: {changed}")
    summary = {}
    for name, seeds in runs.items():
        backdoored, clean = zoo.counted(list(seeds[0].values()))
        if not backdoored:
            raise ValueError(f"{name}: no implanted backdoored model to compare on")
        models = [row["name"] for row in backdoored]
        cleanings = [seed[model] for seed in seeds for model in models]
        successes = sum(bool(row["cleaned"]) for row in cleanings)
        # Wilson over the models, at the mean count per seed: a model's seeds add no independent models (and a
        # bootstrap over models collapses to a zero-width interval when every cleaning succeeds or every one fails)
        low, high = zoo.wilson_interval(successes / len(seeds), len(backdoored))
        clean_models = [row["name"] for row in clean]
        summary[name] = {
            "backdoored": len(backdoored),
            "cleaned": successes,
            "cleaned_interval": [low, high],
            "cleaned_by_attack": {
                attack: [
                    sum(bool(row["cleaned"]) for row in cleanings if row["attack"] == attack),
                    sum(row["attack"] == attack for row in cleanings),
                ]
                for attack in zoo.ATTACKS
            },
            "asr_removed": sum(row["asr_after"] < zoo.SUCCESS_ASR for row in cleanings),
            "asr_after": mean_interval(_per_model(seeds, models, _asr_after)),
            "ca_drop": mean_interval(_per_model(seeds, models, _ca_drop)),
            "never_poisoned": len(clean),
            "never_poisoned_ca_drop": mean_interval(_per_model(seeds, clean_models, _ca_drop)) if clean else None,
            "models": models,
        }
        summary[name].update(_verdicts_and_time(seeds, models, clean_models))
        if len(seeds) > 1:
            summary[name].update({
                "seeds": len(seeds),
                "cleanings": len(cleanings),
                "cleaned_per_seed": [sum(bool(seed[model]["cleaned"]) for model in models) for seed in seeds],
                "seed_spread": {"asr_after": _seed_spread(seeds, models, _asr_after),
                                "ca_drop": _seed_spread(seeds, models, _ca_drop)},
            })  # fmt: skip
    return summary


def _verdicts_and_time(seeds: list[dict[str, dict]], models: list[str], clean_models: list[str]) -> dict:
    """Over every cleaning: the backdoored models called backdoored and those with the target named
    (``named_correctly``), the never-poisoned ones called backdoored (``None`` each for a defense with no verdict:
    none of its rows records one), and the cleaning's wall time in seconds (median, lowest, highest)."""
    backdoored = [seed[model] for seed in seeds for model in models]
    clean = [seed[model] for seed in seeds for model in clean_models]
    times = [row["clean_wall_s"] for row in backdoored + clean if row.get("clean_wall_s") is not None]
    wall = [statistics.median(times), min(times), max(times)] if times else None
    if not any(row.get("verdict") for row in backdoored + clean):
        return {"detected": None, "named": None, "false_alarms": None, "clean_wall_s": wall}
    return {
        "detected": sum(row.get("verdict") == "backdoored" for row in backdoored),
        "named": sum(bool(row.get("named_correctly")) for row in backdoored),
        "false_alarms": sum(row.get("verdict") == "backdoored" for row in clean),
        "clean_wall_s": wall,
    }


def _range(pair: list[float]) -> str:
    return f"{100 * pair[0]:.1f}-{100 * pair[1]:.1f}"


def compare_markdown(summary: dict, marker: str = "") -> str:
    """The comparison's table (and, with cleaning seeds, a paragraph on their spread), each block after ``marker``
    (a line naming where the numbers come from, or nothing)."""

    def pct(triple) -> str:
        return "-" if triple is None else f"{100 * triple[0]:.1f} ({100 * triple[1]:.1f} to {100 * triple[2]:.1f})"

    lines = [
        *([marker] if marker else []),
        "| defense | cleaned (ASR < 5%, CA drop <= 2) | by attack (BadNet / Blended / BadCLIP) | ASR < 5% "
        "| ASR % after, mean (95% CI) | CA drop, points, mean (95% CI) | never-poisoned: CA drop, points |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, entry in summary.items():
        low, high = entry["cleaned_interval"]
        by_attack = " / ".join(f"{done}/{total}" for done, total in entry["cleaned_by_attack"].values())
        cleanings = entry.get("cleanings", entry["backdoored"])
        cleaned = f"{entry['cleaned']}/{cleanings} ({100 * low:.0f}-{100 * high:.0f}%)"
        if "seeds" in entry:
            per_seed = ", ".join(str(count) for count in entry["cleaned_per_seed"])
            cleaned = (
                f"{entry['cleaned']}/{cleanings} cleanings ({entry['seeds']} seeds x {entry['backdoored']} models; "
                f"per seed {per_seed}; {100 * entry['cleaned'] / cleanings:.0f}%, 95% CI "
                f"{100 * low:.0f}-{100 * high:.0f}%)"
            )
        lines.append(
            f"| {name} | {cleaned} | {by_attack} | {entry['asr_removed']}/{cleanings} | {pct(entry['asr_after'])} "
            f"| {pct(entry['ca_drop'])} | {pct(entry['never_poisoned_ca_drop'])} |"
        )
    lines += ["", *([marker] if marker else []), *verdict_markdown(summary)]
    seeded = {name: entry["seed_spread"] for name, entry in summary.items() if "seeds" in entry}
    if seeded:
        ranges = "; ".join(
            f"{name} {_range(spread['asr_after'])} / {_range(spread['ca_drop'])}" for name, spread in seeded.items()
        )
        lines += [
            "",
            *([marker] if marker else []),
            "With several cleaning seeds, each model's numbers are averaged over its seeds and the intervals are over "
            f"models; the per-seed means of ASR % after / CA drop (points) range over: {ranges}.",
        ]
    return "\n".join(lines) + "\n"


def verdict_markdown(summary: dict) -> list[str]:
    """The comparison's second table: verdicts (for a defense that records them) and the wall time of a cleaning."""
    lines = [
        "| defense | backdoored called backdoored | target named | never-poisoned called backdoored "
        "| wall time of a cleaning, s, median (range) |",
        "|---|---|---|---|---|",
    ]
    for name, entry in summary.items():
        cleanings = entry.get("cleanings", entry["backdoored"])
        clean_cleanings = entry["never_poisoned"] * entry.get("seeds", 1)
        wall = entry.get("clean_wall_s")
        time = "-" if wall is None else f"{wall[0]:.0f} ({wall[1]:.0f}-{wall[2]:.0f})"
        lines.append(
            f"| {name} | {_count(entry['detected'], cleanings)} | {_count(entry['named'], cleanings)} "
            f"| {_count(entry['false_alarms'], clean_cleanings)} | {time} |"
        )
    return lines


def _count(value: int | None, total: int) -> str:
    return "-" if value is None else f"{value}/{total}"


def compare(pairs: list[str], output: str | Path) -> dict:
    """``--compare``: read ``NAME=CSV[,CSV...]`` pairs, write ``OUTPUT.json`` and ``OUTPUT.md``, print the table."""
    named_rows = {}
    for pair in pairs:
        name, separator, path = pair.partition("=")
        if not separator or not name or not path:
            raise SystemExit(f"--compare takes NAME=CSV pairs, got {pair!r}")
        paths = path.split(",")  # several CSVs: the same defense's cleanings of the same models at other seeds
        named_rows[name] = zoo.recorded_rows(paths[0]) if len(paths) == 1 else [zoo.recorded_rows(p) for p in paths]
    summary = compare_defenses(named_rows)
    from clipclean.fileio import write_json

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json(output.with_suffix(".json"), {"files": dict(pair.split("=", 1) for pair in pairs), "defenses": summary})
    marker = f"<!-- derived: {output.with_suffix('.json').as_posix()}, by benchmarks/baselines.py -->"
    output.with_suffix(".md").write_text(compare_markdown(summary, marker), encoding="utf-8")
    print(compare_markdown(summary), end="")
    return summary


def development_models(zoo_dir: Path, per_attack: int, targets=None, seeds=None):
    """The first ``per_attack`` development backdoored models of each attack of the zoo of ``targets`` x
    ``seeds`` whose poisoning has finished."""
    chosen = []
    for attack in zoo.ATTACKS:
        ready = [
            model
            for model in zoo.zoo_models(targets, seeds)
            if model.attack == attack and not model.held_out
            and (zoo_dir / model.name / "poison" / "results.json").is_file()
        ]  # fmt: skip
        chosen += ready[:per_attack]
    return chosen


def run_folder(zoo_dir: Path, model: zoo.ZooModel, defense: str, lr: float, tag: str = "") -> Path:
    return zoo_dir / model.name / "baselines" / (f"{defense}_{tag}_lr{lr:g}" if tag else f"{defense}_lr{lr:g}")


def outcome(results: dict) -> dict:
    before, after = results["before"], results["after"]
    drop = before["clean_accuracy"] - after["clean_accuracy"]
    return {
        "asr_after": after["attack_success_rate"],
        "ca_drop": drop,
        "cleaned": after["attack_success_rate"] < zoo.SUCCESS_ASR and drop <= zoo.SUCCESS_CA_DROP,
        "wall_time_s": results.get("wall_time_s"),
    }


def choose(runs: list[dict]) -> float:
    """The learning rate of ``runs`` (one defense) with the most successes, then the smallest mean cost."""
    by_lr: dict[float, list[dict]] = {}
    for run in runs:
        by_lr.setdefault(run["lr"], []).append(run)

    def key(lr: float):
        chosen = by_lr[lr]
        cost = statistics.mean(run["asr_after"] + max(run["ca_drop"], 0.0) for run in chosen)
        return (-sum(run["cleaned"] for run in chosen), cost, lr)

    return min(by_lr, key=key)


def extended(path: Path, runs: list[dict], models: list[str], lrs: list[float]) -> tuple[list[dict], list[float]]:
    """``--extend``: the runs recorded in ``path`` (an earlier tuning on the same ``models``) that ``runs`` does not
    redo, plus ``runs``; and the union of the grids."""
    earlier = json.loads(path.read_text(encoding="utf-8"))
    if sorted(earlier["models"]) != sorted(models):
        raise SystemExit(f"--extend: {path} tuned on {earlier['models']}, not on {models}")
    redone = {(run["model"], run["defense"], run["lr"]) for run in runs}
    kept = [run for run in earlier["runs"] if (run["model"], run["defense"], run["lr"]) not in redone]
    return kept + runs, sorted(set(earlier["lrs"]) | set(lrs))


RUN_COLUMNS = ("model", "attack", "defense", "lr", "asr_after", "ca_drop", "cleaned", "wall_time_s")


def write_runs_csv(path: Path, runs: list[dict]) -> None:
    """Every run of a tuning, one row each (the JSON's ``runs``; a CSV so the docs' quoted numbers are checked)."""
    from clipclean.fileio import write_csv

    ordered = sorted(runs, key=lambda run: (BASELINES.index(run["defense"]), run["lr"], run["model"]))
    write_csv(path, [{column: run.get(column) for column in RUN_COLUMNS} for run in ordered], RUN_COLUMNS)


def tuning_path(args: argparse.Namespace) -> Path:
    return Path(args.output) / f"{args.prefix}.json"


def tune(args: argparse.Namespace) -> dict:
    zoo_dir = Path(args.zoo_dir).expanduser()
    models = development_models(zoo_dir, args.models, args.targets, args.seeds)
    if not models:
        raise SystemExit(
            f"no finished development model in {zoo_dir}: build them first with benchmarks/zoo.py (--no-clean: the "
            "models only)"
        )
    jobs = [(model, defense, lr) for defense in args.defenses for lr in args.lrs for model in models]

    def run(job) -> dict | None:
        model, defense, lr = job
        poisoned = zoo_dir / model.name / "poison"
        folder = run_folder(zoo_dir, model, defense, lr, args.tag)
        if args.report_only and not (folder / "results.json").is_file():
            return None
        arguments = ["--model", str(poisoned / "model"), "--clean-data", "digits:defender", "--eval-data",
                     "digits:test", "--eval-trigger", str(poisoned / "trigger.json"), "--defense", defense,
                     "--seed", str(model.seed), *equal_budget(defense, args.total_epochs, lr),
                     *args.clean_args.split()]  # fmt: skip
        results = zoo.run_script("recipes/clean_clip.py", arguments, folder)
        return {"model": model.name, "attack": model.attack, "defense": defense, "lr": lr, **outcome(results)}

    started = time.time()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        runs = [run for run in pool.map(run, jobs) if run is not None]
    lrs = list(args.lrs)
    if args.extend:
        runs, lrs = extended(tuning_path(args), runs, [model.name for model in models], lrs)
    tuned = [defense for defense in BASELINES if any(run["defense"] == defense for run in runs)]
    chosen = {defense: choose([run for run in runs if run["defense"] == defense]) for defense in tuned}
    summary = {
        "budget": {defense: equal_budget(defense, args.total_epochs) for defense in tuned},
        "lrs": lrs,
        "models": [model.name for model in models],
        "runs": runs,
        "chosen": chosen,
        "wall_time_s": time.time() - started,
    }
    if args.tag:  # a variant of the defenses: --flags gives its flags too
        summary.update({"tag": args.tag, "clean_args": args.clean_args})
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    from clipclean.fileio import write_json

    write_json(tuning_path(args), summary)
    write_runs_csv(tuning_path(args).with_suffix(".csv"), runs)
    for defense, lr in chosen.items():
        mine = [run for run in runs if run["defense"] == defense and run["lr"] == lr]
        print(f"{defense}: lr {lr:g} ({sum(run['cleaned'] for run in mine)}/{len(mine)} cleaned)")
    return summary


def main(argv=None):
    args = parse_args(argv)
    if args.flags:
        print(" ".join(flags(args.flags, args.chosen, args.total_epochs)))
        return None
    if args.compare:
        return compare(args.compare, args.output)
    return tune(args)


if __name__ == "__main__":
    main(sys.argv[1:])
