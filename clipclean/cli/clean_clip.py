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
import time
from pathlib import Path
from typing import Any

# Only the command line is imported here, so that --help answers at once; torch and the library load in main().
from clipclean.cli.common import (
    add_complete_eval_arguments,
    add_defense_arguments,
    check_cleaning_arguments,
    check_complete_eval_arguments,
    make_cleaning_parser,
    run_cli,
)

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


def _evaluate(model, loader, eval_data, templates, trigger, target, args, accelerator, classifier) -> dict:
    from clipclean.cli.cleaning import evaluate_phase

    return evaluate_phase(
        model, loader, eval_data.classnames, classifier, trigger, target, accelerator, templates, args.seed,
        progress=args.progress,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import torch
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader

    from clipclean.cli.cleaning import (
        CleaningSession,
        check_model_changed,
        inversion_report,
        load_eval_trigger,
        make_defense,
        peak_memory_mb,
        phase_wall_times,
        prepare_cleaning_output,
        trigger_identical_across_ranks,
    )
    from clipclean.cli.cleaning import inverted_trigger_asr as inverted_trigger_asr_of
    from clipclean.cli.common import (
        configure_cpu_threads,
        default_templates,
        finish_run,
        make_accelerator,
        setup_logging,
    )
    from clipclean.data import load_classification_dataset, load_image_caption_dataset
    from clipclean.evaluation import zeroshot_classifier
    from clipclean.models import load_clip
    from clipclean.timing import PhaseTimer
    from clipclean.training import CaptionTokenizer, clamp_logit_scale_

    prepare_cleaning_output(args)  # before any work: a used or unwritable folder fails now, not after the cleaning
    start_time = time.time()
    accelerator = make_accelerator(args)
    setup_logging(accelerator)
    configure_cpu_threads(accelerator)
    set_seed(args.seed)
    demo_run = args.model is None
    if demo_run:
        _build_demo_model(args)
    if args.clean_data is None:
        raise SystemExit("--clean-data is required when --model is given (the defender's clean image-caption set)")

    timer = PhaseTimer()
    with timer("load"), accelerator.main_process_first():
        model = load_clip(args.model, pretrained=args.pretrained, device=accelerator.device, cache_dir=args.cache_dir)
        clean = load_image_caption_dataset(args.clean_data, image_size=model.image_size, skip_bad=args.skip_bad)
        eval_data = (
            load_classification_dataset(
                args.eval_data, image_size=model.image_size, classnames=args.classnames, skip_bad=args.skip_bad
            )
            if args.eval_data
            else None
        )
    if args.max_clean_pairs is not None:
        clean = torch.utils.data.Subset(clean, range(min(args.max_clean_pairs, len(clean))))
    templates, templates_name = default_templates(args.templates, args.eval_data or args.clean_data)

    true_trigger, true_target = load_eval_trigger(
        args.eval_trigger, args.eval_target, eval_data, accelerator.device, image_size=model.image_size
    )

    # Candidates that name the recovered target: the evaluation classes (zero-shot embeddings).
    if eval_data is not None:
        candidate_names = list(eval_data.classnames)
    else:
        captions = getattr(clean, "captions", None) or [clean[i][1] for i in range(len(clean))]
        candidate_names = sorted(set(captions))[:1000]
    model.eval()
    classifier = zeroshot_classifier(model, candidate_names, templates if eval_data is not None else ["{c}"])

    eval_loader = DataLoader(eval_data, batch_size=256, shuffle=False) if eval_data is not None else None
    train_loader = DataLoader(
        clean,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=len(clean) >= 2 * args.batch_size,
        num_workers=args.workers,
        collate_fn=CaptionTokenizer(model.tokenizer),
        generator=torch.Generator().manual_seed(args.seed),
    )
    before = None
    if eval_loader is not None:
        eval_loader = accelerator.prepare(eval_loader)
        with timer("evaluate_before"):
            before = _evaluate(
                model, eval_loader, eval_data, templates, true_trigger, true_target, args, accelerator, classifier
            )

    defense, reference = make_defense(args, accelerator, model, candidate_names, classifier)
    session = CleaningSession.prepare(accelerator, model, defense, train_loader, args, tracker="clean_clip")
    state, config = session.state, defense.config
    with timer("cleaning"):
        session.run(after_step=clamp_logit_scale_)
    unchanged = check_model_changed(session, reference)

    model.eval()
    trigger_equal = trigger_identical_across_ranks(accelerator, defense.trigger_for_report())
    summary = defense.summary()
    after = None
    inverted_trigger_asr = None
    if eval_loader is not None:
        with timer("evaluate_after"):
            after = _evaluate(
                model, eval_loader, eval_data, templates, true_trigger, true_target, args, accelerator, classifier
            )
            inverted_trigger_asr = inverted_trigger_asr_of(
                defense,
                summary,
                lambda evaluated, trigger, target: _evaluate(
                    evaluated, eval_loader, eval_data, templates, trigger, target, args, accelerator, classifier
                ),
                {"before": reference, "after": model},
                eval_data.classnames,
            )
    complete = None
    if args.complete_eval:
        with timer("complete_eval"):
            complete = _complete_eval(args, accelerator, model, clean, true_trigger, true_target, eval_data, templates)
    wall_time = time.time() - start_time
    results = {
        "defense": args.defense,
        "before": before,
        "after": after,
        "inversion": inversion_report(summary),
        "inverted_trigger_asr": inverted_trigger_asr,
        "complete": complete,
        "true_target": true_target,
        "rounds": state.reports,
        "rounds_done": state.rounds_done,
        "stopped_early": session.stopped_early,
        "wall_time_s": wall_time,
        "phase_wall_time_s": phase_wall_times(timer, session),
        "peak_memory_mb": peak_memory_mb(accelerator),
        "world_size": accelerator.num_processes,
        "trigger_identical_across_ranks": trigger_equal,
        "weights_unchanged": unchanged,
        "config": {"defense": config, "recipe": vars(args), "templates": templates_name},
    }
    _write_outputs(args, accelerator, model, defense, results, clean)
    _print_summary(accelerator, results, f"{templates_name} ({len(templates)})")
    demo = (f"the backdoored demo model (reused by the next demo run): {Path(args.model).parent}",)
    finish_run(accelerator, args, OUTPUTS, notes=demo if demo_run else ())
    accelerator.end_training()
    return results


def _complete_eval(args, accelerator, model, clean, trigger, target, eval_data, templates) -> dict:
    """The tests of complete unlearning (retuning attack, re-inversion) on the cleaned model and the never-poisoned
    reference. They are small and single-process: the main process runs them, the others wait for the result."""
    from accelerate.utils import broadcast_object_list

    from clipclean.cli.common import measure_with_reference
    from clipclean.complete import complete_block
    from clipclean.evaluation import resolve_target

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


def _write_outputs(args, accelerator, model, defense, results, clean) -> None:
    from clipclean.cli.cleaning import card_metrics, write_inversion_folder
    from clipclean.cli.common import write_main_process_json
    from clipclean.hub import push_to_hub, save_pretrained

    output = Path(args.output_dir)
    if accelerator.is_main_process:
        recovered = (results["inversion"] or {}).get("recovered_target")
        write_inversion_folder(output, defense, args.defense, recovered, clean, accelerator.device)
        verdict = (results["inversion"] or {}).get("verdict")
        save_pretrained(
            model,
            output / "cleaned",
            metrics=card_metrics(results),
            provenance={
                "method": args.defense,
                "source_model": args.model,
                "verdict": verdict,
                "recovered_target": (results["inversion"] or {}).get("recovered_target"),
                "config": results["config"],
                "complete": results["complete"],  # persistence (issue 8), shown again by `clipclean scan`
            },
            card_notes=_card_note(args.defense, verdict, results["weights_unchanged"])
            + _persistence_note(results["complete"]),
            layout=args.save_layout,
            card_summary="checked with clipclean (nothing removed)" if results["weights_unchanged"] else None,
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
        )
    return f"Cleaned with clipclean's `{defense}` defense. Inversion verdict on the source model: **{verdict}**."


def _persistence_note(complete: dict | None) -> str:
    """The model card's sentence on complete unlearning (empty when it was not measured)."""
    if not complete:
        return ""
    from clipclean.complete import complete_table_rows

    rows = "; ".join(f"{name}: {value} (never-poisoned reference: {reference})" for name, value, reference in
                     complete_table_rows(complete))  # fmt: skip
    return f" Complete-unlearning tests (method.md section 3) -- {rows}."


def _print_summary(accelerator, results, templates: str) -> None:
    from clipclean.cli.cleaning import print_summary
    from clipclean.cli.common import print_table
    from clipclean.complete import complete_table_rows

    print_summary(accelerator, results, templates)
    if accelerator.is_main_process and results["complete"]:
        print_table(complete_table_rows(results["complete"]), ("complete unlearning", "cleaned", "reference"))


if __name__ == "__main__":
    sys.exit(run_cli(main))
