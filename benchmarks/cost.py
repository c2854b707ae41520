"""Cost against the size of the defender set: BI-BAU and CleanCLIP side by side, and where their ratio goes.

Issue 17 asks for BI-BAU's wall time to be at most 1.5x CleanCLIP's at equal data, epochs and batch size. A BI-BAU
cleaning is a trigger search whose cost does not depend on the defender set (a fixed number of Adam steps on
batches of 64 images: inversion, verdict, re-fit, re-inversion) plus ``rounds x epochs`` passes over the set; a
CleanCLIP cleaning is the passes alone. So the ratio depends on the set's size ``N``. This script measures it.

**Measured** (``run``): for each cached zoo model (``benchmarks/zoo.py``) and each size of ``--sizes``, every variant
of ``--variants`` cleans the model with ``recipes/clean_clip.py`` on the first ``N`` pairs of ``--data`` (default
``digits:train``, 1,097 pairs: the defender split has only 300; a larger size cycles over the split's pairs, written
once as PNG files and a CSV under ``ZOO_DIR/cost_data``: repeated pairs, for timing), CleanCLIP at BI-BAU's passes over
the data (``baselines.equal_budget``) and its development-chosen learning rate (``--chosen``). Jobs run ``--jobs`` at a
time, one CPU thread each, in an order that alternates the variants, so all see the same load. Per variant, a least-
squares line ``wall = fixed + per_pair * N`` over every run; the ratio of the two lines at each size, its limit
``per_pair(BI-BAU) / per_pair(CleanCLIP)`` as ``N`` grows, and the size from which the ratio is at most ``--ratio``
(none when the limit is above it). ASR and clean accuracy are recorded but are not this benchmark's point:
``digits:train`` is the split the models were poisoned on.

**Projected** (``project``): for open_clip's ViT-B-32 and RN50 at 224 px, from one step of each phase measured by
``benchmarks/scale.py`` (``--scale``, default ``benchmarks/results/scale.csv``, one process) and the image counts of
the default configs (``search_images``): the same line, the same ratio.

    python benchmarks/cost.py --jobs 2                         # run, then write OUTPUT/PREFIX.{csv,json,md}
    python benchmarks/cost.py --report-only                    # from the runs that finished
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import zoo
from baselines import equal_budget, load_chosen

DEFAULT_MODELS = ("badnet_zero_s16_v1", "blended_zero_s16_v1", "badclip_eight_s16_v1")
S2_FLAGS = "--set inversion.steps_per_round=30 --set inversion.verdict_steps=75 --set reinversion_steps=20"
VARIANTS = ("bibau", "bibau-s2", "cleanclip")
COLUMNS = (
    "model", "variant", "n_pairs", "wall_s", "search_s", "unlearning_s", "other_s", "steps_per_epoch", "ca_before",
    "ca_after", "asr_before", "asr_after", "verdict",
)  # fmt: skip
SEARCH_PHASES = ("defense/inversion", "defense/verdict", "defense/refit_at_unlearning_budget", "defense/reinversion")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("--zoo-dir", default=str(Path.home() / ".cache" / "clipclean" / "zoo_rate2five"))
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="cached zoo models (names)")
    parser.add_argument("--sizes", nargs="+", type=int, default=[150, 300, 600, 1097], help="defender pairs")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--data", default="digits:train", help="the defender set the sizes are cut from")
    parser.add_argument("--chosen", default="benchmarks/results/baseline_lr_wide.json", help="CleanCLIP's rate")
    parser.add_argument("--ratio", type=float, default=1.5, help="the ratio whose break-even size is reported")
    parser.add_argument("--scale", default="benchmarks/results/scale.csv", help="benchmarks/scale.py's table")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--output", default="benchmarks/results")
    parser.add_argument("--prefix", default="cost")
    parser.add_argument("--report-only", action="store_true", help="collect the finished runs only")
    return parser.parse_args(argv)


def variant_flags(variant: str, chosen: dict[str, float]) -> list[str]:
    """``clean_clip.py`` flags of a variant: BI-BAU's defaults, its halved search (s2), CleanCLIP at equal budget."""
    if variant == "cleanclip":
        return ["--defense", "cleanclip", *equal_budget("cleanclip", lr=chosen.get("cleanclip"))]
    return S2_FLAGS.split() if variant == "bibau-s2" else []


def folder(zoo_dir: Path, model: str, variant: str, n_pairs: int) -> Path:
    return zoo_dir / model / f"cost_{variant}_n{n_pairs}"


def jobs(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    """Every (model, variant, size), the variants alternating so that concurrent jobs mix them."""
    return [(m, v, n) for m in args.models for n in args.sizes for v in args.variants]


def repeated_csv(source: str, n_pairs: int, folder: Path) -> Path:
    """A CSV of ``n_pairs`` image-caption pairs that cycles over ``source`` (its images as PNG files, its captions):
    a defender set larger than the digits hold, for timing only (the pairs repeat)."""
    from PIL import Image

    from clipclean.data import load_image_caption_dataset

    path = folder / f"{source.replace(':', '_')}_x{n_pairs}.csv"
    if path.is_file():
        return path
    pairs = load_image_caption_dataset(source, image_size=32)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(len(pairs)):
        image, _ = pairs[index]
        png = folder / f"{source.replace(':', '_')}_{index:04d}.png"
        if not png.is_file():
            Image.fromarray((image * 255).round().byte().permute(1, 2, 0).numpy()).save(png)
        rows.append((str(png), pairs.captions[index]))
    partial = path.with_suffix(".partial")
    with partial.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filepath", "caption"])
        writer.writerows(rows[i % len(rows)] for i in range(n_pairs))
    partial.replace(path)
    return path


def data_for(args: argparse.Namespace, n_pairs: int) -> str:
    """``--data``, or for a size beyond a digits split's pairs, a CSV that repeats the split (:func:`repeated_csv`)."""
    split = digits_split_size(args.data)
    if split is None or n_pairs <= split:
        return args.data
    return str(repeated_csv(args.data, n_pairs, Path(args.zoo_dir) / "cost_data"))


def digits_split_size(source: str) -> int | None:
    """The number of pairs of a ``digits:SPLIT`` source (``None`` for any other source)."""
    from clipclean.data.digits import digits_split_indices, requested_digits_split

    split = requested_digits_split(source, None, "defender")
    return None if split is None else len(digits_split_indices()[split])


def run_one(job: tuple[str, str, int], args: argparse.Namespace, chosen: dict[str, float]) -> dict:
    model, variant, n_pairs = job
    poisoned = Path(args.zoo_dir) / model / "poison"
    seed = int(re.search(r"_s(\d+)(_|$)", model).group(1))  # the zoo's names: ATTACK_TARGET_sSEED_vVARIANT
    arguments = ["--model", str(poisoned / "model"), "--clean-data", data_for(args, n_pairs),
                 "--max-clean-pairs", str(n_pairs), "--eval-data", "digits:test", "--eval-trigger",
                 str(poisoned / "trigger.json"), "--seed", str(seed), *variant_flags(variant, chosen)]  # fmt: skip
    return zoo.run_script("recipes/clean_clip.py", arguments, folder(Path(args.zoo_dir), model, variant, n_pairs))


def row_of(model: str, variant: str, n_pairs: int, results: dict) -> dict:
    """One run's times (s) and outcome; ``search_s`` is the trigger search, ``unlearning_s`` the optimiser steps."""
    phases = results.get("phase_wall_time_s", {})
    search = sum(phases.get(name, 0.0) for name in SEARCH_PHASES)
    unlearning = phases.get("cleaning/unlearning_steps", 0.0)
    wall = results["wall_time_s"]
    return {
        "model": model, "variant": variant, "n_pairs": n_pairs, "wall_s": wall, "search_s": search,
        "unlearning_s": unlearning, "other_s": wall - search - unlearning,
        "steps_per_epoch": results.get("steps_per_epoch"),
        "ca_before": results["before"]["clean_accuracy"], "ca_after": results["after"]["clean_accuracy"],
        "asr_before": results["before"]["attack_success_rate"], "asr_after": results["after"]["attack_success_rate"],
        "verdict": (results.get("inversion") or {}).get("verdict", "-"),
    }  # fmt: skip


def fit_line(points: list[tuple[float, float]]) -> dict[str, float]:
    """Least squares ``y = fixed + per_pair * x`` (at least two distinct ``x``)."""
    xs, ys = [x for x, _ in points], [y for _, y in points]
    if len(set(xs)) < 2:
        raise ValueError("a line needs runs at two sizes at least")
    x_mean, y_mean = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - x_mean) * (y - y_mean) for x, y in points) / sum((x - x_mean) ** 2 for x in xs)
    return {"fixed": y_mean - slope * x_mean, "per_pair": slope}


def break_even(numerator: dict[str, float], denominator: dict[str, float], ratio: float) -> float | None:
    """The smallest ``N >= 0`` from which ``numerator(N) <= ratio * denominator(N)`` holds for every larger ``N``;
    ``None`` when the limit of the ratio (the slopes' ratio) is above ``ratio``."""
    gap_fixed = numerator["fixed"] - ratio * denominator["fixed"]
    gap_slope = ratio * denominator["per_pair"] - numerator["per_pair"]
    if gap_slope <= 0:
        return 0.0 if gap_slope == 0 and gap_fixed <= 0 else None
    return max(0.0, gap_fixed / gap_slope)


def ratio_summary(lines: dict[str, dict], sizes: list[int], ratio: float, base: str = "cleanclip") -> dict:
    """Each variant against ``base``: the ratio of the fitted lines at each size, its limit and the break-even."""
    out = {}
    for variant, line in lines.items():
        if variant == base:
            continue
        other = lines[base]
        out[variant] = {
            "ratio_at": {
                str(n): (line["fixed"] + line["per_pair"] * n) / (other["fixed"] + other["per_pair"] * n)
                for n in sizes
            },  # fmt: skip
            "limit": line["per_pair"] / other["per_pair"] if other["per_pair"] > 0 else None,
            "break_even_pairs": break_even(line, other, ratio),
        }
    return out


# ---- projection at 224 px from benchmarks/scale.py's per-step costs ----------------------------------------------
def search_images(candidates: int = 20) -> dict[str, int]:
    """Images pushed through the image tower with a gradient to the triggers by a default BI-BAU cleaning's trigger
    search (``InversionConfig``, ``BIBAUConfig``), per phase; ``candidates``: the verdict's (at most
    ``max_verdict_candidates``)."""
    from clipclean.defenses.bibau import BIBAUConfig

    config = BIBAUConfig()
    inv = config.inversion
    per_step = (inv.patch_hypotheses + (inv.additive_eps > 0)) * inv.batch_size
    return {
        "m_step": (inv.rounds * inv.steps_per_round + config.rounds * config.reinversion_steps
                   + config.reinversion_steps) * per_step,  # inversion, re-inversion after every round, the re-fit
        "verdict": inv.verdict_steps * min(candidates, inv.max_verdict_candidates) * inv.verdict_batch_size,
    }  # fmt: skip


def project(scale_rows: list[dict], passes: int, ratio: float, sizes: list[int]) -> dict:
    """Per model of ``scale_rows`` (one process): seconds per image of each phase, the fixed search cost, the cost
    per defender pair of BI-BAU's and CleanCLIP's ``passes`` passes, and the ratio summary."""
    images = search_images()
    out = {}
    for model in sorted({row["model"] for row in scale_rows}):
        per = {row["phase"]: row for row in scale_rows if row["model"] == model and int(row["processes"]) == 1}
        if not {"m_step", "verdict", "unlearning", "cleanclip"} <= per.keys():
            continue
        per_image = {phase: float(per[phase]["s_per_step"]) / float(per[phase]["images_per_step"]) for phase in per}
        per_pair = {  # an unlearning step sees clean + triggered images of each pair; CleanCLIP image + its view
            phase: float(per[phase]["s_per_step"]) / int(per[phase]["global_batch"])
            for phase in ("unlearning", "cleanclip")
        }
        fixed = sum(images[phase] * per_image[phase] for phase in images)
        lines = {"bibau": {"fixed": fixed, "per_pair": passes * per_pair["unlearning"]},
                 "cleanclip": {"fixed": 0.0, "per_pair": passes * per_pair["cleanclip"]}}  # fmt: skip
        out[model] = {"search_images": images, "s_per_image": per_image, "lines": lines,
                      **ratio_summary(lines, sizes, ratio)}  # fmt: skip
    return out


def report(rows: list[dict], args: argparse.Namespace) -> dict:
    from clipclean.defenses import DEFENSES

    lines = {}
    for variant in args.variants:
        points = [(row["n_pairs"], row["wall_s"]) for row in rows if row["variant"] == variant]
        if len({x for x, _ in points}) >= 2:
            lines[variant] = fit_line(points)
    config = DEFENSES["bibau"][0]()
    scale_path = Path(args.scale)
    scale_text = scale_path.read_text().splitlines() if scale_path.is_file() else []
    scale_rows = [row for row in csv.DictReader(scale_text) if row["run"] == "phases"]
    sizes = sorted({*args.sizes, 10_000, 100_000})
    summary = {
        "measured": {
            "runs": len(rows), "models": sorted({row["model"] for row in rows}), "data": args.data,
            "lines": lines, **(ratio_summary(lines, sizes, args.ratio) if "cleanclip" in lines else {}),
        },
        "projected_224px": project(scale_rows, config.rounds * config.epochs, args.ratio, sizes),
        "ratio": args.ratio,
    }  # fmt: skip
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    with (output / f"{args.prefix}.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (output / f"{args.prefix}.json").write_text(json.dumps(summary, indent=2) + "\n")
    (output / f"{args.prefix}.md").write_text(markdown(rows, summary, args))
    return summary


def markdown(rows: list[dict], summary: dict, args: argparse.Namespace) -> str:
    out = [f"# Cost against the defender set's size ({args.prefix})", "",
           f"<!-- derived: benchmarks/results/{args.prefix}.csv, by benchmarks/cost.py -->", "",
           "| variant | pairs | runs | wall s, median (range) | search s, median | unlearning s, median |",
           "|---|---:|---:|---|---:|---:|"]  # fmt: skip
    for variant in args.variants:
        for n in args.sizes:
            chosen = [row for row in rows if row["variant"] == variant and row["n_pairs"] == n]
            if not chosen:
                continue
            walls = [row["wall_s"] for row in chosen]
            spread = f"{statistics.median(walls):.0f} ({min(walls):.0f}-{max(walls):.0f})"
            out.append(
                f"| {variant} | {n} | {len(chosen)} | {spread}"
                f" | {statistics.median(r['search_s'] for r in chosen):.0f}"
                f" | {statistics.median(r['unlearning_s'] for r in chosen):.1f} |"
            )
    sizes = ", ".join(str(n) for n in sorted({*args.sizes, 10_000, 100_000}))
    out += ["", f"<!-- derived: benchmarks/results/{args.prefix}.json, by benchmarks/cost.py -->", "",
            f"| where | variant | fixed s | s per pair | ratio to CleanCLIP at {sizes} pairs (a measured line: "
            f"extrapolated past the largest size run) | limit | ratio <= {args.ratio:g} from |",
            "|---|---|---:|---:|---|---:|---|"]  # fmt: skip
    blocks = [("digits, tiny CLIP (measured)", summary["measured"])]
    blocks += [(f"{model} 224 px, CPU (projected)", item) for model, item in summary["projected_224px"].items()]
    for where, item in blocks:
        for variant, line in item.get("lines", {}).items():
            entry = item.get(variant, {})
            ratios = ", ".join(f"{value:.2f}" for value in entry.get("ratio_at", {}).values()) or "-"
            limit = f"{entry['limit']:.2f}" if entry.get("limit") is not None else "-"  # the base line has no entry
            even = entry.get("break_even_pairs", "-")
            even = "never" if even is None else (f"{even:,.0f} pairs" if isinstance(even, float) else even)
            out.append(f"| {where} | {variant} | {line['fixed']:.0f} | {line['per_pair']:.3f} | {ratios} | "
                       f"{limit} | {even} |")  # fmt: skip
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    args = parse_args(argv)
    chosen = load_chosen(Path(args.chosen))
    todo = jobs(args)
    if not args.report_only:
        missing = [m for m in args.models if not (Path(args.zoo_dir) / m / "poison" / "results.json").is_file()]
        if missing:
            raise SystemExit(f"not built in {args.zoo_dir}: {', '.join(missing)} (benchmarks/zoo.py builds them)")
        for size in args.sizes:  # written here, once, before the jobs that read it run side by side
            data_for(args, size)
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for job, _ in zip(todo, pool.map(lambda job: run_one(job, args, chosen), todo), strict=True):
                print("done", *job, flush=True)
    rows = []
    for model, variant, n_pairs in todo:
        path = folder(Path(args.zoo_dir), model, variant, n_pairs) / "results.json"
        if path.is_file():
            rows.append(row_of(model, variant, n_pairs, json.loads(path.read_text())))
    summary = report(rows, args)
    print(json.dumps(summary["measured"], indent=2))


if __name__ == "__main__":
    main()
