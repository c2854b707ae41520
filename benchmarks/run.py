"""Side-by-side benchmark: every attack x every defense on the built-in digits with a tiny CLIP.

For each seed it trains one never-poisoned reference and one backdoored model per attack (``recipes/poison_clip.py``),
applies every registered defense to each (``recipes/clean_clip.py --complete-eval``, untargeted: the true trigger is
used only to measure ASR and to run the retuning attack), and writes ``OUTPUT/table.md``, ``OUTPUT/results.csv`` and
``OUTPUT/asr_vs_ca.png``. The tests of complete unlearning (RA-ASR after the retuning attack, re-inversion score;
docs/evaluation.md) run on every cleaned model and, once per attack, on the never-poisoned reference
(``eval/complete_unlearning.py``); the row ``defense = none`` is the backdoored model itself. Each job runs in its
own process, so wall time and peak memory are per job; finished jobs are reused (delete ``OUTPUT`` to redo).

    python benchmarks/run.py                       # full run
    python benchmarks/run.py --classifier          # plus the image-classifier section (a small CNN, BI-BAU)
    python benchmarks/run.py --quick               # CI-sized smoke run (minutes)

The classifier section (``--classifier``; rows ``cnn/ATTACK``) trains a never-poisoned and a BadNet/Blended
backdoored small CNN (``recipes/poison_classifier.py``) and cleans each with ``recipes/clean_classifier.py``
(``--classifier-defenses``, BI-BAU by default, with the CNN flags of ``benchmarks/classifier.md``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from baselines import CHOSEN_FILENAME, equal_budget, load_chosen
from zoo import CNN_BIBAU_FLAGS, seed_flags

ROOT = Path(__file__).resolve().parents[1]
ATTACKS = ("badnet", "blended", "badclip")
SURROGATE_SEED_OFFSET = 1000  # BadCLIP's surrogate: a never-poisoned model of seed + 1000
COLUMNS = (
    "seed", "attack", "defense", "ca_before", "ca_after", "asr_before", "asr_after", "verdict", "recovered_target",
    "anomaly_index", "inverted_trigger_asr_after", "ra_asr", "reference_ra_asr", "reinversion_score",
    "reference_score", "wall_time_s", "peak_memory_mb", "verdict_statistic", "lr", "optimizer_steps",
)  # fmt: skip


def parse_args(argv=None):
    from clipclean.defenses import DEFENSES

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("--output", default="benchmarks/results")
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=ATTACKS)
    parser.add_argument("--defenses", nargs="+", default=sorted(DEFENSES), choices=sorted(DEFENSES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets: checks the pipeline, not the numbers")
    parser.add_argument("--clean-args", default="", help="extra arguments for every clean_clip.py run")
    parser.add_argument(
        "--equal-budget",
        action="store_true",
        help="give every baseline BI-BAU's optimiser steps, at the learning rate benchmarks/baselines.py chose on the "
        "zoo's development half (OUTPUT/baseline_lr.json; the defense's default where it has not been tuned)",
    )
    parser.add_argument("--classifier", action="store_true", help="add the image-classifier section")
    parser.add_argument(
        "--classifier-defenses", nargs="+", default=["bibau"], choices=sorted(DEFENSES), help="for --classifier"
    )
    return parser.parse_args(argv)


def run_job(script: str, args: list[str], output: Path) -> dict:
    """Run ``recipes/SCRIPT`` (or ``eval/SCRIPT``) in a fresh process unless its results exist; return them."""
    is_eval = script == "complete_unlearning.py"
    results_path = output / "results.json"
    if not results_path.is_file():
        where = ["--output", str(results_path)] if is_eval else ["--output_dir", str(output)]
        folder = "eval" if is_eval else "recipes"
        # --overwrite: no results.json, so whatever is there is an unfinished run of this job; start it again
        command = [sys.executable, str(ROOT / folder / script), *args, *where, "--no-progress", "--overwrite"]
        print("+", " ".join(command), flush=True)
        subprocess.run(command, cwd=ROOT, check=True)
    return json.loads(results_path.read_text())


def main(argv=None) -> list[dict]:
    from clipclean.defenses import DEFENSES

    args = parse_args(argv)
    output = Path(args.output).resolve()  # the jobs run with cwd=ROOT: a relative --output is the caller's
    output.mkdir(parents=True, exist_ok=True)
    poison_extra = ["--epochs", "2"] if args.quick else []
    clean_extra = args.clean_args.split()
    tuned_lrs = load_chosen(output / CHOSEN_FILENAME) if args.equal_budget else {}
    if args.equal_budget:
        print(f"equal budget: BI-BAU's passes over the defender data; tuned learning rates: {tuned_lrs or 'none'}")
    complete_extra = []
    if args.quick:
        clean_extra += ["--rounds", "1", "--epochs", "1", "--max-clean-pairs", "64"]
        complete_extra += ["--retune-steps", "3", "--reinversion-option", "rounds=1",
                           "--reinversion-option", "steps_per_round=3"]  # fmt: skip
    rows = []
    started = time.time()
    for seed in args.seeds:
        models = {"none": output / f"seed{seed}" / "poison_none"}
        run_job("poison_clip.py", ["--poison-count", "0", *seed_flags(seed), *poison_extra], models["none"])
        for attack in args.attacks:
            models[attack] = output / f"seed{seed}" / f"poison_{attack}"
            extra = list(poison_extra)
            if attack == "badclip":  # BadCLIP optimises its patch against a clean surrogate, as in attacks.md:
                # another seed's never-poisoned model, never the reference the cleaned models are compared with
                surrogate = output / f"seed{seed}" / "poison_none_surrogate"
                run_job("poison_clip.py", ["--poison-count", "0", *seed_flags(seed + SURROGATE_SEED_OFFSET),
                                           *poison_extra], surrogate)  # fmt: skip
                extra += ["--victim-model", str(surrogate / "model")]
            # 2% for every attack, the rate these benchmark models were measured at (blended's default is now 5%)
            run_job("poison_clip.py", ["--attack", attack, "--poison-rate", "0.02", *seed_flags(seed), *extra],
                    models[attack])  # fmt: skip
        badnet_trigger = models.get("badnet", models[args.attacks[0]]) / "trigger.json"
        for attack, folder in models.items():
            trigger = folder / "trigger.json" if attack != "none" else badnet_trigger
            # The never-poisoned reference under the same retuning attack and re-inversion, once per trigger.
            reference = output / f"seed{seed}" / f"complete_reference_{attack}"
            data_args = ["--clean-data", "digits:defender", "--eval-data", "digits:test", "--seed", str(seed),
                         *complete_extra]  # fmt: skip
            trigger_args = ["--trigger", str(trigger), "--target", "zero"]
            run_job("complete_unlearning.py", ["--model", str(models["none"] / "model"), *trigger_args, *data_args],
                    reference)  # fmt: skip
            reference_file = str(reference / "results.json")
            if attack != "none":  # the backdoored model itself: the "no defense" row
                undefended = run_job(
                    "complete_unlearning.py",
                    ["--model", str(folder / "model"), *trigger_args, *data_args,
                     "--reference-measurements", reference_file],
                    output / f"seed{seed}" / f"complete_{attack}_none",
                )  # fmt: skip
                training = json.loads((folder / "results.json").read_text())
                rows.append(undefended_row(seed, attack, training, undefended))
            for defense in args.defenses:
                if attack == "none" and defense != "bibau":
                    continue  # the reference row checks the verdict and the clean-accuracy cost only
                job = output / f"seed{seed}" / f"clean_{attack}_{defense}"
                clean_args = ["--model", str(folder / "model"), "--clean-data", "digits:defender", "--eval-data",
                              "digits:test", "--eval-trigger", str(trigger), "--defense", defense, "--seed",
                              str(seed), "--complete-eval", "--reference-measurements", reference_file,
                              *complete_extra, *clean_extra]  # fmt: skip
                if args.quick and "inversion" in DEFENSES[defense][0].field_names():
                    clean_args += ["--set", "inversion.rounds=1", "--set", "inversion.steps_per_round=5",
                                   "--set", "inversion.verdict_steps=3"]  # fmt: skip
                if attack == "none":
                    clean_args += ["--eval-target", "zero"]
                if args.equal_budget and defense != "bibau":
                    clean_args += equal_budget(defense, lr=tuned_lrs.get(defense))
                rows.append(row_of(seed, attack, defense, run_job("clean_clip.py", clean_args, job)))
        if args.classifier:
            rows += classifier_rows(seed, output / f"seed{seed}", args)
    write_outputs(rows, output)
    print(f"benchmark finished in {time.time() - started:.0f} s; table: {output / 'table.md'}")
    return rows


CNN_ATTACKS = ("badnet", "blended")


def classifier_rows(seed: int, folder: Path, args: argparse.Namespace) -> list[dict]:
    """The image-classifier section: small CNNs backdoored on digits, cleaned by ``recipes/clean_classifier.py``."""
    quick = args.quick
    poison_extra = [*seed_flags(seed), *(["--epochs", "2"] if quick else [])]
    models = {"none": folder / "cnn_poison_none"}
    run_job("poison_classifier.py", ["--poison-count", "0", *poison_extra], models["none"])
    for attack in CNN_ATTACKS:
        models[attack] = folder / f"cnn_poison_{attack}"
        run_job("poison_classifier.py", ["--attack", attack, *poison_extra], models[attack])
    rows = []
    for attack, model in models.items():
        trigger = model / "trigger.json" if attack != "none" else models["badnet"] / "trigger.json"
        for defense in args.classifier_defenses:
            flags = ["--rounds", "1", "--epochs", "1", "--max-clean-pairs", "64"] if quick else []
            if defense == "bibau" and not quick:
                flags = list(CNN_BIBAU_FLAGS)
            elif not quick:
                flags = ["--epochs", "10", "--lr", "2e-3"]  # the baselines of classifier.md
            clean_args = ["--model", str(model / "model"), "--clean-data", "digits:defender", "--eval-data",
                          "digits:test", "--eval-trigger", str(trigger), "--eval-target", "zero", "--defense",
                          defense, "--seed", str(seed), *flags]  # fmt: skip
            results = run_job("clean_classifier.py", clean_args, folder / f"cnn_clean_{attack}_{defense}")
            rows.append(row_of(seed, f"cnn/{attack}", defense, results))
    return rows


def undefended_row(seed: int, attack: str, training: dict, complete: dict) -> dict:
    """The backdoored model itself (``defense = none``): its CA/ASR from training, its persistence."""
    block = complete["complete"]
    row = dict.fromkeys(COLUMNS)
    row.update(seed=seed, attack=attack, defense="none", ca_before=training["clean_accuracy"],
               ca_after=training["clean_accuracy"], asr_before=training["attack_success_rate"],
               asr_after=training["attack_success_rate"], wall_time_s=complete["wall_time_s"])  # fmt: skip
    row.update({key: block[key] for key in ("ra_asr", "reference_ra_asr", "reinversion_score", "reference_score")})
    return row


def cleaning_outcome(results: dict) -> dict:
    """Clean accuracy and ASR before and after, the verdict and the named target of a cleaning's results.json."""
    inversion = results.get("inversion") or {}
    return {
        "ca_before": results["before"]["clean_accuracy"],
        "ca_after": results["after"]["clean_accuracy"],
        "asr_before": results["before"]["attack_success_rate"],
        "asr_after": results["after"]["attack_success_rate"],
        "verdict": inversion.get("verdict"),
        "recovered_target": inversion.get("recovered_target"),
    }


def row_of(seed: int, attack: str, defense: str, results: dict) -> dict:
    inversion = results.get("inversion") or {}
    inverted = results.get("inverted_trigger_asr") or {}
    complete = results.get("complete") or {}
    return {
        "seed": seed,
        "attack": attack,
        "defense": defense,
        **cleaning_outcome(results),
        "anomaly_index": inversion.get("anomaly_index"),
        "inverted_trigger_asr_after": inverted.get("after"),
        **{key: complete.get(key) for key in ("ra_asr", "reference_ra_asr", "reinversion_score", "reference_score")},
        "wall_time_s": results.get("wall_time_s"),
        "peak_memory_mb": results.get("peak_memory_mb"),
        "verdict_statistic": inversion.get("verdict_statistic"),
        "lr": ((results.get("config") or {}).get("defense") or {}).get("lr"),
        "optimizer_steps": optimizer_steps(results),
    }


def optimizer_steps(results: dict) -> int | None:
    """The defense's model-updating steps over its rounds (``None`` when its rounds do not record them)."""
    steps = [entry.get("steps") for entry in results.get("rounds") or [] if isinstance(entry, dict)]
    return sum(steps) if steps and None not in steps else None


def _percent(value) -> str:
    return "-" if value is None else f"{100 * float(value):.1f}"


def _number(value, digits: int = 2) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"


def markdown_table(rows: list[dict]) -> str:
    """The README table: one row per attack x defense (and model seed, when there are several), percentages with
    one decimal."""
    by_seed = len({row["seed"] for row in rows}) > 1
    lines = [
        ("| seed " if by_seed else "")
        + "| attack | defense | lr, steps | CA % before → after | ASR % before → after | verdict (score) "
        "| named target | RA-ASR % (reference) | re-inversion score (reference) | wall s | peak MiB |",
        ("|---" if by_seed else "") + "|---|---|---:|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        verdict = "-" if row["verdict"] is None else f"{row['verdict']} ({_number(row['anomaly_index'])})"
        lines.append(
            (f"| {row['seed']} " if by_seed else "") + f"| {row['attack']} | {row['defense']} | {_budget(row)} "
            f"| {_percent(row['ca_before'])} → {_percent(row['ca_after'])} "
            f"| {_percent(row['asr_before'])} → {_percent(row['asr_after'])} | {verdict} "
            f"| {row['recovered_target'] or '-'} | {_percent(row['ra_asr'])} ({_percent(row['reference_ra_asr'])}) "
            f"| {_number(row['reinversion_score'])} ({_number(row['reference_score'])}) "
            f"| {_number(row['wall_time_s'], 0)} | {_number(row['peak_memory_mb'], 0)} |"
        )
    statistics = sorted({row["verdict_statistic"] for row in rows if row.get("verdict_statistic")})
    if statistics:
        lines += [
            "",
            f"Verdict score: the {', '.join(statistics)} statistic (clipclean.inversion.VERDICT_STATISTICS).",
        ]
    return "\n".join(lines) + "\n"


def _budget(row: dict) -> str:
    import numpy as np

    if row.get("lr") is None:
        return "-"
    lr = np.format_float_positional(float(row["lr"]), trim="-")  # 0.00003, not 3e-05 (check_numbers reads decimals)
    return f"{lr}, {row['optimizer_steps'] if row.get('optimizer_steps') is not None else '-'}"


def write_outputs(rows: list[dict], output: Path) -> None:
    from clipclean.fileio import write_csv

    write_csv(output / "results.csv", rows, COLUMNS)
    (output / "table.md").write_text(markdown_table(rows))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # matplotlib is a dev extra
        return
    figure, axis = plt.subplots(figsize=(6, 4))
    defenses = sorted({row["defense"] for row in rows})
    markers = dict(zip(defenses, "osD^v<>ph*"))
    colors = {defense: plt.get_cmap("tab10")(index % 10) for index, defense in enumerate(defenses)}
    for row in rows:
        if row["attack"].split("/")[-1] == "none":  # the never-poisoned references
            continue
        axis.scatter(
            100 * row["ca_after"],
            100 * row["asr_after"],
            marker=markers[row["defense"]],
            color=colors[row["defense"]],
            label=row["defense"] if row["defense"] != "none" else "none (backdoored model)",
        )
        axis.annotate(row["attack"], (100 * row["ca_after"], 100 * row["asr_after"]), fontsize=7)
    handles, labels = axis.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    axis.legend(unique.values(), unique.keys(), fontsize=8)
    axis.set_xlabel("clean accuracy after (%)")
    axis.set_ylabel("attack success rate after (%)")
    figure.tight_layout()
    figure.savefig(output / "asr_vs_ca.png", dpi=120)


if __name__ == "__main__":
    main(sys.argv[1:])
