"""Does a re-inversion test tell a backdoored model from a never-poisoned one? The untargeted and the targeted one.

For every model of a cached zoo set (``benchmarks/zoo.py``; ``--zoo-dir``), on the first 512 pairs of
``digits:defender``: the targeted re-inversion's ASR (:func:`clipclean.complete.targeted_reinversion`) toward the
backdoored model's target, on the poisoned model and on its default cleaning (``clean/cleaned``), and on every
never-poisoned model toward each target of the set; with ``--untargeted``, also the untargeted re-inversion's score
(:func:`clipclean.complete.reinversion`) on the same models. The summary compares every backdoored model (poisoned,
then cleaned) with every never-poisoned one as the reference, and every never-poisoned model with every other one
(the false flags), at margins ``--margins``: "re-invertible" when the model's ASR exceeds the reference's by more
than the margin.

    python benchmarks/reinversion.py --zoo-dir ~/.cache/clipclean/zoo_dev2 --prefix reinversion_dev2
"""

from __future__ import annotations

import argparse
import csv
import json
from itertools import permutations
from pathlib import Path

import torch
from tqdm import tqdm

from clipclean.complete import first_pairs, reinversion, targeted_reinversion
from clipclean.data import DIGIT_CAPTION_TEMPLATES, load_classification_dataset, load_image_caption_dataset
from clipclean.evaluation import zeroshot_classifier
from clipclean.models import load_clip

COLUMNS = ("name", "kind", "target", "targeted_asr", "untargeted_score", "untargeted_target")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo-dir", required=True, help="a zoo set's cache folder (one folder per model)")
    parser.add_argument("--clean-name", default="clean", help="the cleaning folder of each model (default: clean)")
    parser.add_argument("--margins", nargs="+", type=float, default=[0.1, 0.2, 0.3])
    parser.add_argument("--untargeted", action="store_true", help="also the untargeted re-inversion's score")
    parser.add_argument("--images", type=int, default=512, help="defender pairs the inversions read")
    parser.add_argument("--output", default="benchmarks/results")
    parser.add_argument("--prefix", default="reinversion")
    return parser.parse_args(argv)


def models(root: Path, clean_name: str) -> list[tuple[str, str, str | None, Path]]:
    """``(name, kind, target, folder)``: kind "poisoned" / "cleaned" for backdoored models, "never" otherwise."""
    found = []
    for folder in sorted(path for path in root.iterdir() if (path / "poison" / "model").is_dir()):
        results = json.loads((folder / "poison" / "results.json").read_text())
        if results.get("n_poison", 0) == 0:
            found.append((folder.name, "never", None, folder / "poison" / "model"))
            continue
        if results.get("converged") is False:
            continue  # a backdoor that did not take is neither
        found.append((folder.name, "poisoned", results["target"], folder / "poison" / "model"))
        if (folder / clean_name / "cleaned").is_dir():
            found.append((folder.name, "cleaned", results["target"], folder / clean_name / "cleaned"))
    return found


def measure(args: argparse.Namespace) -> list[dict]:
    clean = load_image_caption_dataset("digits:defender", image_size=32)
    classnames = load_classification_dataset("digits:test", image_size=32).classnames
    images, captions = first_pairs(clean, args.images)
    found = models(Path(args.zoo_dir).expanduser(), args.clean_name)
    targets = sorted({target for _, _, target, _ in found if target is not None})
    rows = []
    for name, kind, target, folder in tqdm(found, desc="models"):
        model = load_clip(str(folder))
        with torch.no_grad():
            embeddings = zeroshot_classifier(model, classnames, DIGIT_CAPTION_TEMPLATES)
        untargeted = reinversion(model, images, captions, classnames, embeddings) if args.untargeted else {}
        for toward in [target] if target is not None else targets:
            rows.append(
                {
                    "name": name,
                    "kind": kind,
                    "target": toward,
                    "targeted_asr": targeted_reinversion(model, images, captions, toward, classnames, embeddings),
                    "untargeted_score": untargeted.get("reinversion_score"),
                    "untargeted_target": untargeted.get("reinversion_target"),
                }
            )
    return rows


def summary(rows: list[dict], margins: list[float], key: str = "targeted_asr") -> list[dict]:
    """Flag fractions per margin: each backdoored kind against every never-poisoned reference (same target), and
    never-poisoned models against every other never-poisoned one (the false flags)."""
    never = [row for row in rows if row["kind"] == "never" and row[key] is not None]
    out = []
    for margin in margins:
        line = {"statistic": key, "margin": margin}
        for kind in ("poisoned", "cleaned"):
            pairs = [
                (row[key], ref[key])
                for row in rows
                if row["kind"] == kind and row[key] is not None
                for ref in never
                if ref["target"] == row["target"]
            ]
            line[f"{kind}_flagged"] = sum(model > ref + margin for model, ref in pairs)
            line[f"{kind}_pairs"] = len(pairs)
        pairs = [(a[key], b[key]) for a, b in permutations(never, 2) if a["target"] == b["target"]]
        line["never_flagged"] = sum(model > ref + margin for model, ref in pairs)
        line["never_pairs"] = len(pairs)
        out.append(line)
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    rows = measure(args)
    with open(output / f"{args.prefix}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    lines = summary(rows, args.margins)
    if args.untargeted:  # the untargeted score has no natural margin scale: compared at margin 0 as the library does
        lines += summary(rows, [0.0], "untargeted_score")
    (output / f"{args.prefix}.json").write_text(json.dumps({"rows": rows, "summary": lines}, indent=1))
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
