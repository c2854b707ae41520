"""The CLIP verdict's lift handicap (``InversionConfig.lift_handicap``) over model-zoo CSVs, from recorded columns.

The default verdict, ``winner-or-max-or-search-lift``, scores a model by the largest of three lifts (log-odds leads
over the median candidate's targeted ASR): the untargeted winner's, the largest candidate's and the search trigger's;
the last two pay a handicap, ``ln(K)`` by default, for being chosen after the fact among ``K`` candidates. Every term
is a column of ``benchmarks/zoo.py``'s CSV (``winner_lift``, ``max_lift``, ``search_lift``), so the verdict at any
handicap follows without re-running an inversion. CSVs written before ``search_lift`` was recorded hold only the
combined scores; there the search term is known when it decided the score (``winner_or_max_or_search_lift`` above
``winner_or_max_lift``: it is that score plus ``ln(K)``) and is otherwise at most that much. So a backdoored model
counts as detected only if it is without the unknown term, and a never-poisoned one as a false alarm if it could be
with it (the conservative reading).

The rule, fixed on 2026-12-06 before the 2% development set was read (benchmarks/README.md, "A lower poison
rate"): on the choice set (development models only), the handicap with the largest true-positive minus
false-positive rate at the default threshold; ties to the larger handicap (the closer to today's ``ln(K)``).

    python benchmarks/handicap.py --choose benchmarks/results/zoo_rebuilt.csv:development \
        benchmarks/results/zoo_rate2dev.csv --test benchmarks/results/zoo_rate2.csv
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import zoo

STATISTIC = "winner-or-max-or-search-lift"
THRESHOLD = zoo.default_threshold(STATISTIC)  # the CLIP verdict's own (1.29)
LN_K = math.log(10)  # K = 10 digits candidates
HANDICAPS = (LN_K, 2.0, 1.75, 1.5, 1.25, 1.0)


def score_bounds(row: dict, handicap: float) -> tuple[float, float] | None:
    """``(low, high)`` of a model's ``winner-or-max-or-search-lift`` score at ``handicap`` from a zoo row (typed as
    :func:`zoo.recorded_rows` reads it); equal where the CSV records ``search_lift`` (or the search term decided the
    recorded score); ``None`` without ``max_lift``."""
    if row["max_lift"] is None:
        return None
    terms = [row["max_lift"] - handicap] + ([row["winner_lift"]] if row["winner_lift"] is not None else [])
    if row["search_lift"] is not None:
        terms.append(row["search_lift"] - handicap)
        return max(terms), max(terms)
    combined, plain = row["winner_or_max_or_search_lift"], row["winner_or_max_lift"]
    if combined is None or plain is None:  # no search trigger recorded: the term did not exist
        return max(terms), max(terms)
    if combined > plain + 1e-9:  # the search term decided the score: known exactly
        terms.append(combined + LN_K - handicap)
        return max(terms), max(terms)
    return max(terms), max(*terms, combined + LN_K - handicap)  # unknown, at most that much


def counts(rows: list[dict], handicap: float, threshold: float = THRESHOLD) -> dict:
    """Detected backdoored and falsely alarmed never-poisoned models at ``handicap``, among the models
    ``zoo.counted`` counts (the conservative reading)."""
    backdoored, clean = ([score_bounds(row, handicap) for row in group] for group in zoo.counted(rows))
    backdoored, clean = [b for b in backdoored if b is not None], [b for b in clean if b is not None]
    return {
        "detected": sum(low > threshold for low, _ in backdoored), "n_backdoored": len(backdoored),
        "false_alarms": sum(high > threshold for _, high in clean), "n_clean": len(clean),
    }  # fmt: skip


def choose(rows: list[dict], handicaps=HANDICAPS, threshold: float = THRESHOLD) -> float:
    """The rule: the largest TPR - FPR on ``rows`` (the models ``zoo.counted`` counts); ties to the larger
    handicap."""

    def key(handicap: float) -> tuple[float, float]:
        entry = counts(rows, handicap, threshold)
        tpr = entry["detected"] / max(entry["n_backdoored"], 1)
        fpr = entry["false_alarms"] / max(entry["n_clean"], 1)
        return tpr - fpr, handicap

    return max(handicaps, key=key)


def read(spec: str) -> list[dict]:
    """The rows of ``FILE.csv`` (a zoo CSV), or of its split SPLIT for ``FILE.csv:SPLIT``."""
    path, _, split = spec.partition(":")
    return [row for row in zoo.recorded_rows(path).values() if not split or row["split"] == split]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--choose", nargs="+", required=True, help="CSV[:split] of the set the handicap is chosen on")
    parser.add_argument("--test", nargs="*", default=[], help="CSV[:split] reported at every handicap")
    parser.add_argument("--threshold", type=float, default=THRESHOLD)
    parser.add_argument("--json", default=None, help="also write the table here")
    args = parser.parse_args(argv)
    choice = [row for spec in args.choose for row in read(spec)]
    chosen = choose(choice, HANDICAPS, args.threshold)
    sets = {"chosen on": choice, **{spec: read(spec) for spec in args.test}}
    table = {f"{h:.2f}": {name: counts(rows, h, args.threshold) for name, rows in sets.items()} for h in HANDICAPS}
    print("| handicap | " + " | ".join(f"{name}: detected / false alarms" for name in sets) + " |")
    print("|---|" + "---|" * len(sets))
    for handicap, entries in table.items():
        mark = " (chosen)" if handicap == f"{chosen:.2f}" else ""
        cells = [f"{e['detected']}/{e['n_backdoored']} / {e['false_alarms']}/{e['n_clean']}" for e in entries.values()]
        print(f"| {handicap}{mark} | " + " | ".join(cells) + " |")
    result = {"chosen": chosen, "threshold": args.threshold, "table": table}
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=1)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
