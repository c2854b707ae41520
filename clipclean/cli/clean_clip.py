"""Find and remove a backdoor from a CLIP: blind inversion + unlearning (BI-BAU by default), then evaluate.

Runs as a plain script or under ``accelerate launch``. With **no arguments** it runs the embedded demo: it builds
(once, cached under ``--demo-cache``) a tiny CLIP backdoored on scikit-learn's digits with a BadNet patch, then
cleans it *untargeted* on the digits defender split and evaluates on the held-out test split::

    python recipes/clean_clip.py
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \\
        --mixed_precision no --dynamo_backend no recipes/clean_clip.py --output-dir outputs/clean_demo

Your own model and data::

    accelerate launch recipes/clean_clip.py --model hf-hub:org/suspect-clip --clean-data clean_pairs.csv \\
        --eval-data /data/imagenet/val --output-dir outputs/cleaned

Output folder (``--output-dir``, also spelt ``--output_dir``; the run ends by printing what it wrote there):

* ``cleaned/`` -- the cleaned model in open_clip Hub layout; its card carries before/after CA, ASR, the verdict;
* ``inversion/`` -- the inverted trigger (``trigger.json`` + ``.safetensors``), ``trigger.png``, ``report.json``;
* ``results.json`` -- ``{"defense", "before", "after", "inversion", "inverted_trigger_asr", "wall_time_s",
  "config", ...}`` (ASR keys are null when no true trigger is known);
* ``checkpoints/`` -- ``accelerator.save_state`` after each round; ``--resume_from_checkpoint latest`` continues an
  interrupted run. A run that finishes deletes them unless ``--keep-checkpoints``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Only the command line is imported here, so that --help answers at once; torch and the library load in main().
from clipclean.cli.common import (
    add_complete_eval_arguments,
    add_defense_arguments,
    check_cleaning_arguments,
    check_complete_eval_arguments,
    make_cleaning_parser,
    run_cli,
)

if TYPE_CHECKING:
    from clipclean.cli.cleaning import CleaningInputs, CleaningJob

logger = logging.getLogger("clean_clip")

DEMO_CACHE = "outputs/demo_backdoored_badnet"
OUTPUTS = {
    "cleaned": "the cleaned model (open_clip Hub layout, model card)",
    "inversion": "the inverted trigger (trigger.png, trigger.json) and the defense's report",
    "results.json": "clean accuracy and ASR before/after, the verdict, the configs, wall times",
}


def build_parser() -> argparse.ArgumentParser:
    parser = make_cleaning_parser(
        __doc__, "outputs/clean_clip", "the defender's clean image-caption set (demo: digits)"
    )

    defense = add_defense_arguments(parser)
    defense.add_argument(
        "--complete-eval",
        action="store_true",
        help="after cleaning, run the tests of complete unlearning (retuning attack with the --eval-trigger, "
        "re-inversion) on the cleaned model and the reference; written to results.json under 'complete'",
    )
    add_complete_eval_arguments(parser)
    out = parser.add_argument_group("output")
    out.add_argument("--push-to-hub", default=None, metavar="REPO", help="upload cleaned/ to this Hub repo")
    out.add_argument(
        "--save-layout",
        default=None,
        choices=["open_clip", "transformers"],
        help="format of cleaned/ (default: the model's own; a transformers CLIP can be saved as open_clip)",
    )
    out.add_argument("--demo-cache", default=DEMO_CACHE, help="where the demo's backdoored model is cached")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.eval_target is not None and args.eval_trigger is None:
        parser.error("--eval-target needs --eval-trigger")
    if args.reference_model is not None and args.reference_measurements is not None:
        parser.error("give --reference-model or --reference-measurements, not both")
    if not args.complete_eval and (args.reference_model or args.reference_measurements):
        parser.error("--reference-model/--reference-measurements are used by --complete-eval: add it")
    check_cleaning_arguments(args)
    try:  # validate now, not after the defense has run
        check_complete_eval_arguments(args)
    except (OSError, TypeError, ValueError) as error:
        parser.error(str(error))
    return args


def _build_demo_model(args: argparse.Namespace) -> None:
    """The embedded demo: a tiny CLIP backdoored on digits (BadNet patch, target "zero"), cached on disk."""
    from clipclean.cli import poison_clip
    from clipclean.cli.cleaning import prepare_demo

    prepare_demo(args, poison_clip.main, "a backdoored tiny CLIP")


def _load(args: argparse.Namespace, device) -> CleaningInputs:
    """The CLIP, the defender's image-caption pairs, the evaluation classes and the zero-shot templates."""
    from clipclean.cli.cleaning import CleaningInputs, load_eval_data
    from clipclean.cli.common import default_templates
    from clipclean.data import load_image_caption_dataset
    from clipclean.models import load_clip

    model = load_clip(args.model, pretrained=args.pretrained, device=device, cache_dir=args.cache_dir)
    clean = load_image_caption_dataset(args.clean_data, image_size=model.image_size, skip_bad=args.skip_bad)
    eval_data = load_eval_data(args, model.image_size)
    templates, templates_name = default_templates(args.templates, args.eval_data or args.clean_data)
    return CleaningInputs(model, clean, eval_data, templates, templates_name, f"{templates_name} ({len(templates)})")


def _candidates(inputs: CleaningInputs) -> tuple[list[str], Any]:
    """The names that may be the recovered target and their zero-shot embeddings: the evaluation classes, else
    (no --eval-data) the first 1000 distinct captions of the clean data."""
    from clipclean.evaluation import zeroshot_classifier

    if inputs.eval_data is not None:
        candidate_names = list(inputs.eval_data.classnames)
    else:
        clean = inputs.clean
        captions = getattr(clean, "captions", None) or [clean[i][1] for i in range(len(clean))]
        candidate_names = sorted(set(captions))[:1000]
    templates = inputs.eval_templates if inputs.eval_data is not None else ["{c}"]
    return candidate_names, zeroshot_classifier(inputs.model, candidate_names, templates)


def _collate_fn(inputs: CleaningInputs):
    from clipclean.training import CaptionTokenizer

    return CaptionTokenizer(inputs.model.tokenizer)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    from clipclean.cli.cleaning import run_cleaning

    return run_cleaning(args, cleaning_job())


def cleaning_job() -> CleaningJob:
    """What this recipe adds to :func:`~clipclean.cli.cleaning.run_cleaning`: how it loads a CLIP and its data, names
    the candidates, batches the pairs and writes its outputs (also used by ``benchmarks/reverdict.py``)."""
    from clipclean.cli.cleaning import CleaningJob
    from clipclean.training import clamp_logit_scale_

    return CleaningJob(
        name="clean_clip",
        clean_data_description="the defender's clean image-caption set",
        outputs=OUTPUTS,
        build_demo=_build_demo_model,
        load=_load,
        candidates=_candidates,
        collate_fn=_collate_fn,
        write_outputs=_write_outputs,
        after_step=clamp_logit_scale_,
        complete_eval=_complete_eval,
    )


def _complete_eval(args, accelerator, inputs: CleaningInputs, trigger, target) -> dict:
    """The tests of complete unlearning (retuning attack, re-inversion) on the cleaned model and the never-poisoned
    reference. They are small and single-process: the main process runs them, the others wait for the result."""
    from accelerate.utils import broadcast_object_list

    from clipclean.cli.common import measure_with_reference
    from clipclean.complete import complete_block
    from clipclean.evaluation import resolve_target

    model, clean, eval_data, templates = inputs.model, inputs.clean, inputs.eval_data, inputs.eval_templates
    if trigger is None:
        logger.warning("--complete-eval without --eval-trigger: re-inversion only, no retuning attack (RA-ASR)")
    if args.reference_model is None and args.reference_measurements is None:
        logger.warning("--complete-eval without a never-poisoned reference: reference_* keys are null")
    block = [None]
    if accelerator.is_main_process:
        classnames = list(eval_data.classnames) if eval_data is not None else []
        if target is not None:
            target = classnames[resolve_target(target, classnames)]

        measured, reference = measure_with_reference(
            args, model, clean, trigger, target, eval_data, classnames, templates
        )
        block = [complete_block(measured, reference)]
    broadcast_object_list(block)
    return block[0]


def _write_outputs(args, accelerator, inputs: CleaningInputs, defense, results) -> None:
    from clipclean.cli.cleaning import card_metrics, write_inversion_folder
    from clipclean.cli.common import write_main_process_json
    from clipclean.hub import push_to_hub, save_pretrained

    output = Path(args.output_dir)
    if accelerator.is_main_process:
        recovered = (results["inversion"] or {}).get("recovered_target")
        write_inversion_folder(output, defense, args.defense, recovered, inputs.clean, accelerator.device)
        verdict = (results["inversion"] or {}).get("verdict")
        save_pretrained(
            inputs.model,
            output / "cleaned",
            metrics=card_metrics(results),
            provenance={
                "method": args.defense,
                "source_model": args.model,
                "verdict": verdict,
                "recovered_target": (results["inversion"] or {}).get("recovered_target"),
                "config": results["config"],
                "complete": results["complete"],  # persistence, shown again by `clipclean scan`
            },
            card_notes=_card_note(args.defense, verdict, results["weights_unchanged"])
            + _persistence_note(results["complete"]),
            layout=args.save_layout,
            card_summary="checked with clipclean (nothing removed)" if results["weights_unchanged"] else None,
            eval_dataset=args.eval_data,
        )
    write_main_process_json(accelerator, output / "results.json", results)
    if args.push_to_hub and accelerator.is_main_process:
        url = push_to_hub(output / "cleaned", args.push_to_hub)
        logger.info("pushed to %s", url)


def _card_note(defense: str, verdict: str | None, unchanged: bool) -> str:
    """The model card's first sentence; it says "cleaned" only when the weights changed."""
    if unchanged:
        return (
            f"Checked with clipclean's `{defense}` defense, which found nothing to remove (inversion verdict on the "
            f"source model: **{verdict}**): the weights are the source model's, unchanged."
            + (
                " That verdict is not proof that the model is clean: it misses some backdoors."
                if verdict == "no backdoor found"
                else ""
            )
        )
    return f"Cleaned with clipclean's `{defense}` defense. Inversion verdict on the source model: **{verdict}**."


def _persistence_note(complete: dict | None) -> str:
    """The model card's sentence on complete unlearning (empty when it was not measured)."""
    if not complete:
        return ""
    from clipclean.complete import complete_caveats, complete_table_rows

    rows = "; ".join(f"{name}: {value} (never-poisoned reference: {reference})" for name, value, reference in
                     complete_table_rows(complete))  # fmt: skip
    notes = "".join(f" Note: {caveat}." for caveat in complete_caveats(complete))
    return f" Complete-unlearning tests (docs/evaluation.md) -- {rows}.{notes}"


if __name__ == "__main__":
    sys.exit(run_cli(main))
