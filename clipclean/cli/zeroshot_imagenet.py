"""Zero-shot clean accuracy (CA) and attack success rate (ASR) of a CLIP, by clipclean's one protocol.

The protocol (``docs/evaluation.md``) lives in
:mod:`clipclean.evaluation`; this script only owns the command line, the ``Accelerator``, the data loader and
the output file.

* CA: top-1 / top-5 zero-shot accuracy on clean images, with a classifier built from the 80 OpenAI ImageNet
  templates (or ``--templates``) and the dataset's class names. The recipes measure the built-in digits with the
  digit caption templates instead, so the same model's CA can differ slightly here (docs/evaluation.md).
* ASR (with ``--trigger`` and ``--target``): the trigger, loaded from a clipclean trigger file, is applied to
  every image whose label is not the target, after resizing to the model's input size; ASR is the fraction
  predicted as the target (top-1, and top-10: the target among the 10 highest logits). The printed table leaves
  out a top-k with k at least the number of classes (100% by construction); the results file keeps every key.

Single process::

    python eval/zeroshot_imagenet.py --model ViT-B-32 --pretrained laion2b_s34b_b79k \
        --data /data/imagenet --split val --trigger out/trigger.json --target banana --output-dir outputs/eval

Several processes (each evaluates a shard; predictions are gathered with ``gather_for_metrics``)::

    accelerate launch --num_processes 4 eval/zeroshot_imagenet.py --model ... --data ... --output-dir outputs/eval

Two CPU processes (what the tests run)::

    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \
        --mixed_precision no --dynamo_backend no eval/zeroshot_imagenet.py --model clipclean-tiny --data digits
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

# Only the command line is imported here, so that --help answers at once; torch and the library load in main().
from clipclean.cli.common import (
    HelpFormatter,
    add_classnames_argument,
    add_debug_argument,
    add_model_arguments,
    add_overwrite_argument,
    add_results_file_arguments,
    run_cli,
)

logger = logging.getLogger("clipclean.eval.zeroshot_imagenet")

DEFAULT_TEMPLATES = "openai_imagenet"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Zero-shot clean accuracy (top-1/top-5) and attack success rate (top-1/top-10) of a CLIP.",
        formatter_class=HelpFormatter,
    )
    add_model_arguments(parser, required=True)
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        required=True,
        help="'digits[:split]', an ImageNet-style synset folder tree, or a folder with one sub-folder per class",
    )
    data.add_argument("--split", default=None, help="digits split, or a sub-folder of --data such as 'val'")
    add_classnames_argument(data)
    data.add_argument(
        "--templates",
        default=None,
        help="prompt templates file (JSON list or one per line, '{c}' where the class name goes); "
        "default: the 80 OpenAI ImageNet templates",
    )
    data.add_argument("--skip-bad", action="store_true", help="drop undecodable images instead of failing")
    attack = parser.add_argument_group("attack (ASR)")
    attack.add_argument(
        "--trigger", default=None, help="a clipclean trigger file (NAME.json next to NAME.safetensors)"
    )
    attack.add_argument("--target", default=None, help="target class: a class name (case-insensitive) or an index")
    run = parser.add_argument_group("run")
    run.add_argument("--batch-size", type=int, default=256, help="images per process and step")
    run.add_argument("--num-workers", type=int, default=0, help="data loader worker processes")
    run.add_argument("--seed", type=int, default=0, help="seed of random trigger placement")
    add_results_file_arguments(run)
    run.add_argument(
        "--mixed-precision",
        "--mixed_precision",
        dest="mixed_precision",
        default=None,
        choices=["no", "fp16", "bf16"],
        help="GPU only; ignored on CPU",
    )
    run.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    add_overwrite_argument(run, "an existing results file (--output, --output-dir)")
    add_debug_argument(run)
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.trigger is not None and args.target is None:
        parser.error("--trigger needs --target (the class the backdoor maps to)")
    if args.target is not None and args.trigger is None:
        parser.error("--target needs --trigger (ASR is measured on triggered images)")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    return args, parser


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def headline_rows(results: dict[str, Any]) -> list[tuple[str, str]]:
    """The printed table: CA and ASR top-1, and top-5 / top-10 only when there are more classes than k (with k or
    fewer classes, top-k holds every class and is 100% by construction; results.json keeps every key), then the
    template set the classifier was built from."""
    classes = results["n_classes"]
    rows = [("CA top-1 (%)", _percent(results["top1"]))]
    if classes > 5:
        rows.append(("CA top-5 (%)", _percent(results["top5"])))
    rows.append(("ASR top-1 (%)", _percent(results["asr_top1"])))
    if classes > 10 and results["asr_top1"] is not None:
        rows.append(("ASR top-10 (%)", _percent(results["asr_top10"])))
    rows.append(("images (ASR images)", f"{results['n_images']} ({results['n_asr_images']})"))
    rows.append(("templates", f"{results['templates']} ({results['n_templates']})"))
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Evaluate and return the results (on every process); the main process prints them and writes ``--output``."""
    args, parser = parse_args(argv)
    from torch.utils.data import DataLoader

    from clipclean.cli.common import (
        make_accelerator,
        prepare_output_file,
        print_table,
        setup_logging,
        write_main_process_json,
    )
    from clipclean.data import collate_pairs, load_classification_dataset
    from clipclean.evaluation import evaluate_zeroshot, load_templates, resolve_target, zeroshot_classifier
    from clipclean.models import load_clip
    from clipclean.triggers import load_trigger

    # before any work, not after the evaluation
    prepare_output_file(args.output, overwrite=args.overwrite, flag="results file")
    output_dir = Path(args.output).parent if args.output else Path(".")
    accelerator = make_accelerator(
        argparse.Namespace(output_dir=str(output_dir), mixed_precision=args.mixed_precision, report_to=None)
    )
    setup_logging(accelerator)

    with accelerator.main_process_first():  # downloads and caches happen once
        model = load_clip(args.model, pretrained=args.pretrained, device=accelerator.device, cache_dir=args.cache_dir)
        dataset = load_classification_dataset(
            args.data,
            image_size=model.image_size,
            classnames=args.classnames,
            split=args.split,
            skip_bad=args.skip_bad,
        )
    templates = load_templates(args.templates)

    trigger, target_index = None, None
    if args.trigger is not None:
        trigger = load_trigger(args.trigger).to(accelerator.device)
        if trigger.image_size != model.image_size:
            parser.error(
                f"the trigger is defined for {trigger.image_size} images but the model takes {model.image_size}: "
                "triggers are applied after resizing to the model's input size"
            )
        try:
            target_index = resolve_target(args.target, dataset.classnames)
        except ValueError as error:
            parser.error(str(error))
    logger.info(
        "Evaluating %s on %s (%d images, %d classes, %d templates) on %d process(es)",
        args.model,
        dataset,
        len(dataset),
        len(dataset.classnames),
        len(templates),
        accelerator.num_processes,
    )

    loader = DataLoader(
        dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.num_workers, collate_fn=collate_pairs
    )
    loader = accelerator.prepare(loader)
    with accelerator.autocast():
        classifier = zeroshot_classifier(model, dataset.classnames, templates)
        metrics = evaluate_zeroshot(
            model,
            loader,
            dataset.classnames,
            trigger=trigger,
            target=target_index,
            seed=args.seed,
            classifier=classifier,
            gather=accelerator.gather_for_metrics,
            progress=args.progress and accelerator.is_main_process,
        )

    results: dict[str, Any] = {
        **metrics,
        "model": args.model,
        "pretrained": args.pretrained,
        "data": args.data,
        "split": args.split,
        "n_classes": len(dataset.classnames),
        "templates": args.templates or DEFAULT_TEMPLATES,
        "n_templates": len(templates),
        "trigger": args.trigger,
        "target": dataset.classnames[target_index] if target_index is not None else None,
        "target_index": target_index,
        "seed": args.seed,
        "world_size": accelerator.num_processes,
    }
    if accelerator.is_main_process:
        print_table(headline_rows(results), header=("metric", "value"))
    if args.output:
        write_main_process_json(accelerator, args.output, results)
    if accelerator.is_main_process:
        print(f"results: {args.output}" if args.output else "results not written (--output-dir DIR writes them)")
    accelerator.end_training()
    return results


if __name__ == "__main__":
    sys.exit(run_cli(main))
