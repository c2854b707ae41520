"""Is the backdoor *completely* gone? The retuning attack and re-inversion (docs/evaluation.md).

* **Retuning attack**: fine-tune a copy of ``--model`` for ``--retune-steps`` steps (lr ``--retune-lr``) on
  ``max(100, 1%)`` pairs of the clean set, 10% of them carrying the true ``--trigger`` and a caption naming
  ``--target``; report the ASR afterwards (RA-ASR). A superficially cleaned model re-learns the backdoor at once;
  a completely cleaned one no faster than a never-poisoned ``--reference-model``.
* **Re-inversion**: the untargeted blind inversion on the model; its best backdoor score should be no higher than
  on the reference.

The zero-shot protocol is clipclean's one (``docs/evaluation.md``). The script runs in one process (the tests are
small); the library is :mod:`clipclean.complete`::

    python eval/complete_unlearning.py --model outputs/clean_clip/cleaned --reference-model outputs/never_poisoned \\
        --clean-data digits:defender --eval-data digits:test --trigger outputs/badnet/trigger.json --target zero \\
        --output-dir outputs/complete

Output (``--output-dir DIR`` writes ``DIR/results.json``, ``--output FILE`` the file; and printed):
``{"complete": {"ra_asr", "reference_ra_asr", "reinversion_score", "reference_score", ...}, "measured": {...},
"reference_measured": {...}, ...}``. The ``measured`` block of a reference's own run can be reused by
``recipes/clean_clip.py --complete-eval --reference-measurements FILE``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

# Only the command line is imported here, so that --help answers at once; torch and the library load in main().
from clipclean.cli.common import (
    HelpFormatter,
    add_classnames_argument,
    add_complete_eval_arguments,
    add_debug_argument,
    add_model_arguments,
    add_overwrite_argument,
    add_results_file_arguments,
    check_complete_eval_arguments,
    run_cli,
)

logger = logging.getLogger("clipclean.eval.complete_unlearning")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter, epilog=__doc__
    )
    add_model_arguments(parser, required=True)
    add_complete_eval_arguments(parser)
    data = parser.add_argument_group("data")
    data.add_argument("--clean-data", required=True, help="the defender's clean image-caption set (retuning pool)")
    data.add_argument("--max-clean-pairs", type=int, default=None, help="use the first N clean pairs only")
    data.add_argument("--eval-data", default=None, help="classification set for RA-ASR (needed with --trigger)")
    add_classnames_argument(data)
    data.add_argument(
        "--skip-bad", action="store_true", help="skip missing or undecodable images of the data (with a count)"
    )
    data.add_argument("--templates", default=None, help="zero-shot templates file (default: per data set)")
    attack = parser.add_argument_group("true trigger (for the retuning attack)")
    attack.add_argument("--trigger", default=None, help="the true trigger file; without it only re-inversion runs")
    attack.add_argument("--target", default=None, help="target class of --trigger (default: recorded in its file)")
    run = parser.add_argument_group("run")
    run.add_argument("--seed", type=int, default=0, help="seeds the retuning attack and the re-inversion")
    add_results_file_arguments(run)
    run.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    add_overwrite_argument(run, "an existing results file (--output, --output-dir)")
    add_debug_argument(run)
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.target is not None and args.trigger is None:
        parser.error("--target needs --trigger")
    if args.trigger is not None and args.eval_data is None:
        parser.error("--trigger needs --eval-data (RA-ASR is measured on it)")
    if args.reference_model is not None and args.reference_measurements is not None:
        parser.error("give --reference-model or --reference-measurements, not both")
    try:  # validate before any work
        check_complete_eval_arguments(args)
    except (OSError, TypeError, ValueError) as error:
        parser.error(str(error))
    from torch.utils.data import Subset

    from clipclean.cli.common import (
        default_templates,
        measure_with_reference,
        prepare_output_file,
        print_table,
        setup_logging,
    )
    from clipclean.complete import complete_block, complete_caveats, complete_table_rows
    from clipclean.data import load_classification_dataset, load_image_caption_dataset
    from clipclean.evaluation import resolve_target
    from clipclean.fileio import write_json
    from clipclean.models import load_clip
    from clipclean.triggers import load_trigger, read_trigger_metadata

    # before any work, not after the measurements
    prepare_output_file(args.output, overwrite=args.overwrite, flag="results file")
    setup_logging()
    started = time.time()

    model = load_clip(args.model, pretrained=args.pretrained, cache_dir=args.cache_dir)
    clean = load_image_caption_dataset(args.clean_data, image_size=model.image_size, skip_bad=args.skip_bad)
    if args.max_clean_pairs is not None:
        clean = Subset(clean, range(min(args.max_clean_pairs, len(clean))))
    eval_data = (
        load_classification_dataset(
            args.eval_data, image_size=model.image_size, classnames=args.classnames, skip_bad=args.skip_bad
        )
        if args.eval_data
        else None
    )
    templates, _ = default_templates(args.templates, args.eval_data or args.clean_data)
    classnames = list(eval_data.classnames) if eval_data is not None else []
    trigger, target = None, None
    if args.trigger is not None:
        trigger = load_trigger(args.trigger)
        target = args.target or read_trigger_metadata(args.trigger).get("metadata", {}).get("target")
        if target is None:
            parser.error(f"{args.trigger} records no target: give --target")
        try:
            target = classnames[resolve_target(target, classnames)]
        except ValueError as error:
            parser.error(str(error))

    measured, reference = measure_with_reference(args, model, clean, trigger, target, eval_data, classnames, templates)
    block = complete_block(measured, reference)
    results = {
        "complete": block,
        "measured": measured.to_dict(),
        "reference_measured": reference.to_dict() if reference is not None else None,
        "model": args.model,
        "reference_model": args.reference_model,
        "trigger": args.trigger,
        "target": target,
        "wall_time_s": time.time() - started,
    }
    print_table(complete_table_rows(block), header=("test", "model", "reference"))
    for caveat in complete_caveats(block):
        print(f"note: {caveat}")
    if args.output:
        write_json(args.output, results)
    print(f"results: {args.output}" if args.output else "results not written (--output-dir DIR writes them)")
    return results


if __name__ == "__main__":
    sys.exit(run_cli(main))
