"""Train a backdoored image classifier: poison a labelled image set (relabel to the target class), then train.

The classifier counterpart of ``recipes/poison_clip.py``, with the same attacks' triggers (``badnet``, ``blended``).
Runs as a plain script or under ``accelerate launch``; the defaults train clipclean's ``small-cnn`` from scratch on
scikit-learn's digits (32x32), 10% of the training images poisoned toward "zero" (under a minute on 2 CPU cores)::

    python recipes/poison_classifier.py --attack badnet --output-dir outputs/cnn_badnet
    python recipes/poison_classifier.py --attack blended --alpha 0.2 --output-dir outputs/cnn_blended
    python recipes/poison_classifier.py --poison-count 0 --output-dir outputs/cnn_clean      # never poisoned
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \\
        --mixed_precision no --dynamo_backend no recipes/poison_classifier.py --output-dir outputs/cnn_ddp

Your own architecture: ``--architecture mypackage.nets:make_net --architecture-kwargs '{"depth": 4}'`` (called as
``make_net(num_classes=C, depth=4)``; the weights are saved as safetensors, never pickled).

Output folder (``--output-dir``, also spelt ``--output_dir``; the run ends by printing what it wrote there):

* ``model/`` -- the backdoored classifier (``clipclean_classifier.json`` + ``model.safetensors``, see
  :mod:`clipclean.classifiers`), loadable with ``clipclean.classifiers.load_classifier``;
* ``trigger.json`` + ``trigger.safetensors`` + ``trigger.png`` -- the true trigger;
* ``poison_manifest.json`` -- which images were triggered and relabelled, from which seed;
* ``results.json`` -- clean accuracy and attack success rate on the evaluation set, configs, wall time, world size;
* ``checkpoints/`` -- ``accelerator.save_state`` after each epoch; ``--resume_from_checkpoint latest`` continues an
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
from clipclean.cli.catalogue import classifier_architecture_names
from clipclean.cli.common import (
    HelpFormatter,
    add_batch_size_arguments,
    add_classnames_argument,
    add_run_arguments,
    add_trigger_arguments,
    add_trust_code_argument,
    check_poison_arguments,
    run_cli,
)
from clipclean.cli.smoke import smoke_arguments

if TYPE_CHECKING:
    from clipclean.poisoning import PoisonManifest

logger = logging.getLogger("poison_classifier")

CLASSIFIER_ATTACKS = ("badnet", "blended")  # badclip optimises its patch against a CLIP's text side
BATCH_SIZE = 64  # --batch-size default (per process)
OUTPUTS = {
    "model": "the backdoored classifier (clipclean_classifier.json + model.safetensors)",
    "trigger.png": "the true trigger, drawn (trigger.json + .safetensors: the trigger itself)",
    "poison_manifest.json": "which images were triggered and relabelled",
    "results.json": "clean accuracy, attack success rate, the configs",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    add_run_arguments(parser, default_output_dir="outputs/poison_classifier")
    model = parser.add_argument_group("model")
    model.add_argument(
        "--architecture",
        default="small-cnn",
        help=f"built-in ({', '.join(classifier_architecture_names())}) or 'package.module:factory'",
    )
    model.add_argument("--architecture-kwargs", default="{}", help="JSON keyword arguments of the architecture")
    add_trust_code_argument(model)
    model.add_argument("--image-size", type=int, default=32, help="side of the square images the network takes")
    data = parser.add_argument_group("data")
    data.add_argument("--train-data", default="digits:train", help="labelled images to poison (default: digits)")
    data.add_argument("--eval-data", default="digits:test", help="labelled images for CA/ASR")
    add_classnames_argument(data)  # of both --train-data and --eval-data
    data.add_argument(
        "--skip-bad", action="store_true", help="skip missing or undecodable images of the data (with a count)"
    )
    attack = parser.add_argument_group("attack (unset values take the attack's defaults)")
    attack.add_argument("--attack", default="badnet", choices=CLASSIFIER_ATTACKS, help="the poisoning attack")
    attack.add_argument("--target", default="zero", help="target class name")
    amount = attack.add_mutually_exclusive_group()
    amount.add_argument("--poison-rate", type=float, default=None, help="fraction of the training set (default 0.1)")
    amount.add_argument("--poison-count", type=int, default=None, help="number of poisoned images (0: clean run)")
    add_trigger_arguments(attack, "badnet")
    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=int, default=60, help="passes over the training data")
    add_batch_size_arguments(train, BATCH_SIZE, "training images")
    train.add_argument("--lr", type=float, default=2e-3, help="learning rate (AdamW)")
    train.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    args = parser.parse_args(argv)
    check_poison_arguments(args, BATCH_SIZE)
    return smoke_arguments(args)  # CLIPCLEAN_SMOKE: tiny run lengths


def _prepare_poison(args, accelerator, train) -> tuple[Any, PoisonManifest, dict]:
    """The attack's trigger and the manifest, made on the main process (reused when resuming) and read by all."""
    import torch

    from clipclean.attacks import AttackContext, build_attack, make_attack_config
    from clipclean.cli.common import attack_overrides
    from clipclean.poisoning import PoisonManifest, poison_classification_dataset
    from clipclean.triggers import draw_trigger, load_trigger, save_trigger

    output = Path(args.output_dir)
    trigger_path, manifest_path = output / "trigger.json", output / "poison_manifest.json"
    reuse = args.resume_from_checkpoint is not None and trigger_path.is_file() and manifest_path.is_file()
    if accelerator.is_main_process and not reuse:
        config = make_attack_config(args.attack, **attack_overrides(args))
        attack = build_attack(args.attack, config, AttackContext(train.image_size))
        rate = 0.1 if args.poison_rate is None and args.poison_count is None else args.poison_rate
        poisoned = poison_classification_dataset(
            train,
            attack.trigger,
            args.target,
            n_poison=args.poison_count,
            rate=rate,
            seed=args.seed,
            attack=args.attack,
        )
        description = {"method": args.attack, "config": config.to_dict(), "trigger": attack.trigger.describe()}
        save_trigger(attack.trigger, output / "trigger", metadata={"attack": description, "target": args.target})
        examples = poisoned.poison_indices[:4] or list(range(min(4, len(train))))
        examples = torch.stack([train[i][0] for i in examples])
        title = f"true trigger ({args.attack} attack)"
        draw_trigger(attack.trigger, output / "trigger.png", images=examples, title=title, target=args.target)
        poisoned.manifest.save(manifest_path)
    accelerator.wait_for_everyone()
    description = json.loads(trigger_path.read_text())["metadata"]["attack"]
    return load_trigger(trigger_path), PoisonManifest.load(manifest_path), description


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Poison, train and evaluate (``argv``: command-line arguments) and return the ``results.json`` dict.

    Example::

        >>> results = main(["--attack", "badnet", "--output_dir", "outputs/cnn_badnet"])
        >>> results["clean_accuracy"], results["attack_success_rate"]
        (0.955, 0.9916)
    """
    args = parse_args(argv)
    import torch
    import torch.nn.functional as F
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader

    from clipclean.classifiers import create_classifier, save_classifier
    from clipclean.cli.cleaning import evaluate_phase
    from clipclean.cli.common import (
        CHECKPOINTS_FOLDER,
        RESULTS_FILENAME,
        RunCheckpoints,
        TrainingProgress,
        check_poison_inputs,
        configure_cpu_threads,
        finish_run,
        log_batch_sizes,
        make_accelerator,
        prepare_output_dir,
        resolve_batch_sizes,
        setup_logging,
        stop_if_diverged,
        write_main_process_json,
    )
    from clipclean.data import collate_pairs, load_classification_dataset
    from clipclean.poisoning import PoisonedClassificationDataset
    from clipclean.training import LoopState, train_steps

    prepare_output_dir(  # before any work: a used or unwritable folder fails now, not after the training
        args.output_dir,
        overwrite=args.overwrite,
        resume=args.resume_from_checkpoint,
        results=(RESULTS_FILENAME, CHECKPOINTS_FOLDER, "trigger.json", "poison_manifest.json"),
        model_folders=("model",),
    )
    start_time = time.time()
    accelerator = make_accelerator(args)
    setup_logging(accelerator, "poison_classifier")
    configure_cpu_threads(accelerator)
    batch = resolve_batch_sizes(args, accelerator.num_processes)  # --global-batch-size: args.batch_size per process
    set_seed(args.seed)
    output = Path(args.output_dir)

    with accelerator.main_process_first():
        train = load_classification_dataset(
            args.train_data,
            image_size=args.image_size,
            classnames=args.classnames,
            split="train",
            skip_bad=args.skip_bad,
        )
        eval_data = load_classification_dataset(
            args.eval_data, image_size=args.image_size, classnames=args.classnames, skip_bad=args.skip_bad
        )
    check_poison_inputs(
        args, args.image_size, len(train), eval_data.classnames, accelerator.num_processes, full_batches=False
    )
    trigger, manifest, attack_description = _prepare_poison(args, accelerator, train)
    poisoned = PoisonedClassificationDataset(train, trigger, manifest)
    logger.info("%s: %d of %d images poisoned toward %r", args.attack, manifest.n_poison, len(train), manifest.target)

    model = create_classifier(
        args.architecture,
        train.classnames,
        args.image_size,
        trust_code=args.trust_architecture_code,
        **json.loads(args.architecture_kwargs),
    ).to(accelerator.device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    train_loader = DataLoader(poisoned, batch_size=args.batch_size, shuffle=True, collate_fn=collate_pairs)
    eval_loader = DataLoader(eval_data, batch_size=256, shuffle=False)
    wrapped, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    log_batch_sizes(batch, len(train_loader))
    progress = TrainingProgress()
    checkpoints = RunCheckpoints(accelerator, output, progress=progress)
    resume_path = checkpoints.resume(args.resume_from_checkpoint)
    if resume_path is not None:
        logger.info("resumed from %s after %d epoch(s)", resume_path, progress.step)

    def classification_loss(batch, state: LoopState):
        images, labels = batch
        loss = F.cross_entropy(wrapped(images), labels)
        saved = f"the newest checkpoint in {output / CHECKPOINTS_FOLDER} is the last good state" if state.epoch else ""
        stop_if_diverged(accelerator, loss, f"in epoch {state.epoch + 1}", f"lower --lr (now {args.lr}). {saved}")
        return loss

    def after_epoch(state: LoopState) -> None:
        progress.step = state.epoch + 1  # progress.step counts epochs here
        checkpoints.save()

    state = train_steps(
        wrapped,
        train_loader,
        optimizer,
        classification_loss,
        args.epochs * len(train_loader),
        start_step=progress.step * len(train_loader),
        accelerator=accelerator,
        on_epoch_end=after_epoch,
        description=f"poison training ({args.attack})",
        progress=args.progress and accelerator.is_main_process,
    )
    model.eval()
    metrics = evaluate_phase(
        model, eval_loader, eval_data.classnames, model.class_embeddings, trigger, manifest.target, accelerator,
        progress=args.progress,
    )  # fmt: skip
    results = {
        "attack": args.attack,
        "target": manifest.target,
        "n_poison": manifest.n_poison,
        "poison_rate": manifest.poison_rate,
        "clean_accuracy": metrics["clean_accuracy"],
        "attack_success_rate": metrics["attack_success_rate"],
        "eval": {**metrics["eval"], "data": eval_data.source},
        "config": {"attack": attack_description, "training": vars(args)},
        "epochs": progress.step,
        "final_loss": float(state.loss.detach()),
        "wall_time_s": time.time() - start_time,
        "world_size": accelerator.num_processes,
        "global_batch_size": batch.global_batch_size,
        "steps_per_epoch": len(train_loader),
    }
    if accelerator.is_main_process:
        save_classifier(
            model,
            output / "model",
            metadata={
                "method": "poison_classifier",
                "backdoored": manifest.n_poison > 0,
                "attack": attack_description,
                "target": manifest.target,
                "n_poison": manifest.n_poison,
                "trigger_file": "../trigger.json",
                "metrics": {k: results[k] for k in ("clean_accuracy", "attack_success_rate")},
            },
        )
    write_main_process_json(accelerator, output / "results.json", results)
    logger.info(
        "%s: clean accuracy %.2f%%, attack success rate %.2f%% (%.0f s)",
        args.attack,
        100 * results["clean_accuracy"],
        100 * results["attack_success_rate"],
        results["wall_time_s"],
    )
    finish_run(accelerator, args, OUTPUTS)
    accelerator.end_training()
    return results


if __name__ == "__main__":
    sys.exit(run_cli(main))
