"""Find and remove a backdoor from a CLIP: blind inversion + unlearning (BI-BAU by default), then evaluate.

Runs as a plain script or under ``accelerate launch``. With **no arguments** it runs the embedded demo: it builds
(once, cached under ``--demo-cache``) a tiny CLIP backdoored on scikit-learn's digits with a BadNet patch, then
cleans it *untargeted* on the digits defender split and evaluates on the held-out test split::

    python recipes/clean_clip.py
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \\
        --mixed_precision no --dynamo_backend no recipes/clean_clip.py --output_dir outputs/clean_demo

Your own model and data::

    accelerate launch recipes/clean_clip.py --model hf-hub:org/suspect-clip --clean-data clean_pairs.csv \\
        --eval-data /data/imagenet/val --output_dir outputs/cleaned

Output folder (``--output_dir``):

* ``cleaned/`` -- the cleaned model in open_clip Hub layout; its card carries before/after CA, ASR, the verdict;
* ``inversion/`` -- the inverted trigger (``trigger.json`` + ``.safetensors``), ``trigger.png``, ``report.json``;
* ``results.json`` -- ``{"defense", "before", "after", "inversion", "inverted_trigger_asr", "wall_time_s",
  "config", ...}`` (ASR keys are null when no true trigger is known);
* ``checkpoints/`` -- ``accelerator.save_state`` after each round; ``--resume_from_checkpoint latest`` continues.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import broadcast_object_list, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from clipclean.cli.common import (
    TrainingProgress,
    add_complete_eval_arguments,
    add_model_arguments,
    add_run_arguments,
    complete_eval_configs,
    configure_cpu_threads,
    default_templates,
    load_reference_measurements,
    make_accelerator,
    measure_with_reference,
    parse_key_values,
    resolve_resume_path,
    setup_logging,
    write_main_process_json,
)
from clipclean.complete import complete_block, complete_table_rows
from clipclean.data import load_classification_dataset, load_image_caption_dataset
from clipclean.defenses import DEFENSES, DefenseContext, build_defense
from clipclean.evaluation import evaluate_zeroshot, resolve_target, zeroshot_classifier
from clipclean.hub import push_to_hub, save_pretrained
from clipclean.models import load_clip
from clipclean.training import CaptionTokenizer, clamp_logit_scale_
from clipclean.triggers import draw_trigger, load_trigger, read_trigger_metadata, save_trigger

logger = logging.getLogger("clean_clip")

DEMO_CACHE = "outputs/demo_backdoored_badnet"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_arguments(parser)
    add_run_arguments(parser, default_output_dir="outputs/clean_clip")
    data = parser.add_argument_group("data")
    data.add_argument("--clean-data", default=None, help="the defender's clean image-caption set (demo: digits)")
    data.add_argument("--eval-data", default=None, help="classification set for CA/ASR (demo: digits test split)")
    data.add_argument("--classnames", default=None, help="class names file for --eval-data (and target candidates)")
    data.add_argument("--templates", default=None, help="zero-shot templates file (default: per data set)")
    data.add_argument("--max-clean-pairs", type=int, default=None, help="use at most N clean pairs")
    data.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")

    defense = parser.add_argument_group("defense")
    defense.add_argument("--defense", default="bibau", choices=sorted(DEFENSES))
    defense.add_argument("--target-caption", default=None, help="known target caption (absent: untargeted)")
    defense.add_argument("--eval-trigger", default=None, help="a true trigger file, to measure the real ASR")
    defense.add_argument("--eval-target", default=None, help="target class of --eval-trigger (default: its file)")
    defense.add_argument("--rounds", type=int, default=None, help="outer rounds (default: the defense's)")
    defense.add_argument("--epochs", type=int, default=None, help="epochs per round (default: the defense's)")
    defense.add_argument("--lr", type=float, default=None, help="learning rate (default: the defense's)")
    defense.add_argument("--batch-size", type=int, default=64, help="per process")
    defense.add_argument(
        "--defense-option",
        "--set",
        dest="defense_options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any field of the defense's config (JSON values), e.g. --set gamma=2 --set inversion.rounds=3",
    )
    defense.add_argument(
        "--complete-eval",
        action="store_true",
        help="after cleaning, run the tests of complete unlearning (retuning attack with the --eval-trigger, "
        "re-inversion) on the cleaned model and the reference; written to results.json under 'complete'",
    )
    add_complete_eval_arguments(parser)
    out = parser.add_argument_group("output")
    out.add_argument("--push-to-hub", default=None, metavar="REPO", help="upload cleaned/ to this Hub repo")
    out.add_argument("--demo-cache", default=DEMO_CACHE, help="where the demo's backdoored model is cached")
    args = parser.parse_args(argv)
    if args.eval_target is not None and args.eval_trigger is None:
        parser.error("--eval-target needs --eval-trigger")
    if args.reference_model is not None and args.reference_measurements is not None:
        parser.error("give --reference-model or --reference-measurements, not both")
    if not args.complete_eval and (args.reference_model or args.reference_measurements):
        parser.error("--reference-model/--reference-measurements are used by --complete-eval: add it")
    try:  # validate now, not after the defense has run
        retuning, _ = complete_eval_configs(args)
        if args.reference_measurements is not None:
            load_reference_measurements(args.reference_measurements, retuning)
    except (OSError, TypeError, ValueError) as error:
        parser.error(str(error))
    return args


def _build_demo_model(args: argparse.Namespace) -> None:
    """The embedded demo: a tiny CLIP backdoored on digits (BadNet patch, target "zero"), cached on disk."""
    cache = Path(args.demo_cache)
    if not (cache / "results.json").is_file():
        logger.info("demo: training a backdoored tiny CLIP on digits into %s (once)", cache)
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from poison_clip import main as poison_main

        poison_main(["--attack", "badnet", "--output_dir", str(cache), "--seed", str(args.seed), "--no-progress"])
    args.model = str(cache / "model")
    args.clean_data = args.clean_data or "digits:defender"
    args.eval_data = args.eval_data or "digits:test"
    args.eval_trigger = args.eval_trigger or str(cache / "trigger.json")


class RecipeState:
    """Rounds completed and the defense's state, checkpointed with ``register_for_checkpointing``."""

    def __init__(self, defense) -> None:
        self.defense = defense
        self.rounds_done = 0
        self.reports: list[dict] = []

    def state_dict(self) -> dict:
        return {
            "rounds_done": self.rounds_done,
            "reports": json.dumps(self.reports),
            "defense": self.defense.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.rounds_done = int(state["rounds_done"])
        self.reports = json.loads(state["reports"])
        self.defense.load_state_dict(state["defense"])


def _evaluate(model, loader, eval_data, templates, trigger, target, args, accelerator, classifier) -> dict:
    metrics = evaluate_zeroshot(
        model,
        loader,
        eval_data.classnames,
        templates=templates,
        trigger=trigger,
        target=target,
        seed=args.seed,
        classifier=classifier,
        gather=accelerator.gather_for_metrics,
    )
    return {"clean_accuracy": metrics["top1"], "attack_success_rate": metrics["asr_top1"], "eval": metrics}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    start_time = time.time()
    accelerator = make_accelerator(args)
    setup_logging(accelerator)
    configure_cpu_threads(accelerator)
    set_seed(args.seed)
    output = Path(args.output_dir)
    if args.model is None:
        _build_demo_model(args)
    if args.clean_data is None:
        raise SystemExit("--clean-data is required when --model is given (the defender's clean image-caption set)")

    with accelerator.main_process_first():
        model = load_clip(args.model, pretrained=args.pretrained, device=accelerator.device, cache_dir=args.cache_dir)
        clean = load_image_caption_dataset(args.clean_data, image_size=model.image_size)
        eval_data = (
            load_classification_dataset(args.eval_data, image_size=model.image_size, classnames=args.classnames)
            if args.eval_data
            else None
        )
    if args.max_clean_pairs is not None:
        clean = torch.utils.data.Subset(clean, range(min(args.max_clean_pairs, len(clean))))
    templates, templates_name = default_templates(args.templates, args.eval_data or args.clean_data)

    true_trigger, true_target = None, None
    if args.eval_trigger is not None:
        true_trigger = load_trigger(args.eval_trigger).to(accelerator.device)
        true_target = args.eval_target or read_trigger_metadata(args.eval_trigger).get("metadata", {}).get("target")
        if true_target is None:
            raise SystemExit(f"{args.eval_trigger} records no target: give --eval-target")
        if eval_data is None:
            raise SystemExit("--eval-trigger needs --eval-data to measure the ASR on")
        resolve_target(true_target, eval_data.classnames)

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
        before = _evaluate(
            model, eval_loader, eval_data, templates, true_trigger, true_target, args, accelerator, classifier
        )

    reference = model.fresh_copy().requires_grad_(False).eval()
    context = DefenseContext(
        candidate_names=candidate_names,
        candidate_embeddings=classifier,
        target_caption=args.target_caption,
        reference=reference,
        reduce_fn=lambda tensor, op: accelerator.reduce(tensor, reduction=op),
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
        progress=args.progress and accelerator.is_main_process,
    )
    overrides = {"rounds": args.rounds, "epochs": args.epochs, "lr": args.lr, **parse_key_values(args.defense_options)}
    defense = build_defense(args.defense, model, context, overrides)
    trainable = {id(p) for p in defense.trainable_parameters()}
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in trainable)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=defense.config.lr,
        weight_decay=defense.config.weight_decay,
    )
    model.train()
    wrapped, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    state = RecipeState(defense)
    accelerator.register_for_checkpointing(state, TrainingProgress(accelerator))  # the latter: checkpoint numbering
    resume_path = resolve_resume_path(args.resume_from_checkpoint, output)
    if resume_path is not None:
        accelerator.load_state(resume_path)
        logger.info("resumed from %s after %d round(s)", resume_path, state.rounds_done)
    if args.report_to:
        accelerator.init_trackers("clean_clip", config={k: v for k, v in vars(args).items() if v is not None})

    config = defense.config
    step = state.rounds_done * config.epochs * len(train_loader)
    stopped_early = False
    for round_index in range(state.rounds_done, config.rounds):
        report = defense.begin_round(round_index, train_loader)
        if report.get("stop"):  # the defense decided there is nothing to remove
            logger.info("%s: nothing to remove, model left unchanged", args.defense)
            state.rounds_done = round_index
            break
        bar = tqdm(
            total=config.epochs * len(train_loader),
            desc=f"{args.defense} round {round_index + 1}/{config.rounds}",
            disable=not context.progress,
        )
        for epoch in range(config.epochs):
            train_loader.set_epoch(round_index * config.epochs + epoch)
            for batch in train_loader:
                with accelerator.autocast():
                    losses, _ = defense.forward(wrapped, batch)
                accelerator.backward(losses["loss"])
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                clamp_logit_scale_(wrapped)
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{losses['loss'].item():.3f}")
                if args.report_to:
                    accelerator.log({f"train/{k}": float(v) for k, v in losses.items()}, step=step)
        bar.close()
        stop, end_report = defense.end_round(round_index, train_loader)
        state.reports.append(
            {"round": round_index, **end_report, **{k: v for k, v in report.items() if k != "inversion"}}
        )
        state.rounds_done = round_index + 1
        accelerator.save_state()
        if stop:
            stopped_early = round_index + 1 < config.rounds
            break

    model.eval()
    trigger_equal = _trigger_identical_across_ranks(accelerator, defense.trigger_for_report())
    summary = defense.summary()
    inversion = summary.get("inversion")
    after = None
    inverted_trigger_asr = None
    if eval_loader is not None:
        after = _evaluate(
            model, eval_loader, eval_data, templates, true_trigger, true_target, args, accelerator, classifier
        )
        inverted = defense.trigger_for_report()
        recovered = inversion.get("recovered_target") if inversion else None
        if inverted is not None and recovered in eval_data.classnames:
            inverted_trigger_asr = {
                phase: _evaluate(
                    evaluated, eval_loader, eval_data, templates, inverted, recovered, args, accelerator, classifier
                )["attack_success_rate"]
                for phase, evaluated in (("before", reference), ("after", model))
            }
            inverted_trigger_asr["target"] = recovered
    complete = None
    if args.complete_eval:
        complete = _complete_eval(args, accelerator, model, clean, true_trigger, true_target, eval_data, templates)
    wall_time = time.time() - start_time
    results = {
        "defense": args.defense,
        "before": before,
        "after": after,
        "inversion": None
        if inversion is None
        else {
            key: inversion.get(key)
            for key in (
                "verdict",
                "recovered_target",
                "target_candidates",
                "backdoor_score",
                "anomaly_index",
                "concentration",
                "hijacked_fraction",
                "candidate_asr",
                "mask_budget",
                "trigger",
            )
        },
        "inverted_trigger_asr": inverted_trigger_asr,
        "complete": complete,
        "true_target": true_target,
        "rounds": state.reports,
        "rounds_done": state.rounds_done,
        "stopped_early": stopped_early,
        "wall_time_s": wall_time,
        "peak_memory_mb": _peak_memory_mb(accelerator),
        "world_size": accelerator.num_processes,
        "trigger_identical_across_ranks": trigger_equal,
        "config": {"defense": config, "recipe": vars(args), "templates": templates_name},
    }
    _write_outputs(args, accelerator, model, defense, results, clean)
    _print_summary(accelerator, results)
    accelerator.end_training()
    return results


def _complete_eval(args, accelerator, model, clean, trigger, target, eval_data, templates) -> dict:
    """The tests of complete unlearning (retuning attack, re-inversion) on the cleaned model and the never-poisoned
    reference. They are small and single-process: the main process runs them, the others wait for the result."""
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


def _peak_memory_mb(accelerator) -> float:
    """Peak resident memory of this process (and peak GPU memory when on a GPU), in MiB."""
    import resource

    if accelerator.device.type == "cuda":
        return torch.cuda.max_memory_allocated(accelerator.device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _trigger_identical_across_ranks(accelerator, trigger) -> bool | None:
    """Whether every process holds bit-identical trigger parameters (they are all-reduced, so they must)."""
    if trigger is None:
        return None
    flat = torch.cat([p.detach().reshape(-1).double() for p in trigger.parameters()]).to(accelerator.device)
    gathered = accelerator.gather(flat[None])
    return bool((gathered == gathered[0:1]).all())


def _write_outputs(args, accelerator, model, defense, results, clean) -> None:
    output = Path(args.output_dir)
    if accelerator.is_main_process:
        inverted = defense.trigger_for_report()
        if inverted is not None:
            inversion_dir = output / "inversion"
            save_trigger(
                inverted,
                inversion_dir / "trigger",
                metadata={
                    "source": f"{args.defense} inversion",
                    "target": (results["inversion"] or {}).get("recovered_target"),
                },
            )
            examples = torch.stack([clean[i][0] for i in range(min(4, len(clean)))]).to(accelerator.device)
            draw_trigger(inverted, inversion_dir / "trigger.png", images=examples)
            from clipclean.fileio import write_json

            write_json(inversion_dir / "report.json", defense.summary())
        card_metrics = {}
        for phase in ("before", "after"):
            if results[phase] is not None:
                card_metrics[phase] = {k: results[phase][k] for k in ("clean_accuracy", "attack_success_rate")}
        verdict = (results["inversion"] or {}).get("verdict")
        save_pretrained(
            model,
            output / "cleaned",
            metrics=card_metrics,
            provenance={
                "method": args.defense,
                "source_model": args.model,
                "verdict": verdict,
                "recovered_target": (results["inversion"] or {}).get("recovered_target"),
                "config": results["config"],
            },
            card_notes=f"Cleaned with clipclean's `{args.defense}` defense. Inversion verdict on the source model: "
            f"**{verdict}**." + _persistence_note(results["complete"]),
        )
    write_main_process_json(accelerator, output / "results.json", results)
    if args.push_to_hub and accelerator.is_main_process:
        url = push_to_hub(output / "cleaned", args.push_to_hub)
        logger.info("pushed to %s", url)


def _persistence_note(complete: dict | None) -> str:
    """The model card's sentence on complete unlearning (empty when it was not measured)."""
    if not complete:
        return ""
    rows = "; ".join(f"{name}: {value} (never-poisoned reference: {reference})" for name, value, reference in
                     complete_table_rows(complete))  # fmt: skip
    return f" Complete-unlearning tests (method.md section 3) -- {rows}."


def _print_summary(accelerator, results) -> None:
    if not accelerator.is_main_process:
        return
    from clipclean.cli.common import print_table

    def percent(value):
        return "n/a" if value is None else f"{100 * value:.1f}%"

    rows = []
    for phase in ("before", "after"):
        if results[phase] is not None:
            rows.append(
                (phase, percent(results[phase]["clean_accuracy"]), percent(results[phase]["attack_success_rate"]))
            )
    if rows:
        print_table(rows, ("model", "clean accuracy", "attack success rate"))
    inversion = results["inversion"]
    if inversion:
        print(
            f"verdict: {inversion['verdict']}  recovered target: {inversion['recovered_target']}  "
            f"anomaly index: {inversion['anomaly_index']}"
        )
    if results["complete"]:
        print_table(complete_table_rows(results["complete"]), ("complete unlearning", "cleaned", "reference"))


if __name__ == "__main__":
    main(sys.argv[1:])
