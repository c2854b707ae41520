"""The CLIP verdict again, under other settings, on model-zoo CLIPs that were already cleaned (a development tool).

For every finished model of the given zoo folders (``benchmarks/zoo.py``) it reads what the cleaning recorded
(``clean/inversion/report.json``: the untargeted search's winner and budget, every candidate's targeted ASR, the score;
``clean/inversion/trigger``: the search's trigger) and runs the verdict alone, without the search, under
``--set KEY=VALUE`` overrides of :class:`clipclean.inversion.InversionConfig`:

* default: the whole verdict again (:meth:`BlindInversion.verdict`: a targeted inversion per candidate at the
  recorded budget, their ASRs and the search trigger's), about a minute a model on one CPU thread, for instance
  with ``--set verdict_holdout=0.25``;
* ``--search``: the untargeted search too, from the recipe's start (its own winner and budget), then the verdict:
  for settings of the search (``mask_budgets``, ``patch_hypotheses``), about two minutes a model;
* ``--confirm-only``: only the confirmation (:meth:`BlindInversion.confirm`, ``confirm_top``) of the recorded
  first measurement, about 15 s a model; the score is then ``max(recorded score, confirmed lift)``.

The batches are the defender set's (``digits:defender``, 64 a batch, shuffled by the model's seed) as the recipe's
loader deals them, but the verdict starts at the first batch where the recipe's starts after the search: a
measurement of the same kind, not the recipe's bit for bit. ``recipes/clean_clip.py --defense-option
inversion.KEY=VALUE`` runs the real one. Writes one CSV row per model (``COLUMNS``).

    python benchmarks/reverdict.py --zoo-dir ~/.cache/clipclean/zoo_rate2 ~/.cache/clipclean/zoo_rate2dev \\
        --set verdict_holdout=0.25 --output benchmarks/results/reverdict_holdout.csv
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import re
import sys
from pathlib import Path

INVERSION = Path("clean") / "inversion"
COLUMNS = (
    "name", "zoo", "attack", "poison_converged", "target", "untargeted_winner", "settings", "recorded_score",
    "recorded_verdict", "score", "threshold", "verdict", "named", "candidate_asr", "search_trigger_asr",
    "confirmed_lifts", "search_budget", "recorded_winner", "recorded_named",
)  # fmt: skip


def reverdict(folder: Path, overrides: dict, confirm_only: bool = False, search: bool = False) -> dict:
    """The verdict of one finished zoo model (its folder holds ``poison/model`` and the recorded cleaning) under
    ``overrides`` of the inversion config; with ``search``, the untargeted search too (its winner and budget then
    come from this run, not the recording)."""
    from clipclean.cli import clean_clip
    from clipclean.cli.cleaning import defender_loader
    from clipclean.cli.common import resolve_batch_sizes
    from clipclean.inversion import InversionConfig, build_inverter, take_confirmed
    from clipclean.triggers import load_trigger

    recorded = json.loads((folder / INVERSION / "report.json").read_text())["inversion"]
    seed = int(re.search(r"_s(\d+)", folder.name).group(1))
    args = clean_clip.parse_args(
        ["--model", str(folder / "poison" / "model"), "--clean-data", "digits:defender", "--eval-data", "digits:test"]
        + ["--seed", str(seed)]
    )
    job = clean_clip.cleaning_job()
    inputs = job.load(args, "cpu")
    inputs.model.eval()
    names, classifier = job.candidates(inputs)
    loader = defender_loader(inputs.clean, resolve_batch_sizes(args, 1), seed, job.collate_fn(inputs))
    config = InversionConfig(**{"seed": seed, **overrides})
    if not search:  # the verdict's budget as the recipe's would be after a search that ended at the recorded one
        config = dataclasses.replace(config, verdict_budget=config.verdict_budget_for(recorded["mask_budget"]))
    inverter = build_inverter(inputs.model, config, candidate_names=names, candidate_embeddings=classifier)
    winner_name = recorded_winner = recorded.get("untargeted_winner") or recorded["recovered_target"]
    winner = names.index(winner_name)
    threshold = config.threshold_for(inverter.verdict_statistic)
    if search:  # the recipe's inversion from its start: the search, then the verdict on the next batches
        inverter.run_em(loader)
        result = inverter.result(loader)
        winner_name, score, named = result.untargeted_winner, result.anomaly_index, result.recovered_target
        asr, search_asr = result.candidate_asr, result.search_trigger_asr
        lifts = inverter.confirmed_lifts
    elif confirm_only:
        rates = [recorded["candidate_asr"][name] for name in names]
        lifts = inverter.confirm(range(len(names)), rates, winner, loader)
        confirmed = {names[k]: lift for k, lift in lifts.items()}
        score, named = take_confirmed(recorded["anomaly_index"], recorded["recovered_target"], confirmed)
        asr, search_asr = recorded["candidate_asr"], recorded.get("search_trigger_asr")
    else:
        # the search's trigger as recorded (a verdict-named report saved the named candidate's trigger instead)
        searched = recorded.get("named_by", "untargeted search") == "untargeted search"
        trigger = load_trigger(folder / INVERSION / "trigger") if searched else None
        score, asr, position = inverter.verdict(loader, winner, search_trigger=trigger)
        named, search_asr = names[position], inverter.search_asr if searched else None
        lifts = inverter.confirmed_lifts
    target = None if folder.name.startswith("none_") else folder.name.split("_")[1]
    poisoned = json.loads((folder / "poison" / "results.json").read_text()) if target else {}
    return {
        "name": folder.name, "zoo": folder.parent.name, "attack": folder.name.split("_")[0],
        "poison_converged": poisoned.get("converged"), "target": target, "untargeted_winner": winner_name,
        "settings": json.dumps(overrides, sort_keys=True), "recorded_score": round(recorded["anomaly_index"], 4),
        "recorded_verdict": recorded["verdict"], "score": round(score, 4), "threshold": threshold,
        "verdict": "backdoored" if score > threshold else "no backdoor found", "named": named,
        "candidate_asr": json.dumps({name: round(rate, 4) for name, rate in asr.items()}),
        "search_trigger_asr": search_asr,
        "confirmed_lifts": json.dumps({names[k]: round(lift, 4) for k, lift in lifts.items()}),
        "search_budget": inverter.mask_budget if search else recorded["mask_budget"],
        "recorded_winner": recorded_winner, "recorded_named": recorded["recovered_target"],
    }  # fmt: skip


def summarize(paths: list[str], threshold: float | None = None) -> dict:
    """Detection on the rows of reverdict CSVs, recorded vs again: backdoored models counted as benchmarks/zoo.py
    counts them (implanted ones), the recorded verdicts at their threshold, the new scores at the threshold
    ``zoo.choose_threshold`` picks on these rows (the largest TPR - FPR), at the recorded one and, on held-out rows,
    at ``threshold`` (one chosen on development rows: never choose on the rows a result is read from); how far the
    scores moved (the median and largest absolute change, the upper middle one for an even count) and which verdicts
    changed at the recorded threshold; how many backdoored models' untargeted winner is their target, and (rows of
    ``--search``) which models' winner is not the recorded one. Each count also says how many detections named the
    true target (``named``) and, where the rows hold the recorded name, which backdoors the recorded verdict detected
    and named correctly but this one does not (``lost``)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import zoo

    rows = []
    for path in paths:
        with open(path, newline="") as handle:
            rows += list(csv.DictReader(handle))
    for row in rows:  # the CSV's text cell back to what zoo.counted reads (True, False or None)
        row["poison_converged"] = {"True": True, "False": False}.get(row["poison_converged"])
    backdoored, clean = zoo.counted(rows)

    def called(row: dict, key: str, threshold: float | None) -> bool:
        return float(row[key]) > (float(row["threshold"]) if threshold is None else threshold)

    def found(row: dict) -> bool:  # the recorded verdict detected it and named its target
        return row.get("recorded_named") == row["target"] and called(row, "recorded_score", None)

    def counts(key: str, threshold: float | None) -> dict:
        hits = {row["name"] for row in backdoored if called(row, key, threshold)}
        alarms = sorted(row["name"] for row in clean if called(row, key, threshold))
        name = "recorded_named" if key == "recorded_score" else "named"
        right = {row["name"] for row in backdoored if row["name"] in hits and row.get(name) == row["target"]}
        youden = len(hits) / max(len(backdoored), 1) - len(alarms) / max(len(clean), 1)
        return {"detected": len(hits), "false_alarms": len(alarms), "youden": round(youden, 4), "named": len(right),
                "missed": sorted(row["name"] for row in backdoored if row["name"] not in hits), "alarms": alarms,
                "lost": sorted(row["name"] for row in backdoored if found(row) and row["name"] not in right),
                }  # fmt: skip

    changes = sorted(abs(float(row["score"]) - float(row["recorded_score"])) for row in backdoored + clean)
    flipped = [row["name"] for row in backdoored + clean if row["verdict"] != row["recorded_verdict"]]
    scores = [float(row["score"]) for row in backdoored + clean]
    chosen = zoo.choose_threshold(scores, [True] * len(backdoored) + [False] * len(clean))
    return {
        "backdoored": len(backdoored), "clean": len(clean), "settings": sorted({row["settings"] for row in rows}),
        "recorded": counts("recorded_score", None), "again_at_recorded_threshold": counts("score", None),
        "chosen_threshold": round(chosen, 4), "again_at_chosen_threshold": counts("score", chosen),
        **({} if threshold is None else {"given_threshold": threshold,
                                         "again_at_given_threshold": counts("score", threshold)}),
        "score_change_median": round(changes[len(changes) // 2], 4), "score_change_max": round(changes[-1], 4),
        "verdicts_changed": sorted(flipped),
        "winner_is_target": sum(row["untargeted_winner"] == row["target"] for row in backdoored),
        "winners_changed": sorted(  # a --search run's untargeted winner where it is not the recorded one
            row["name"] for row in backdoored + clean
            if row.get("recorded_winner") not in (None, "", row["untargeted_winner"])
        ),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict] | dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo-dir", nargs="+", help="zoo folders (benchmarks/zoo.py --zoo-dir)")
    parser.add_argument("--summarize", nargs="+", metavar="CSV", help="no run: summarize these reverdict CSVs")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="InversionConfig overrides")
    parser.add_argument("--confirm-only", action="store_true", help="only the confirmation of the recorded verdict")
    parser.add_argument("--search", action="store_true", help="the untargeted search again too, then the verdict")
    parser.add_argument("--only", nargs="*", default=None, help="only these model names")
    parser.add_argument(
        "--threshold", type=float, help="with --summarize: also count at this threshold (chosen on development rows)"
    )
    parser.add_argument("--output", required=True, help="the CSV to write")
    args = parser.parse_args(argv)
    if args.summarize:
        summary = summarize(args.summarize, args.threshold)
        Path(args.output).write_text(json.dumps(summary, indent=1) + "\n")
        print(json.dumps(summary, indent=1))
        return summary
    if not args.zoo_dir:
        parser.error("give --zoo-dir (or --summarize)")
    if args.search and args.confirm_only:
        parser.error("--search runs the whole inversion; --confirm-only only re-tests a recorded one: give one")
    import torch

    from clipclean.cli.common import parse_key_values

    torch.set_num_threads(1)
    overrides = parse_key_values(args.set)
    reports = [report for zoo in args.zoo_dir for report in Path(zoo).expanduser().glob(f"*/{INVERSION}/report.json")]
    folders = sorted(report.parents[2] for report in reports)
    if args.only is not None:
        folders = [folder for folder in folders if folder.name in args.only]
    if not folders:
        raise SystemExit(f"no cleaned zoo model under {args.zoo_dir}")
    rows = []
    with open(args.output, "w", newline="") as handle:  # row by row: an interrupted run keeps its finished models
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for index, folder in enumerate(folders, 1):
            row = reverdict(folder, overrides, args.confirm_only, args.search)
            rows.append(row)
            writer.writerow(row)
            handle.flush()
            print(
                f"[{index}/{len(folders)}] {row['name']}: {row['recorded_score']:.2f} -> {row['score']:.2f}",
                flush=True,
            )
    return rows


if __name__ == "__main__":
    sys.exit(main() and 0)
