"""The README's walk-through at full size, with its numbers collected into one CSV.

docs/evaluation.md quotes what the README's rows give at full size (clean accuracy under the two template sets, the
tests of complete unlearning on the backdoored, never-poisoned and cleaned models). This script runs those rows, in
the README's order, in a work folder (``outputs/`` there), plus the complete-unlearning tests on the backdoored model
itself, and writes ``OUTPUT/quickstart.csv``: one row per model and metric, with the file each value was read from.

    python benchmarks/quickstart.py --work-dir /tmp/quickstart                  # about 15 min on 2 idle cores
    python benchmarks/quickstart.py --work-dir /tmp/quickstart --collect-only   # re-read finished runs

A step whose output already exists is not run again (delete the work folder to redo everything). The commands are
the README's, character for character (``tests/test_quickstart.py`` checks it), run from the work folder with this
repository's scripts.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ("model", "metric", "value", "file")
# (command as the README prints it, the file it writes: the step is skipped when that file exists)
README_STEPS = (
    (
        "python recipes/poison_clip.py --attack badnet --target zero --output_dir outputs/badnet",
        "outputs/badnet/results.json",
    ),
    (
        "python recipes/poison_clip.py --poison-count 0 --output_dir outputs/never_poisoned",
        "outputs/never_poisoned/results.json",
    ),
    (
        "python recipes/clean_clip.py --model outputs/badnet/model --clean-data digits:defender "
        "--eval-data digits:test --eval-trigger outputs/badnet/trigger.json --output_dir outputs/cleaned",
        "outputs/cleaned/results.json",
    ),
    (
        "python eval/zeroshot_imagenet.py --model outputs/cleaned/cleaned --data digits "
        "--trigger outputs/badnet/trigger.json --target zero --output outputs/eval.json",
        "outputs/eval.json",
    ),
    (
        "python eval/complete_unlearning.py --model outputs/cleaned/cleaned "
        "--reference-model outputs/never_poisoned/model --clean-data digits:defender --eval-data digits:test "
        "--trigger outputs/badnet/trigger.json --output outputs/complete.json",
        "outputs/complete.json",
    ),
)
# not a README row: the same tests on the backdoored model before any defense (docs/evaluation.md quotes both)
EXTRA_STEPS = (
    (
        "python eval/complete_unlearning.py --model outputs/badnet/model "
        "--reference-model outputs/never_poisoned/model --clean-data digits:defender --eval-data digits:test "
        "--trigger outputs/badnet/trigger.json --output outputs/complete_backdoored.json",
        "outputs/complete_backdoored.json",
    ),
)
COMPLETE_METRICS = ("ra_asr", "reinversion_score", "reinversion_target", "targeted_reinversion_asr")


def run_steps(work_dir: Path) -> None:
    """Run every step whose output is missing, from ``work_dir``, with this repository's scripts."""
    work_dir.mkdir(parents=True, exist_ok=True)
    for command, writes in README_STEPS + EXTRA_STEPS:
        if (work_dir / writes).exists():
            print(f"done already: {command}", flush=True)
            continue
        argv = shlex.split(command)
        argv = [sys.executable, str(ROOT / argv[1]), *argv[2:], "--no-progress"]
        print(f"+ {command}", flush=True)
        subprocess.run(argv, cwd=work_dir, check=True)


def _read(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the steps first (without --collect-only)")
    return json.loads(path.read_text())


def collect(outputs: Path) -> list[dict]:
    """The quoted numbers of a finished walk-through in ``outputs`` (the ``outputs/`` folder of the work folder)."""
    rows: list[dict] = []

    def add(model: str, file: str, values: dict) -> None:
        rows.extend({"model": model, "metric": k, "value": v, "file": file} for k, v in values.items())

    for model, folder in (("backdoored", "badnet"), ("never_poisoned", "never_poisoned")):
        trained = _read(outputs / folder / "results.json")
        add(model, f"{folder}/results.json", {k: trained[k] for k in ("clean_accuracy", "attack_success_rate")})
    cleaned = _read(outputs / "cleaned" / "results.json")
    inversion = cleaned["inversion"]
    add(
        "cleaned",
        "cleaned/results.json",
        {
            "clean_accuracy_before": cleaned["before"]["clean_accuracy"],
            "attack_success_rate_before": cleaned["before"]["attack_success_rate"],
            "clean_accuracy": cleaned["after"]["clean_accuracy"],
            "attack_success_rate": cleaned["after"]["attack_success_rate"],
            **{k: inversion[k] for k in ("verdict", "recovered_target", "backdoor_score", "anomaly_index")},
        },
    )
    evaluation = _read(outputs / "eval.json")
    add("cleaned", "eval.json", {"eval_top1": evaluation["top1"], "eval_asr_top1": evaluation["asr_top1"],
                                 "eval_templates": evaluation["templates"]})  # fmt: skip
    complete = _read(outputs / "complete.json")
    add("cleaned", "complete.json", {k: complete["measured"][k] for k in COMPLETE_METRICS})
    add("never_poisoned", "complete.json", {k: complete["reference_measured"][k] for k in COMPLETE_METRICS})
    backdoored = _read(outputs / "complete_backdoored.json")
    add("backdoored", "complete_backdoored.json", {k: backdoored["measured"][k] for k in COMPLETE_METRICS})
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("--work-dir", required=True, help="where the walk-through runs (its outputs/ folder)")
    parser.add_argument("--output", default="benchmarks/results", help="folder of quickstart.csv")
    parser.add_argument("--collect-only", action="store_true", help="only read the finished runs")
    return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    work_dir = Path(args.work_dir).resolve()
    if not args.collect_only:
        run_steps(work_dir)
    from clipclean.fileio import write_csv

    rows = collect(work_dir / "outputs")
    path = write_csv(Path(args.output) / "quickstart.csv", rows, FIELDS)
    print(f"wrote {path} ({len(rows)} values)")
    return rows


if __name__ == "__main__":
    main()
