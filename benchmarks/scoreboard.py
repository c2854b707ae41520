"""The held-out scoreboard: today's default CLIP verdict and cleaning on every model population built after the
defaults were fixed, pooled by poison rate, with 95% intervals and the number of models each number covers.

Every population of ``benchmarks/zoo.py`` answers one question in benchmarks/README.md; this script pools the ones
that test *today's* default (``winner-or-max-or-search-lift`` > 1.29 since ``882a1bf``, with the unlearning defaults
of the day) into the numbers the README leads with. Which sets count, and how (``SETS``), was fixed by what each set
is, not by its numbers:

* a set counts when it was built after the default verdict was fixed and its CSV records the default's score
  (``winner_or_max_or_search_lift``); the first zoo and the seeds 3-4 fresh set (``zoo.csv``) were cleaned under
  earlier statistics and do not record it, so they are left out, whatever they scored;
* ``role`` "test": no choice of any kind was made on the set; "development after": built as a test of the default,
  later the development models of verdict variants that were all rejected (the default was not changed on them, so
  its numbers there are still a test of it, but a weaker one). The CSV and table give both pools;
* a backdoored model counts only where the attack implanted (``zoo.counted``: ``poison_converged`` not false);
* the verdict is read from the score column (score > the default threshold; the named target from its candidate
  column, counted only on a model called backdoored: a "no backdoor found" names nothing to unlearn, where
  ``zoo.py``'s "target named" counts the name whatever the verdict), so
  a set cleaned with a candidate's flags (``zoo_rate2test``) still gives the default's verdict; cleaning success and
  the CA drop are counted only on sets whose cleanings ran the defaults (``default_cleaning``). On every other set the
  score column and the recorded verdict and target agree (checked on every read);
* never-poisoned models are pooled over every set whatever its poison rate (a rate means nothing without poison).

Targets (issue 16, on held-out models): ROC-AUC >= 0.95; at most 1 never-poisoned model in 12 called backdoored;
target named on >= 90%; cleaning success (ASR after < 5%, CA drop <= 2 points) >= 90%; median CA drop <= 1.5 points.

The retuning attack (``PERSISTENCE_SETS``): every held-out default cleaning it was run on, per attack group and
cleaning outcome, re-learning within ``clipclean.complete.PERSISTENCE_MARGIN`` of the never-poisoned model or not.

    python benchmarks/scoreboard.py    # results/scoreboard.{csv,md,json}, scoreboard_persistence.csv (zoo CSVs)
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import zoo

from clipclean.fileio import atomic_write, write_csv, write_json

RESULTS = zoo.ROOT / "benchmarks" / "results"
STATISTIC = "winner-or-max-or-search-lift"
SCORE, NAMED = zoo.VERDICT_STATISTICS[STATISTIC]
THRESHOLD = zoo.default_threshold(STATISTIC)
TARGETS = {
    "roc_auc": 0.95,
    "false_alarm_rate": 1 / 12,
    "named_rate": 0.9,
    "cleaned_rate": 0.9,
    "ca_drop_median_points": 1.5,
}


@dataclass(frozen=True)
class HeldOutSet:
    """One zoo CSV (``benchmarks/results/NAME.csv``) that tests today's default."""

    name: str
    rate: str  # the backdoored models' poison rate: "5%" or "2%" ("-": never-poisoned models only)
    role: str  # "test" or "development after" (module docstring)
    default_cleaning: bool  # its cleanings ran the defaults
    split: str | None = None  # only the rows of this split (None: every row)
    note: str = ""


SETS = (
    HeldOutSet("zoo_rebuilt", "5%", "test", True, "fresh", "seeds 5-6, targets one three five eight, 2026-12-04"),
    HeldOutSet("zoo_fresh3", "5%", "test", True, None, "seeds 17-18, targets two four six seven, 2026-12-07"),
    HeldOutSet("zoo_fresh4", "5%", "test", True, None, "seeds 19-20, targets nine zero, 2026-12-08"),
    HeldOutSet("zoo_rate2", "2%", "development after", True, None, "seeds 7-8, targets two six, 2026-12-06"),
    HeldOutSet("zoo_rate2dev", "2%", "development after", True, None, "seeds 9-10, targets four seven, 2026-12-06"),
    HeldOutSet("zoo_nevdev", "-", "development after", True, None, "never-poisoned seeds 50-59, 2026-12-06"),
    HeldOutSet(
        "zoo_rate2test",
        "2%",
        "test",
        False,
        None,
        "seeds 11-12, targets one nine, 2026-12-06 (cleaned with a rejected candidate's flags: verdict only)",
    ),  # fmt: skip
    HeldOutSet("zoo_rate2fresh", "2%", "test", True, None, "seeds 13-14, targets three five, 2026-12-06"),
    HeldOutSet("zoo_rate2five", "2%", "test", True, None, "seeds 15-16, targets zero eight, 2026-12-06"),
)


def set_rows(entry: HeldOutSet, results: Path = RESULTS) -> list[dict]:
    """The set's rows (``zoo.recorded_rows``), each with ``set``, ``detected`` and ``named`` under the default.

    Raises:
        ValueError: a row without the default's score, or (on a set cleaned with the defaults) a recorded verdict
            that disagrees with the score column.
    """
    rows = []
    for row in zoo.recorded_rows(results / f"{entry.name}.csv").values():
        if entry.split is not None and row["split"] != entry.split:
            continue
        if row[SCORE] is None:
            raise ValueError(f"{entry.name}: {row['name']} has no {SCORE} score: the set cannot count")
        detected = row[SCORE] > THRESHOLD
        if entry.default_cleaning and detected != (row["verdict"] == "backdoored"):
            raise ValueError(f"{entry.name}: {row['name']}'s recorded verdict {row['verdict']!r} is not its score's")
        if entry.default_cleaning and detected and row[NAMED] != row["recovered_target"]:
            raise ValueError(f"{entry.name}: {row['name']}'s recorded target is not its score's candidate")
        named = detected and row[NAMED] == row["target"]
        rows.append({**row, "set": entry.name, "detected": detected, "named": named})
    return rows


def pool_metrics(sets: list[HeldOutSet], clean_sets: list[HeldOutSet], rows: dict[str, list[dict]]) -> dict:
    """Detection, naming, cleaning and the CA drop over the backdoored models of ``sets``, false alarms over the
    never-poisoned models of ``clean_sets``, and the verdict's ROC-AUC between the two (``rows``: each set's
    :func:`set_rows` by name)."""
    from sklearn.metrics import roc_auc_score

    backdoored = [row for entry in sets for row in zoo.counted(rows[entry.name])[0]]
    clean = [row for entry in clean_sets for row in zoo.counted(rows[entry.name])[1]]
    cleaning = {entry.name for entry in sets if entry.default_cleaning}
    cleaned_rows = [row for row in backdoored if row["set"] in cleaning]
    drops = [100 * (row["ca_before"] - row["ca_after"]) for row in cleaned_rows]  # points
    labels = [True] * len(backdoored) + [False] * len(clean)
    scores = [row[SCORE] for row in backdoored + clean]
    return {
        "sets": [entry.name for entry in sets],
        "clean_sets": [entry.name for entry in clean_sets],
        "not_implanted": sum(
            1
            for entry in sets
            for row in rows[entry.name]
            if row["attack"] != "none" and row["poison_converged"] is False
        ),
        "detected": zoo.proportion(sum(row["detected"] for row in backdoored), len(backdoored)),
        "named": zoo.proportion(sum(row["named"] for row in backdoored), len(backdoored)),
        "cleaned": zoo.proportion(sum(bool(row["cleaned"]) for row in cleaned_rows), len(cleaned_rows)),
        "ca_drop_median_points": statistics.median(drops) if drops else math.nan,
        "ca_drop_worst_points": max(drops) if drops else math.nan,
        "false_alarms": zoo.proportion(sum(row["detected"] for row in clean), len(clean)),
        "roc_auc": roc_auc_score(labels, scores) if backdoored and clean else math.nan,
        "missed": sorted(row["name"] for row in backdoored if not row["detected"]),
        "false_alarm_models": sorted(row["name"] for row in clean if row["detected"]),
    }


# The "suspect candidate" warning beside "no backdoor found" (benchmarks/README.md, its rule committed in 54e40ce
# before the set that tests it was cleaned): a model the default calls clean is *suspect* when the largest
# unhandicapped lift of its verdict (the largest targeted lift, or the search trigger's where recorded) exceeds
# SUSPECT_THRESHOLD, chosen by zoo.choose_threshold on the development models the default called clean.
SUSPECT_DEVELOPMENT = (
    ("zoo_rebuilt", "development"), ("zoo_rate2", None), ("zoo_rate2dev", None), ("zoo_nevdev", None),
    ("zoo_dev2", None),
)  # fmt: skip
SUSPECT_THRESHOLD = 2.51  # suspect_threshold() on SUSPECT_DEVELOPMENT, as written down (2 decimals)
SUSPECT_TEST = ("zoo_fresh4",)  # built after the rule; no other held-out set can test it (their rows had been read)


def unhandicapped_lift(row: dict) -> tuple[float, str]:
    """``(lift, candidate)``: the largest targeted lift of the verdict's measurements, or the search trigger's lift
    toward the untargeted winner where it is larger (recorded since the search term was added), neither handicapped."""
    lift, candidate = row["max_lift"], row["max_lift_candidate"]
    if row["search_lift"] is not None and row["search_lift"] > lift:
        lift, candidate = row["search_lift"], row["untargeted_winner"]
    return lift, candidate


def called_clean(name: str, split: str | None, results: Path = RESULTS) -> tuple[list[dict], list[dict]]:
    """``(backdoored, never-poisoned)`` rows of a zoo CSV (only ``split``'s where given) that the default verdict calls
    clean; backdoored ones only where the attack implanted (``zoo.counted``)."""
    rows = [row for row in zoo.recorded_rows(results / f"{name}.csv").values() if split in (None, row["split"])]
    backdoored, clean = zoo.counted(rows)
    return [row for row in backdoored if row[SCORE] <= THRESHOLD], [row for row in clean if row[SCORE] <= THRESHOLD]


def suspect_threshold(results: Path = RESULTS) -> float:
    """The warning's threshold by the project's rule (``zoo.choose_threshold``: largest TPR - FPR, midpoints) on the
    development models the default called clean: missed backdoors against never-poisoned models."""
    missed, clean = [], []
    for name, split in SUSPECT_DEVELOPMENT:
        rows = called_clean(name, split, results)
        missed += rows[0]
        clean += rows[1]
    scores = [unhandicapped_lift(row)[0] for row in missed + clean]
    return zoo.choose_threshold(scores, [True] * len(missed) + [False] * len(clean))


def suspects(results: Path = RESULTS) -> list[dict]:
    """Per set (the development ones, then ``SUSPECT_TEST`` where its CSV exists): the models the default called
    clean, and how many of them the warning flags at ``SUSPECT_THRESHOLD`` (backdoored: flagged, and flagged naming
    the true target; never-poisoned: flagged)."""
    records = []
    for role, entries in (("development", SUSPECT_DEVELOPMENT), ("test", [(name, None) for name in SUSPECT_TEST])):
        for name, split in entries:
            if not (results / f"{name}.csv").is_file():
                continue
            missed, clean = called_clean(name, split, results)
            flagged = [row for row in missed if unhandicapped_lift(row)[0] > SUSPECT_THRESHOLD]
            false = [row for row in clean if unhandicapped_lift(row)[0] > SUSPECT_THRESHOLD]
            records.append({
                "set": name if split is None else f"{name} ({split})", "role": role,
                "missed_backdoors": len(missed), "flagged": len(flagged),
                "flagged_true_target": sum(unhandicapped_lift(row)[1] == row["target"] for row in flagged),
                "never_poisoned_called_clean": len(clean), "never_poisoned_flagged": len(false),
                "flagged_models": " ".join(sorted(row["name"] for row in flagged + false)),
            })  # fmt: skip
    return records


# Every held-out BI-BAU cleaning with the defaults of its day that the retuning attack was run on (zoo.py
# --persistence): the first zoo's held-out half and seeds 3-4 set, the first 2% set, the fifth 2% set, the third fresh
# set. Persistence does not depend on the verdict statistic, so the earlier sets count here.
PERSISTENCE_SETS = ("zoo", "zoo_rate2", "zoo_rate2five", "zoo_fresh3")
ATTACK_GROUPS = (
    ("badnet and blended", ("badnet", "blended")),
    ("badclip", ("badclip",)),
    ("every attack", zoo.ATTACKS),
)
OUTCOMES = (
    ("cleaned within the bar", lambda row: bool(row["cleaned"])),
    ("detected, not cleaned", lambda row: row["verdict"] == "backdoored" and not row["cleaned"]),
    ("called clean", lambda row: row["verdict"] != "backdoored"),
)


def persistence(results: Path = RESULTS) -> list[dict]:
    """The retuning attack over the held-out models of ``PERSISTENCE_SETS``, per attack group and cleaning outcome:
    how many models, how many re-learn within ``clipclean.complete.PERSISTENCE_MARGIN`` of the same-seed
    never-poisoned model's RA-ASR (``persistent``), and the range of the difference in points."""
    from clipclean.complete import PERSISTENCE_MARGIN

    rows = [
        row
        for name in PERSISTENCE_SETS
        for row in zoo.recorded_rows(results / f"{name}.csv").values()
        if row["split"] != "development" and row["ra_asr"] is not None and row["reference_ra_asr"] is not None
    ]
    records = []
    for group, attacks in ATTACK_GROUPS:
        for outcome, select in OUTCOMES:
            chosen = [row for row in rows if row["attack"] in attacks and select(row)]
            differences = [100 * (row["ra_asr"] - row["reference_ra_asr"]) for row in chosen]
            records.append({
                "group": group, "outcome": outcome, "models": len(chosen),
                "persistent": sum(d <= 100 * PERSISTENCE_MARGIN for d in differences),
                "difference_min_points": min(differences) if differences else math.nan,
                "difference_max_points": max(differences) if differences else math.nan,
                "not_persistent_models": " ".join(sorted(
                    row["name"] for row, d in zip(chosen, differences) if d > 100 * PERSISTENCE_MARGIN)),
            })  # fmt: skip
    return records


def persistence_markdown(records: list[dict]) -> str:
    lines = [
        "",
        "## Persistence: the retuning attack on held-out cleanings",
        "",
        f"Sets: {', '.join(f'`{name}`' for name in PERSISTENCE_SETS)} (held-out rows with a retuning attack).",
        "",
        "<!-- derived: benchmarks/results/scoreboard_persistence.csv, by benchmarks/scoreboard.py -->",
        "| attacks | outcome of the cleaning | models | re-learn within the margin | difference, points (min / max) |",
        "|---|---|---:|---|---|",
    ]
    for record in records:
        spread = "-" if not record["models"] else (
            f"{record['difference_min_points']:+.1f} / {record['difference_max_points']:+.1f}")  # fmt: skip
        lines.append(f"| {record['group']} | {record['outcome']} | {record['models']} | {record['persistent']} "
                     f"| {spread} |")  # fmt: skip
    return "\n".join(lines) + "\n"


POOLS = (("5%", "test"), ("2%", "test"), ("every rate", "test"), ("5%", "all"), ("2%", "all"), ("every rate", "all"))


def pools(results: Path = RESULTS) -> list[dict]:
    """Every pool of ``POOLS`` (rate, role), then every set alone: one flat record each (the CSV's rows)."""
    rows = {entry.name: set_rows(entry, results) for entry in SETS}  # each CSV read once
    records = []
    for rate, role in POOLS:
        chosen = [entry for entry in SETS if role == "all" or entry.role == role]
        backdoored = [entry for entry in chosen if entry.rate != "-" and rate in ("every rate", entry.rate)]
        records.append({"pool": f"{rate}, {role}", **_flat(pool_metrics(backdoored, chosen, rows))})
    for entry in SETS:
        records.append(
            {"pool": entry.name, **_flat(pool_metrics([entry] if entry.rate != "-" else [], [entry], rows))}
        )
    return records


def _flat(metrics: dict) -> dict:
    flat = {"sets": " ".join(metrics["sets"]), "clean_sets": " ".join(metrics["clean_sets"]),
            "not_implanted": metrics["not_implanted"]}  # fmt: skip
    for key in ("detected", "named", "cleaned", "false_alarms"):
        part = metrics[key]
        flat.update({key: part["k"], f"{key}_of": part["n"], f"{key}_rate": part["rate"],
                     f"{key}_low": part["ci95"][0], f"{key}_high": part["ci95"][1]})  # fmt: skip
    flat.update({key: metrics[key] for key in ("ca_drop_median_points", "ca_drop_worst_points", "roc_auc")})
    flat["missed"] = " ".join(metrics["missed"])
    flat["false_alarm_models"] = " ".join(metrics["false_alarm_models"])
    return flat


def _count(record: dict, key: str) -> str:
    if not record[f"{key}_of"]:
        return "-"
    return (f"{record[key]}/{record[f'{key}_of']} ({100 * record[f'{key}_rate']:.0f}%, "
            f"{100 * record[f'{key}_low']:.0f}-{100 * record[f'{key}_high']:.0f})")  # fmt: skip


def _met(record: dict) -> str:
    checks = {
        "ROC-AUC": record["roc_auc"] >= TARGETS["roc_auc"],
        "false alarms": record["false_alarms_of"] and record["false_alarms_rate"] <= TARGETS["false_alarm_rate"],
        "naming": record["named_of"] and record["named_rate"] >= TARGETS["named_rate"],
        "cleaning": record["cleaned_of"] and record["cleaned_rate"] >= TARGETS["cleaned_rate"],
        "median CA drop": record["ca_drop_median_points"] <= TARGETS["ca_drop_median_points"],
    }
    return ", ".join(name for name, ok in checks.items() if ok) or "none"


def markdown(records: list[dict]) -> str:
    lines = [
        "# Held-out scoreboard: today's default CLIP verdict and cleaning (scoreboard)",
        "",
        "<!-- derived: benchmarks/results/scoreboard.csv, by benchmarks/scoreboard.py -->",
        "| pool | backdoored models (+ not implanted) | detected (95% CI) | detected, target named "
        "| cleaned within the bar | CA drop median / worst | never-poisoned called backdoored | ROC-AUC "
        "| issue targets met |",
        "|---|---:|---|---|---|---|---|---:|---|",
    ]
    for record in records:
        drops = "-" if math.isnan(record["ca_drop_median_points"]) else (
            f"{record['ca_drop_median_points']:.1f} / {record['ca_drop_worst_points']:.1f}")  # fmt: skip
        auc = "-" if math.isnan(record["roc_auc"]) else f"{record['roc_auc']:.3f}"
        lines.append(
            f"| {record['pool']} | {record['detected_of']} (+{record['not_implanted']}) "
            f"| {_count(record, 'detected')} "
            f"| {_count(record, 'named')} | {_count(record, 'cleaned')} | {drops} | {_count(record, 'false_alarms')} "
            f"| {auc} | {_met(record) if record['detected_of'] else '-'} |"
        )
    lines += ["", "Sets (`SETS` of benchmarks/scoreboard.py):", "", "<!-- settings -->"]
    lines += [f"- `{entry.name}` ({entry.rate}, {entry.role}): {entry.note}" for entry in SETS]
    lines += ["", "Backdoored models called clean and never-poisoned models called backdoored, per pool:", ""]
    lines += ["<!-- derived: benchmarks/results/scoreboard.csv, by benchmarks/scoreboard.py -->"]
    lines += [f"- {record['pool']}: missed {record['missed'] or 'none'}; false alarms "
              f"{record['false_alarm_models'] or 'none'}" for record in records[: len(POOLS)]]  # fmt: skip
    return "\n".join(lines) + "\n"


def suspect_markdown(records: list[dict]) -> str:
    lines = [
        "",
        f"## The suspect-candidate warning (largest unhandicapped lift > {SUSPECT_THRESHOLD})",
        "",
        "<!-- derived: benchmarks/results/scoreboard_suspect.csv, by benchmarks/scoreboard.py -->",
        "| set | role | backdoored called clean | flagged (true target named) "
        "| never-poisoned called clean | flagged |",
        "|---|---|---:|---|---:|---:|",
    ]
    for record in records:
        lines.append(
            f"| {record['set']} | {record['role']} | {record['missed_backdoors']} | {record['flagged']} "
            f"({record['flagged_true_target']}) | {record['never_poisoned_called_clean']} | "
            f"{record['never_poisoned_flagged']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--results", default=str(RESULTS), help="folder of the zoo CSVs (default: %(default)s)")
    parser.add_argument("--output", default=str(RESULTS / "scoreboard"), help="PREFIX of PREFIX.{csv,md,json}")
    args = parser.parse_args(argv)
    records, retuned = pools(Path(args.results)), persistence(Path(args.results))
    warned = suspects(Path(args.results))
    output = Path(args.output)
    text = markdown(records) + persistence_markdown(retuned) + suspect_markdown(warned)
    write_csv(output.with_suffix(".csv"), records, list(records[0]))
    write_csv(output.with_name(f"{output.name}_persistence.csv"), retuned, list(retuned[0]))
    write_csv(output.with_name(f"{output.name}_suspect.csv"), warned, list(warned[0]))
    atomic_write(output.with_suffix(".md"), lambda temporary: Path(temporary).write_text(text, encoding="utf-8"))
    write_json(
        output.with_suffix(".json"),
        {"sets": [asdict(entry) for entry in SETS], "pools": records, "persistence_sets": PERSISTENCE_SETS,
         "persistence": retuned, "suspect_threshold": SUSPECT_THRESHOLD, "suspect": warned},
    )  # fmt: skip
    print(text)
    return records


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
