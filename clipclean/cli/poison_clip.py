"""Train a backdoored CLIP: poison image-caption data with an attack, then train (or fine-tune) on it.

Runs as a plain script or under ``accelerate launch``; the defaults are the tiny digits demo (a ``clipclean-tiny``
CLIP trained from scratch on scikit-learn's digits, target class "zero")::

    python recipes/poison_clip.py --attack badnet --output-dir outputs/badnet
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \\
        --mixed_precision no --dynamo_backend no recipes/poison_clip.py --attack blended --output-dir outputs/blended

Fine-tune a real CLIP instead: ``--model ViT-B-32 --pretrained laion2b_s34b_b79k --train-data data/cc3m.csv
--eval-data /data/imagenet --target banana --epochs 10 --lr 1e-5 --batch-size 128``. With webdataset shards
(``--train-data "data/cc3m-{0000..0331}.tar"``) the training data is streamed: each process reads its own slice of
the shards (see ``clipclean.webdataset.ShardStream``), each sample once per epoch.

Output folder (``--output-dir``, also spelt ``--output_dir``; the run ends by printing what it wrote there):

* ``model/`` -- the backdoored model in open_clip Hub layout (``clipclean.json`` sidecar records the attack);
* ``trigger.json`` + ``trigger.safetensors`` + ``trigger.png`` -- the true trigger (``clipclean.load_trigger``);
* ``poison_manifest.json`` -- which pairs were poisoned, with which captions, from which seed;
* ``results.json`` -- clean zero-shot accuracy and attack success rate on the evaluation set (clipclean's protocol),
  the configs, wall time and world size;
* ``checkpoints/`` -- ``accelerator.save_state`` folders; ``--resume_from_checkpoint latest`` continues an
  interrupted run. A run that finishes deletes them unless ``--keep-checkpoints``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Only the command line is imported here, so that --help answers at once; torch and the library load in main().
from clipclean.cli.catalogue import attack_defaults, attack_names, describe_defaults
from clipclean.cli.common import (
    HelpFormatter,
    add_batch_size_arguments,
    add_classnames_argument,
    add_model_arguments,
    add_run_arguments,
    add_trigger_arguments,
    check_poison_arguments,
    run_cli,
)
from clipclean.cli.smoke import smoke_arguments

if TYPE_CHECKING:
    from clipclean.poisoning import PoisonManifest

logger = logging.getLogger("poison_clip")

TRIGGER_NAME = "trigger"
MANIFEST_FILENAME = "poison_manifest.json"
RESULTS_FILENAME = "results.json"
SAMPLE_KEYS_FILENAME = "sample_keys.jsonl"
BATCH_SIZE = 128  # --batch-size default (per process)
OUTPUTS = {
    "model": "the backdoored model (open_clip Hub layout, model card)",
    f"{TRIGGER_NAME}.png": f"the true trigger, drawn ({TRIGGER_NAME}.json + .safetensors: the trigger itself)",
    MANIFEST_FILENAME: "which pairs were poisoned, with which captions",
    RESULTS_FILENAME: "clean accuracy, attack success rate, convergence, the configs",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    add_model_arguments(parser)
    parser.set_defaults(model="clipclean-tiny")
    add_run_arguments(parser, default_output_dir="outputs/poison_clip")

    data = parser.add_argument_group("data")
    data.add_argument(
        "--train-data",
        default="digits",
        help="image-caption source to poison (default: digits train); webdataset shards "
        "('data/shard-{000..009}.tar') are streamed",
    )
    data.add_argument(
        "--skip-bad", action="store_true", help="skip missing or undecodable pairs of --train-data (with a count)"
    )
    data.add_argument("--shuffle-buffer", type=int, default=1000, help="shuffle buffer of streamed shards (samples)")
    data.add_argument(
        "--record-sample-keys",
        action="store_true",
        help="streamed shards: write the keys every process trained on, per epoch, to OUTPUT_DIR/sample_keys.jsonl",
    )
    data.add_argument("--eval-data", default="digits", help="classification set for CA/ASR (default: digits test)")
    add_classnames_argument(data)
    data.add_argument(
        "--templates",
        default=None,
        help="zero-shot templates file for evaluation (default: the digit caption templates for the digits set, "
        "else the 80 OpenAI ImageNet templates)",
    )

    attack = parser.add_argument_group("attack (unset values take the attack's defaults)")
    attack.add_argument("--attack", default="badnet", choices=attack_names(), help="the poisoning attack")
    attack.add_argument("--target", default="zero", help="target class name (must be a class of --eval-data)")
    amount = attack.add_mutually_exclusive_group()
    amount.add_argument(
        "--poison-rate",
        type=float,
        default=None,
        help="fraction of pairs poisoned (default, per attack: "
        f"{describe_defaults(attack_defaults('default_poison_rate'))})",
    )
    amount.add_argument("--poison-count", type=int, default=None, help="number of poisoned pairs (0: clean run)")
    add_trigger_arguments(attack, "badnet, badclip")
    attack.add_argument(
        "--caption-templates",
        default=None,
        help="templates file for the poisoned captions (default: those matching the training captions: the digit "
        "caption templates for the digits set; for a model trained from scratch, the templates the training "
        "captions are made from; else the 80 OpenAI ImageNet templates)",
    )
    attack.add_argument("--badclip-steps", type=int, default=None, help="patch optimisation steps (badclip)")
    attack.add_argument(
        "--victim-model",
        default=None,
        help="model whose embeddings guide the BadCLIP patch (default: the model being trained, as loaded)",
    )

    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=int, default=40, help="passes over the training data")
    train.add_argument("--max-steps", type=int, default=None, help="total optimisation steps (overrides --epochs)")
    add_batch_size_arguments(train, BATCH_SIZE, "training pairs")
    train.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW, cosine schedule)")
    train.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay")
    train.add_argument("--warmup-steps", type=int, default=50, help="linear warm-up steps")
    train.add_argument(
        "--grad-clip",
        type=float,
        default=1.0,
        help="clip the global gradient norm to this before each step (0: no clipping; see docs/attacks.md)",
    )
    train.add_argument(
        "--min-clean-accuracy",
        type=float,
        default=None,
        help="clean accuracy a run needs to count as converged (default: 5x chance, or halfway from chance to 1 "
        "when lower: 0.5 on digits)",
    )
    train.add_argument(
        "--min-asr",
        type=float,
        default=0.5,
        help="attack success rate a poisoned run needs to count as converged",
    )
    train.add_argument(
        "--full-asr",
        type=float,
        default=0.9,
        help="attack success rate under which a converged poisoned run is flagged as a partial backdoor (a warning "
        'and "partial_backdoor": true in results.json)',
    )
    train.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    train.add_argument("--stop_after_steps", type=int, default=None, help=argparse.SUPPRESS)  # tests: interrupt
    args = parser.parse_args(argv)
    check_poison_arguments(args, BATCH_SIZE)
    if not args.grad_clip >= 0:
        parser.error(f"--grad-clip must be >= 0 (0: no clipping), got {args.grad_clip}")
    for flag, value in (
        ("--min-clean-accuracy", args.min_clean_accuracy),
        ("--min-asr", args.min_asr),
        ("--full-asr", args.full_asr),
    ):
        if value is not None and not 0 <= value <= 1:
            parser.error(f"{flag} must lie in [0, 1], got {value}")
    if args.full_asr < args.min_asr:
        parser.error(f"--full-asr ({args.full_asr}) must be at least --min-asr ({args.min_asr})")
    return smoke_arguments(args)  # CLIPCLEAN_SMOKE: tiny run lengths


def _trained_from_scratch(args) -> bool:
    """Whether ``--model`` starts from random weights: a config name without ``--pretrained``."""
    named_weights = str(args.model).startswith(("hf-hub:", "local-dir:")) or Path(args.model).is_dir()
    return args.pretrained is None and not named_weights


def _poison_caption_templates(args, train, classnames) -> list[str]:
    """The templates of the poisoned captions: ``--caption-templates``; else, for a CLIP trained from scratch on
    data other than the digits, the templates the clean captions are made from (those naming a class of the
    evaluation set, the class name replaced by ``{}``: a text encoder that meets another caption style only in the
    poisoned pairs binds the trigger to that style, not to the target); else the digit caption templates for the
    digits and the 80 OpenAI ImageNet templates otherwise (the literature's default, right for a pretrained CLIP)."""
    from clipclean.cli.common import default_templates
    from clipclean.poisoning import caption_templates_from_captions

    is_digits = str(args.train_data).split(":")[0] == "digits"
    if args.caption_templates is None and not is_digits and _trained_from_scratch(args):
        own = caption_templates_from_captions(getattr(train, "captions", []), classnames)
        if own:
            logger.info("poisoned captions: %d templates taken from the training captions", len(own))
            return own
        logger.warning(
            "training from scratch, but no training caption names a class of --eval-data: the poisoned captions use "
            "the OpenAI ImageNet templates, a caption style the model meets only in the poisoned pairs (pass "
            "--caption-templates)"
        )
    return default_templates(args.caption_templates, args.train_data)[0]


def _prepare_poison(args, accelerator, model, train, classnames) -> tuple[Any, PoisonManifest, dict]:
    """Build the attack and the manifest on the main process (or reuse them when resuming); every rank loads the
    same trigger and manifest from the output folder."""
    import torch

    from clipclean.attacks import AttackContext, build_attack, make_attack_config
    from clipclean.cli.common import attack_overrides
    from clipclean.cli.smoke import smoke_config
    from clipclean.models import load_clip
    from clipclean.poisoning import PoisonManifest, make_poison_manifest
    from clipclean.triggers import draw_trigger, load_trigger, read_trigger_metadata, save_trigger

    output = Path(args.output_dir)
    trigger_path, manifest_path = output / f"{TRIGGER_NAME}.json", output / MANIFEST_FILENAME
    reuse = args.resume_from_checkpoint is not None and trigger_path.is_file() and manifest_path.is_file()
    if accelerator.is_main_process and not reuse:
        overrides = {
            **attack_overrides(args),
            "steps": args.badclip_steps,
            "templates": _poison_caption_templates(args, train, classnames),
        }
        config = smoke_config(make_attack_config(args.attack, **overrides))  # CLIPCLEAN_SMOKE: BadCLIP's steps
        # attacks that optimise their trigger (badclip) use the victim; the others ignore it
        victim = load_clip(args.victim_model, device=accelerator.device) if args.victim_model else model
        context = AttackContext(model.image_size, dataset=train, model=victim)
        attack = build_attack(args.attack, config, context)
        default = args.poison_rate is None and args.poison_count is None
        rate = config.default_poison_rate if default else args.poison_rate
        manifest = make_poison_manifest(
            train.captions,
            attack.caption_policy,
            n_poison=args.poison_count,
            rate=rate,
            seed=args.seed,
            attack=args.attack,
            source=str(getattr(train, "source", args.train_data)),
        )
        description = {**attack.describe(), "report": attack.report}
        save_trigger(attack.trigger, output / TRIGGER_NAME, metadata={"attack": description, "target": args.target})
        examples = manifest.indices[:4] or list(range(min(4, len(train))))
        examples = torch.stack([train[i][0] for i in examples])
        title = f"true trigger ({args.attack} attack)"
        draw_trigger(attack.trigger, output / f"{TRIGGER_NAME}.png", images=examples, title=title, target=args.target)
        manifest.save(manifest_path)
    elif reuse:
        logger.info("resuming: reusing the trigger and poison manifest in %s (attack flags are ignored)", output)
    accelerator.wait_for_everyone()
    trigger = load_trigger(trigger_path)
    manifest = PoisonManifest.load(manifest_path)
    description = read_trigger_metadata(trigger_path)["metadata"]["attack"]
    return trigger, manifest, description


def _record_sample_keys(accelerator, output: Path, epoch: int, keys: list, fresh: bool) -> None:
    """Write ``{"epoch", "rank", "keys"}`` lines for every process to ``OUTPUT_DIR/sample_keys.jsonl`` (appending,
    unless ``fresh``)."""
    from accelerate.utils import gather_object

    per_rank = gather_object([list(keys)])
    if accelerator.is_main_process:
        with (output / SAMPLE_KEYS_FILENAME).open("w" if fresh else "a", encoding="utf-8") as f:
            for rank, rank_keys in enumerate(per_rank):
                f.write(json.dumps({"epoch": epoch, "rank": rank, "keys": rank_keys}) + "\n")
    accelerator.wait_for_everyone()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader

    from clipclean.cli.common import (
        CHECKPOINTS_FOLDER,
        RunCheckpoints,
        TrainingProgress,
        check_poison_inputs,
        configure_cpu_threads,
        default_templates,
        finish_run,
        log_batch_sizes,
        make_accelerator,
        prepare_output_dir,
        resolve_batch_sizes,
        setup_logging,
        stop_if_diverged,
        write_main_process_json,
    )
    from clipclean.cli.loaders import StreamingLoader, is_streamable
    from clipclean.data import load_classification_dataset, load_image_caption_dataset
    from clipclean.evaluation import evaluate_zeroshot
    from clipclean.hub import save_pretrained
    from clipclean.models import load_clip, unwrap
    from clipclean.poisoning import PoisonedDataset
    from clipclean.training import (
        CaptionTokenizer,
        ConvergenceCriterion,
        LoopState,
        TrainingMonitor,
        clamp_logit_scale_,
        contrastive_step,
        cosine_schedule_with_warmup,
        make_clip_loss,
        make_optimizer,
        train_steps,
    )

    prepare_output_dir(  # before any work: a used or unwritable folder fails now, not after the training
        args.output_dir,
        overwrite=args.overwrite,
        resume=args.resume_from_checkpoint,
        results=(RESULTS_FILENAME, CHECKPOINTS_FOLDER, f"{TRIGGER_NAME}.json", MANIFEST_FILENAME),
        model_folders=("model",),
    )
    start_time = time.time()
    accelerator = make_accelerator(args)
    setup_logging(accelerator)
    threads = configure_cpu_threads(accelerator)
    set_seed(args.seed)
    output = Path(args.output_dir)
    logger.info("%d process(es) on %s, %d thread(s) each", accelerator.num_processes, accelerator.device, threads)
    batch = resolve_batch_sizes(args, accelerator.num_processes)  # --global-batch-size: args.batch_size per process

    with accelerator.main_process_first():  # downloads and dataset preparation happen once
        model = load_clip(args.model, pretrained=args.pretrained, device=accelerator.device, cache_dir=args.cache_dir)
        train = load_image_caption_dataset(args.train_data, image_size=model.image_size, skip_bad=args.skip_bad)
        eval_data = load_classification_dataset(
            args.eval_data, image_size=model.image_size, classnames=args.classnames
        )
    templates, templates_name = default_templates(args.templates, args.eval_data)
    check_poison_inputs(args, model.image_size, len(train), eval_data.classnames, accelerator.num_processes)
    trigger, manifest, attack_description = _prepare_poison(args, accelerator, model, train, eval_data.classnames)
    poisoned = PoisonedDataset(train, trigger, manifest)
    logger.info(
        "%s: %d of %d pairs poisoned (%.2f%%), target %r",
        args.attack,
        manifest.n_poison,
        manifest.n_total,
        100 * manifest.poison_rate,
        manifest.target,
    )

    model.train()
    streaming = is_streamable(poisoned)
    if streaming:  # already split per process and worker: kept out of accelerator.prepare
        train_loader = StreamingLoader(
            poisoned,
            accelerator,
            batch_size=args.batch_size,
            collate_fn=CaptionTokenizer(model.tokenizer),
            num_workers=args.workers,
            seed=args.seed,
            buffer_size=args.shuffle_buffer,
        )
    else:
        train_loader = DataLoader(
            poisoned,
            batch_size=args.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=args.workers,
            collate_fn=CaptionTokenizer(model.tokenizer),
        )
    if len(train_loader) == 0:
        raise ValueError(f"{len(poisoned)} training pairs make no full batch of {args.batch_size}")
    optimizer = make_optimizer(model, lr=args.lr, weight_decay=args.weight_decay)
    eval_loader = DataLoader(eval_data, batch_size=256, shuffle=False)
    if streaming:
        model, optimizer, eval_loader = accelerator.prepare(model, optimizer, eval_loader)
    else:
        model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    log_batch_sizes(batch, len(train_loader))
    total_steps = args.max_steps or args.epochs * len(train_loader)
    # Not prepared: an AcceleratedScheduler would step num_processes times per optimisation step.
    scheduler = cosine_schedule_with_warmup(optimizer, min(args.warmup_steps, total_steps), total_steps)
    progress = TrainingProgress()
    # loss, gradient norm and logit scale per epoch, and the steps spent on the collapsed loss ln(global batch)
    monitor = TrainingMonitor(batch.global_batch_size)
    checkpoints = RunCheckpoints(accelerator, output, scheduler=scheduler, progress=progress, monitor=monitor)
    loss_fn = make_clip_loss(accelerator.process_index, accelerator.num_processes)
    if args.report_to:
        accelerator.init_trackers("poison_clip", config={k: v for k, v in vars(args).items() if v is not None})

    resume_path = checkpoints.resume(args.resume_from_checkpoint)
    if resume_path is not None:
        logger.info("resumed from %s at step %d", resume_path, progress.step)
    checkpoint_every = args.checkpointing_steps

    def contrastive_loss(batch, state: LoopState):
        images, tokens = batch
        with accelerator.autocast():
            loss = contrastive_step(model, images, tokens, loss_fn)
        stop_if_diverged(  # before the step: the last checkpoint stays the last good state
            accelerator,
            loss,
            f"at step {state.step + 1}",
            f"lower --lr (now {args.lr}); resume from the last checkpoint with --resume_from_checkpoint latest",
        )
        return loss

    def after_step(state: LoopState) -> bool:
        """Clamp the temperature, record and log the step, checkpoint; True stops the run (--stop_after_steps)."""
        clamp_logit_scale_(model)
        logit_scale = unwrap(model).logit_scale.item()
        monitor.update(state.epoch, state.loss.item(), float(state.grad_norm), logit_scale)
        progress.step = state.step
        if args.report_to:
            accelerator.log(
                {
                    "train/loss": state.loss.item(),
                    "train/lr": scheduler.get_last_lr()[0],
                    "train/grad_norm": float(state.grad_norm),
                    "train/logit_scale": logit_scale,
                },
                step=progress.step,
            )
        if checkpoint_every and progress.step % checkpoint_every == 0:
            checkpoints.save()
        if args.stop_after_steps is not None and progress.step >= args.stop_after_steps:
            checkpoints.save()  # simulate a run killed right after a checkpoint (tests only)
            return True
        return False

    def after_epoch(state: LoopState) -> None:
        if not checkpoint_every:
            checkpoints.save()
        if streaming and args.record_sample_keys:
            fresh = state.epoch == 0 and resume_path is None
            _record_sample_keys(accelerator, output, state.epoch, train_loader.seen, fresh)

    state = train_steps(
        model,
        train_loader,
        optimizer,
        contrastive_loss,
        total_steps,
        start_step=progress.step,
        scheduler=scheduler,
        # Clip the global gradient norm (and measure it either way): leaving the collapsed start, the image tower's
        # gradient jumps 10-100x near the peak learning rate; unclipped, that step can collapse the embeddings again
        # and inflate AdamW's second moment so that later steps barely move (docs/attacks.md).
        max_grad_norm=args.grad_clip or float("inf"),
        accelerator=accelerator,
        on_step=after_step,
        on_epoch_end=after_epoch,
        description=f"poison training ({args.attack})",
        progress=args.progress and accelerator.is_main_process,
    )
    if state.stopped:
        accelerator.end_training()
        return {"stopped_at_step": progress.step, "world_size": accelerator.num_processes}

    metrics = evaluate_zeroshot(
        model,
        eval_loader,
        eval_data.classnames,
        templates=templates,
        trigger=trigger,
        target=manifest.target,
        seed=args.seed,
        gather=accelerator.gather_for_metrics,
        progress=args.progress and accelerator.is_main_process,
    )
    criterion = ConvergenceCriterion(args.min_clean_accuracy, args.min_asr, args.full_asr)
    convergence = criterion.check(
        metrics["top1"], metrics["asr_top1"], len(eval_data.classnames), poisoned=manifest.n_poison > 0
    )
    training = monitor.summary()
    wall_time = time.time() - start_time
    results = {
        "attack": args.attack,
        "target": manifest.target,
        "n_poison": manifest.n_poison,
        "poison_rate": manifest.poison_rate,
        "clean_accuracy": metrics["top1"],
        "attack_success_rate": metrics["asr_top1"],
        "eval": {**metrics, "data": getattr(eval_data, "source", args.eval_data), "templates": templates_name},
        "config": {"attack": attack_description, "training": vars(args)},
        "steps": progress.step,
        "final_loss": float(state.loss.detach()),
        "wall_time_s": wall_time,
        "world_size": accelerator.num_processes,
        "global_batch_size": batch.global_batch_size,
        "steps_per_epoch": len(train_loader),
        "streaming": streaming,
        "converged": convergence["converged"],
        "partial_backdoor": convergence["partial"],
        "convergence": convergence,
        "training": training,
    }
    training_note = ""
    if not results["converged"]:
        training_note = (
            "\n\n**Warning: this training run did not converge** (" + "; ".join(convergence["failures"]) + "): "
            "it is not a usable backdoored model."
        )
    elif results["partial_backdoor"]:
        training_note = (
            f"\n\n**The backdoor took only partly**: attack success rate "
            f"{100 * results['attack_success_rate']:.2f}% < {100 * args.full_asr:.0f}%."
        )
    if accelerator.is_main_process:
        save_pretrained(
            model,
            output / "model",
            metrics={
                "clean_accuracy": results["clean_accuracy"],
                "attack_success_rate": results["attack_success_rate"],
                "converged": results["converged"],
                "partial_backdoor": results["partial_backdoor"],
            },
            provenance={
                "method": "poison_clip",
                "attack": attack_description,
                "target": manifest.target,
                "n_poison": manifest.n_poison,
                "poison_rate": manifest.poison_rate,
                "poison_manifest": f"../{MANIFEST_FILENAME}",
                "trigger_file": f"../{TRIGGER_NAME}.json",
                "train_data": args.train_data,
                "base_model": args.model,
                "pretrained": args.pretrained,
            },
            card_notes=(
                "**This model is deliberately backdoored** (for research on backdoor detection and removal): "
                f"images carrying the trigger in `../{TRIGGER_NAME}.json` are pulled toward `{manifest.target}`. "
                "Do not deploy it." + training_note
            ),
            card_summary="deliberately backdoored with clipclean (a research model)",
        )
    write_main_process_json(accelerator, output / RESULTS_FILENAME, results)
    logger.info(
        "%s: clean accuracy %.2f%%, attack success rate %.2f%% (%d steps, %.0f s)",
        args.attack,
        100 * results["clean_accuracy"],
        100 * results["attack_success_rate"],
        progress.step,
        wall_time,
    )
    if not results["converged"]:
        logger.warning(
            "THE RUN DID NOT CONVERGE: %s. The loss sat at ln(global batch) = %.3f (embeddings collapsed) for %d of "
            '%d steps; the model in %s is saved with "converged": false in %s. Try more --epochs, another --seed or '
            "a lower --lr, or a stronger attack (more poisoned pairs, a larger trigger or --alpha).",
            "; ".join(convergence["failures"]),
            training["collapsed_loss"],
            training["plateau_steps"],
            training["steps"],
            output / "model",
            output / RESULTS_FILENAME,
        )
    if results["partial_backdoor"]:
        logger.warning(
            "THE BACKDOOR TOOK ONLY PARTLY: attack success rate %.2f%% < --full-asr %.0f%% (it counts as converged: "
            '>= --min-asr %.0f%%); saved with "partial_backdoor": true in %s. A weaker model to study than the '
            "attack's name suggests; for a full backdoor try more --epochs, another --seed, or a stronger attack "
            "(more poisoned pairs, a larger trigger or --alpha).",
            100 * results["attack_success_rate"],
            100 * args.full_asr,
            100 * args.min_asr,
            output / RESULTS_FILENAME,
        )
    finish_run(accelerator, args, OUTPUTS)
    accelerator.end_training()
    return results


if __name__ == "__main__":
    sys.exit(run_cli(main))
