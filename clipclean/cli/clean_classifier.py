"""Find and remove a backdoor from an image classifier: blind inversion + unlearning (BI-BAU by default), evaluate.

The classifier counterpart of ``recipes/clean_clip.py`` (same flags and outputs where they apply; the same
inverter, defenses, loop and evaluation: a classifier is the degenerate case, see :mod:`clipclean.classifiers`).
Runs as a plain script or under ``accelerate launch``. With **no arguments** it runs the embedded demo: it trains
(once, cached under ``--demo-cache``) a small CNN backdoored on scikit-learn's digits with a BadNet patch, then
cleans it *untargeted* on the digits defender split and evaluates on the held-out test split::

    python recipes/clean_classifier.py
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \\
        --mixed_precision no --dynamo_backend no recipes/clean_classifier.py --output-dir outputs/clean_cnn

The demo cleans with ``--rounds 3 --epochs 20 --lr 2e-3 --set unlearning_budget=0.1 --set reinversion_steps=100``
(BI-BAU's defaults are tuned for CLIP fine-tuning; measurements in ``benchmarks/classifier.md``).

Your own model and data (``--model``: a folder written by ``clipclean.classifiers.save_classifier`` or
``recipes/poison_classifier.py``, or any CLIP identifier, which gets a zero-shot head over the evaluation classes;
``--clean-data``/``--eval-data``: ``digits[:split]`` or a class-per-folder tree)::

    accelerate launch recipes/clean_classifier.py --model outputs/my_cnn/model --clean-data /data/clean_subset \\
        --eval-data /data/val --output-dir outputs/cleaned_cnn
    python recipes/clean_classifier.py --model hf-hub:org/suspect-clip --clean-data /data/clean --eval-data /data/val

Output folder (``--output-dir``, also spelt ``--output_dir``; the run ends by printing what it wrote there):

* ``cleaned/`` -- the cleaned classifier (``clipclean_classifier.json`` + ``model.safetensors``; a CLIP is saved in
  open_clip Hub layout with a model card);
* ``inversion/`` -- the inverted trigger (``trigger.json`` + ``.safetensors``), ``trigger.png``, ``report.json``;
* ``results.json`` -- ``{"defense", "before", "after", "inversion", "inverted_trigger_asr", "wall_time_s",
  "world_size", "config", ...}``: clean accuracy, ASR (null without a true trigger), verdict, recovered target class;
* ``checkpoints/`` -- ``accelerator.save_state`` after each round; ``--resume_from_checkpoint latest`` continues an
  interrupted run. A run that finishes deletes them unless ``--keep-checkpoints``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

# Only the command line is imported here, so that --help answers at once; torch and the library load in main().
from clipclean.cli.common import (
    add_defense_arguments,
    add_trust_code_argument,
    check_cleaning_arguments,
    make_cleaning_parser,
    run_cli,
)

logger = logging.getLogger("clean_classifier")

DEMO_CACHE = "outputs/demo_backdoored_cnn_badnet"
# A CNN trained from scratch needs larger unlearning steps than a CLIP fine-tune, and its tiny BadNet trigger is named
# at the smallest mask budget but unlearned better at a larger one (benchmarks/classifier.md): the demo's settings.
DEMO_SETTINGS = {"rounds": 3, "epochs": 20, "lr": 2e-3}
DEMO_BIBAU_OPTIONS = ["unlearning_budget=0.1", "reinversion_steps=100"]


OUTPUTS = {
    "cleaned": "the cleaned classifier (a CLIP: open_clip Hub layout, model card)",
    "inversion": "the inverted trigger (trigger.png, trigger.json) and the defense's report",
    "results.json": "clean accuracy and ASR before/after, the verdict, the configs, wall times",
}


def build_parser() -> argparse.ArgumentParser:
    parser = make_cleaning_parser(
        __doc__, "outputs/clean_classifier", "the defender's clean labelled images (demo: digits)"
    )

    add_defense_arguments(parser, target_flags=("--target-class", "--target-caption"))
    out = parser.add_argument_group("output")
    out.add_argument("--demo-cache", default=DEMO_CACHE, help="where the demo's backdoored CNN is cached")
    add_trust_code_argument(parser)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.eval_target is not None and args.eval_trigger is None:
        parser.error("--eval-target needs --eval-trigger")
    check_cleaning_arguments(args)
    return args


def _build_demo_model(args: argparse.Namespace) -> None:
    """The embedded demo: a small CNN backdoored on digits (BadNet patch, target "zero"), cached on disk."""
    from clipclean.cli import poison_classifier
    from clipclean.cli.cleaning import prepare_demo

    prepare_demo(args, poison_classifier.main, "a backdoored small CNN")
    for name, value in DEMO_SETTINGS.items():
        setattr(args, name, value if getattr(args, name) is None else getattr(args, name))
    if args.defense == "bibau":
        args.defense_options = [*DEMO_BIBAU_OPTIONS, *args.defense_options]


def _load_model_and_data(args, device) -> tuple[Any, Any, Any, Any, list[str] | None]:
    """``(classifier, clip or None, clean data, eval data or None, templates)``: a saved classifier, or a CLIP with
    a zero-shot head over the data's classes."""
    from clipclean.classifiers import ImageClassifier, is_classifier_directory, load_classifier
    from clipclean.cli.common import default_templates
    from clipclean.data import load_classification_dataset
    from clipclean.models import load_clip

    clip = None
    if is_classifier_directory(args.model):
        model = load_classifier(args.model, device, trust_code=args.trust_architecture_code)
        image_size = model.image_size
    else:
        clip = load_clip(args.model, pretrained=args.pretrained, device=device, cache_dir=args.cache_dir)
        image_size = clip.image_size
    clean = load_classification_dataset(
        args.clean_data, image_size=image_size, classnames=args.classnames, skip_bad=args.skip_bad
    )
    eval_data = (
        load_classification_dataset(
            args.eval_data, image_size=image_size, classnames=args.classnames, skip_bad=args.skip_bad
        )
        if args.eval_data
        else None
    )
    templates = None
    if clip is not None:
        templates = default_templates(args.templates, args.eval_data or args.clean_data)[0]
        model = ImageClassifier.from_clip(clip, (eval_data or clean).classnames, templates).to(device)
    for data in (clean, eval_data):
        if data is not None and list(data.classnames) != model.classnames:
            raise SystemExit(
                f"{data.source} has classes {data.classnames[:5]}... but the model {model.classnames[:5]}..."
            )
    return model, clip, clean, eval_data, templates


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the recipe (``argv``: command-line arguments; none: the demo) and return the ``results.json`` dict.

    Example::

        >>> results = main(["--model", "outputs/cnn_badnet/model", "--clean-data", "digits:defender"])
        >>> results["inversion"]["verdict"], results["inversion"]["recovered_target"]
        ('backdoored', 'zero')
    """
    args = parse_args(argv)
    import torch
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader

    from clipclean.cli.cleaning import (
        CleaningSession,
        check_model_changed,
        evaluate_phase,
        inversion_report,
        inverted_trigger_asr,
        load_eval_trigger,
        make_defense,
        peak_memory_mb,
        phase_wall_times,
        prepare_cleaning_output,
        print_summary,
        trigger_identical_across_ranks,
    )
    from clipclean.cli.common import configure_cpu_threads, finish_run, make_accelerator, setup_logging
    from clipclean.data import collate_pairs
    from clipclean.timing import PhaseTimer

    prepare_cleaning_output(args)  # before any work: a used or unwritable folder fails now, not after the cleaning
    start_time = time.time()
    accelerator = make_accelerator(args)
    setup_logging(accelerator, "clean_classifier")
    configure_cpu_threads(accelerator)
    set_seed(args.seed)
    demo_run = args.model is None
    if demo_run:
        _build_demo_model(args)  # every process: the poison recipe trains with all of them
    if args.clean_data is None:
        raise SystemExit("--clean-data is required when --model is given (the defender's clean labelled images)")

    timer = PhaseTimer()
    with timer("load"), accelerator.main_process_first():
        model, clip, clean, eval_data, templates = _load_model_and_data(args, accelerator.device)
    if args.max_clean_pairs is not None:
        clean = torch.utils.data.Subset(clean, range(min(args.max_clean_pairs, len(clean))))
    true_trigger, true_target = load_eval_trigger(
        args.eval_trigger, args.eval_target, eval_data, accelerator.device, image_size=model.image_size
    )
    model.eval()
    classnames, classifier = model.classnames, model.class_embeddings

    eval_loader = DataLoader(eval_data, batch_size=256, shuffle=False) if eval_data is not None else None
    train_loader = DataLoader(
        clean,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=len(clean) >= 2 * args.batch_size,
        num_workers=args.workers,
        collate_fn=collate_pairs,
        generator=torch.Generator().manual_seed(args.seed),
    )
    evaluate = None
    before = None
    if eval_loader is not None:
        eval_loader = accelerator.prepare(eval_loader)
        evaluate = partial(
            evaluate_phase,
            loader=eval_loader,
            classnames=classnames,
            classifier=classifier,
            accelerator=accelerator,
            seed=args.seed,
            progress=args.progress,
        )
        with timer("evaluate_before"):
            before = evaluate(model, trigger=true_trigger, target=true_target)

    defense, reference = make_defense(args, accelerator, model, classnames, classifier)
    session = CleaningSession.prepare(accelerator, model, defense, train_loader, args, tracker="clean_classifier")
    with timer("cleaning"):
        session.run()
    unchanged = check_model_changed(session, reference)

    model.eval()
    summary = defense.summary()
    after = inverted_asr = None
    if evaluate is not None:
        with timer("evaluate_after"):
            after = evaluate(model, trigger=true_trigger, target=true_target)
            inverted_asr = inverted_trigger_asr(
                defense,
                summary,
                lambda evaluated, trigger, target: evaluate(evaluated, trigger=trigger, target=target),
                {"before": reference, "after": model},
                classnames,
            )
    results = {
        "defense": args.defense,
        "before": before,
        "after": after,
        "inversion": inversion_report(summary),
        "inverted_trigger_asr": inverted_asr,
        "true_target": true_target,
        "rounds": session.state.reports,
        "rounds_done": session.state.rounds_done,
        "stopped_early": session.stopped_early,
        "wall_time_s": time.time() - start_time,
        "phase_wall_time_s": phase_wall_times(timer, session),
        "peak_memory_mb": peak_memory_mb(accelerator),
        "world_size": accelerator.num_processes,
        "trigger_identical_across_ranks": trigger_identical_across_ranks(accelerator, defense.trigger_for_report()),
        "weights_unchanged": unchanged,
        "config": {"defense": defense.config, "recipe": vars(args), "templates": templates},
    }
    _write_outputs(args, accelerator, model, clip, defense, results, clean)
    print_summary(accelerator, results)
    demo = (f"the backdoored demo model (reused by the next demo run): {Path(args.model).parent}",)
    finish_run(accelerator, args, OUTPUTS, notes=demo if demo_run else ())
    accelerator.end_training()
    return results


def _write_outputs(args, accelerator, model, clip, defense, results, clean) -> None:
    from clipclean.classifiers import save_classifier
    from clipclean.cli.cleaning import card_metrics, write_inversion_folder
    from clipclean.cli.common import write_main_process_json
    from clipclean.hub import save_pretrained

    output = Path(args.output_dir)
    if accelerator.is_main_process:
        recovered = (results["inversion"] or {}).get("recovered_target")
        write_inversion_folder(output, defense, args.defense, recovered, clean, accelerator.device)
        provenance = {
            "method": args.defense,
            "source_model": args.model,
            "verdict": (results["inversion"] or {}).get("verdict"),
            "recovered_target": recovered,
            "metrics": card_metrics(results),
            "config": results["config"],
        }
        if clip is None:
            save_classifier(model, output / "cleaned", metadata=provenance)
        else:
            save_pretrained(
                clip,
                output / "cleaned",
                metrics=provenance.pop("metrics"),
                provenance=provenance,
                card_notes=(
                    f"Checked as a zero-shot classifier with clipclean's `{args.defense}` defense, which found "
                    "nothing to remove: the weights are the source model's, unchanged."
                    if results["weights_unchanged"]
                    else f"Image tower cleaned as a zero-shot classifier with clipclean's `{args.defense}` defense."
                ),
                card_summary="checked with clipclean (nothing removed)" if results["weights_unchanged"] else None,
            )
    write_main_process_json(accelerator, output / "results.json", results)


if __name__ == "__main__":
    sys.exit(run_cli(main))
