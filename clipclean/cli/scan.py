"""``clipclean scan MODEL --data D``: blind inversion of a CLIP's backdoor trigger and a verdict; the model is only
read, never changed.

Runs :class:`clipclean.inversion.BlindInversion` (untargeted EM, then the anomaly-index verdict over the target
candidates) on up to ``--max-pairs`` clean image-caption pairs, prints the verdict and the recovered target, and
writes the recovered trigger (``trigger.json`` + ``trigger.safetensors``, ``trigger.png``) and ``report.json`` to
``--output-dir`` (default ``outputs/scan-<model>``). A model cleaned by clipclean carries what was measured when it
was cleaned (``clipclean.json``): the method, the verdict on its source, and the complete-unlearning tests (RA-ASR
under the retuning attack and the re-inversion score, each next to a never-poisoned reference); scan prints them and
copies them into the report (``recorded_cleaning``), and says "not cleaned by clipclean" for a model without such a
record. The verdict is known to be unreliable on tiny models (docs/method.md): read the anomaly index and the
per-candidate attack success rates in the report, not only the word.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from clipclean.cli.common import add_output_dir_argument, add_overwrite_argument, prepare_output_dir
from clipclean.cli.help import add_command

EXAMPLES = """examples:
  clipclean scan outputs/badnet/model --data digits:defender
  clipclean scan hf-hub:org/suspect-clip --data clean_pairs.csv --classes /data/imagenet/val --output-dir scan_out
  clipclean scan path/to/transformers-clip --data "shards/cc-{000..009}.tar" --max-pairs 500 --set verdict_steps=300
"""
MAX_CAPTION_CANDIDATES = 1000
REPORT_FILENAME = "report.json"
DEFAULT_OUTPUT_ROOT = Path("outputs")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(
        subparsers,
        "scan",
        "is this CLIP backdoored? blind trigger inversion + verdict (the model is not changed)",
        __doc__,
        EXAMPLES,
        run,
    )
    parser.add_argument("model", help="open_clip name, hf-hub:org/repo, a local folder (open_clip or transformers)")
    parser.add_argument("--pretrained", default=None, help="open_clip pretrained tag or checkpoint file (names only)")
    parser.add_argument("--cache-dir", default=None, help="Hugging Face cache directory")
    parser.add_argument("--data", required=True, help="clean image-caption pairs (digits:defender, .csv, shards...)")
    parser.add_argument(
        "--classes",
        default=None,
        help="target candidates: a classification set (digits:test, class folders) or a text file with one name "
        "per line (default: the data's class names, else its distinct captions)",
    )
    parser.add_argument("--templates", default=None, help="zero-shot templates file (default: per data set)")
    parser.add_argument("--max-pairs", type=int, default=300, help="clean pairs used (a seeded random subset)")
    add_output_dir_argument(parser, f"{DEFAULT_OUTPUT_ROOT}/scan-<model>")
    parser.add_argument(
        "--set",
        dest="options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a field of InversionConfig, e.g. --set rounds=2 --set verdict_steps=300",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the choice of pairs and the inversion")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable pairs of --data (with a count)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    add_overwrite_argument(parser, "a previous scan's report and trigger in --output-dir")
    return parser


def _candidate_names(args: argparse.Namespace, data) -> tuple[list[str], str]:
    """Target candidates and the source whose templates fit them."""
    from clipclean.data import load_classification_dataset

    if args.classes is not None:
        path = Path(args.classes)
        if path.is_file() and path.suffix.lower() == ".txt":
            names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            return names, args.data
        return list(load_classification_dataset(args.classes, image_size=8).classnames), args.classes
    if getattr(data, "classnames", None):
        return list(data.classnames), args.data
    return sorted(set(data.captions))[:MAX_CAPTION_CANDIDATES], "captions"


def _default_output(model_name: str) -> Path:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", model_name.rstrip("/").split("/")[-1]) or "model"
    return DEFAULT_OUTPUT_ROOT / f"scan-{name}"


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from clipclean.cli.common import default_templates, negative_verdict_notes, parse_key_values
    from clipclean.cli.smoke import smoke_config
    from clipclean.data import load_image_caption_dataset
    from clipclean.evaluation import zeroshot_classifier
    from clipclean.fileio import write_json
    from clipclean.inversion import BlindInversion, InversionConfig
    from clipclean.models import load_clip
    from clipclean.triggers import draw_trigger, save_trigger

    output = Path(args.output_dir) if args.output_dir else _default_output(args.model)
    prepare_output_dir(
        output, overwrite=args.overwrite, results=(REPORT_FILENAME, "trigger.json"), flag="--output-dir"
    )
    torch.manual_seed(args.seed)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_clip(args.model, pretrained=args.pretrained, device=device, cache_dir=args.cache_dir)
    model.requires_grad_(False)
    data = load_image_caption_dataset(args.data, image_size=model.image_size, skip_bad=args.skip_bad)
    generator = torch.Generator().manual_seed(args.seed)
    chosen = sorted(torch.randperm(len(data), generator=generator)[: args.max_pairs].tolist())
    images = torch.stack([data[i][0] for i in chosen]).to(device)
    captions = [data.captions[i] for i in chosen]
    names, template_source = _candidate_names(args, data)
    if template_source == "captions":
        templates, templates_name = ["{c}"], "captions as candidates"
    else:
        templates, templates_name = default_templates(args.templates, template_source)
    with torch.no_grad():
        classifier = zeroshot_classifier(model, names, templates)
    config = smoke_config(InversionConfig(**{"seed": args.seed, **parse_key_values(args.options)}))
    inversion = BlindInversion(
        model, config, candidate_names=names, candidate_embeddings=classifier, progress=args.progress
    )
    result = inversion.fit(images, captions)

    metadata = {"source": "clipclean scan", "model": args.model, "target": result.recovered_target}
    save_trigger(result.trigger, output / "trigger", metadata=metadata)
    draw_trigger(
        result.trigger, output / "trigger.png", images=images[:4], title="recovered by clipclean scan",
        target=result.recovered_target,
    )  # fmt: skip
    report = {
        **result.report(),
        "model": args.model,
        "data": args.data,
        "n_pairs": len(chosen),
        "n_candidates": len(names),
        "templates": templates_name,
        "anomaly_threshold": result.verdict_threshold,
        "inversion_config": config,
    }
    recorded = _recorded_cleaning(args.model, args.cache_dir)
    if recorded is not None:
        report["recorded_cleaning"] = recorded
    write_json(output / REPORT_FILENAME, report)
    top = ", ".join(f"{name} ({probability:.2f})" for name, probability in result.target_candidates[:3])
    print(f"verdict: {result.verdict}")
    print(f"recovered target: {result.recovered_target}  (candidates: {top})")
    print(
        f"verdict score ({result.verdict_statistic}): {result.anomaly_index:.2f}  "
        f"(threshold {result.verdict_threshold})"
    )
    for note in negative_verdict_notes(report):
        print(note)
    _print_recorded(recorded, args.model, args.cache_dir)
    print(f"trigger: {output / 'trigger.png'}  report: {output / REPORT_FILENAME}")
    return report


def _recorded_cleaning(model: str, cache_dir: str | None) -> dict[str, Any] | None:
    """What clipclean recorded when ``model`` was cleaned (its sidecar, written by a defense), or ``None``: no
    sidecar, or one written by something else (``poison_clip``, ``convert``)."""
    from clipclean.defenses import DEFENSES
    from clipclean.hub import find_sidecar

    sidecar = find_sidecar(model, cache_dir)
    provenance = (sidecar or {}).get("provenance") or {}
    if provenance.get("method") not in DEFENSES:
        return None
    keys = ("method", "source_model", "verdict", "recovered_target", "complete")
    return {key: provenance.get(key) for key in keys} | {"metrics": sidecar.get("metrics")}


def _print_recorded(recorded: dict[str, Any] | None, model: str, cache_dir: str | None) -> None:
    """The cleaning record of the model, or that it has none: "not cleaned by clipclean" and, when its sidecar says
    what wrote it instead, that method."""
    from clipclean.complete import complete_caveats, complete_table_rows
    from clipclean.hub import find_sidecar

    if recorded is None:
        method = (((find_sidecar(model, cache_dir) or {}).get("provenance")) or {}).get("method")
        written_by = f" (its clipclean.json was written by {method})" if method else ""
        print(f"cleaning record: none -- not cleaned by clipclean{written_by}")
        return
    print(f"recorded when cleaned: method {recorded['method']}, verdict on the source: {recorded['verdict']}")
    if recorded.get("complete"):
        for name, value, reference in complete_table_rows(recorded["complete"]):
            print(f"  {name}: {value}  (never-poisoned reference: {reference})")
        for caveat in complete_caveats(recorded["complete"]):
            print(f"  note: {caveat}")
    else:
        print("  complete-unlearning tests (persistence): not measured (clean with --complete-eval)")
