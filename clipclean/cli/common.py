"""Shared plumbing of clipclean's jobs (the modules of ``clipclean.cli`` that ``recipes/``, ``eval/`` and the
``clipclean`` command run).

The jobs own the ``Accelerator``, the CLI and the output folder (their training steps go through
:func:`clipclean.training.train_steps`, the cleaning rounds through :mod:`clipclean.cli.cleaning`); this module keeps
the parts they would otherwise repeat: argument groups with one set of defaults, accelerator construction,
logging set-up and main-process-only atomic output writing.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipclean.errors import ClipcleanError, OutputDirError, TrainingDivergedError, UsageError
from clipclean.fileio import load_state_tree, save_state_tree, write_json

logger = logging.getLogger(__name__)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The scripts' ``--help``: the description and epilog keep their line breaks, and every option that takes a
    value shows its default -- unless it has none (``None``) or its help already says what it is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or action.nargs == 0  # a switch: on or off, no value
            or default is None
            or default is argparse.SUPPRESS
            or default == []
            or "default" in text.lower()
        ):
            return text
        return f"{text} (default: %(default)s)"


def add_model_arguments(parser: argparse.ArgumentParser, required: bool = False) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        required=required,
        help="open_clip model name (e.g. ViT-B-32, clipclean-tiny), hf-hub:org/repo, local-dir:/path or a directory",
    )
    group.add_argument("--pretrained", default=None, help="open_clip pretrained tag or checkpoint file (names only)")
    group.add_argument("--cache-dir", default=None, help="Hugging Face cache directory")


def add_classnames_argument(group) -> None:
    """``--classnames``: the class names of the labelled (evaluation) data, one flag and one help text for every
    script; the rule is :func:`clipclean.data.load_classification_dataset`'s (written out in docs/evaluation.md)."""
    group.add_argument(
        "--classnames",
        default=None,
        help="class names file: 'folder<TAB>name' lines (any order), or one name per line (the folder names in any "
        "order, else names for the folders in sorted order; a name that is another folder's is refused); "
        "default: ImageNet synset folders -> OpenAI ImageNet names, else the folder names",
    )


def add_trust_code_argument(parser: argparse.ArgumentParser) -> None:
    """``--trust-architecture-code``: the opt-in to import a classifier architecture outside the built-in names and
    torchvision (``clipclean.classifiers.build_network``); without it no module named by a file is imported."""
    parser.add_argument(
        "--trust-architecture-code",
        action="store_true",
        help="allow a classifier architecture 'package.module:factory' to be imported and run (a model folder's "
        "clipclean_classifier.json or --architecture); only for code you trust. Built-in names and "
        "'torchvision.models:NAME' need no opt-in",
    )


def add_run_arguments(parser: argparse.ArgumentParser, default_output_dir: str) -> None:
    group = parser.add_argument_group("run")
    group.add_argument(
        "--output-dir",
        "--output_dir",
        dest="output_dir",
        default=default_output_dir,
        help="the folder the run writes its outputs to",
    )
    group.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds the data order, the sampling and the methods (a poisoning recipe's trigger has --trigger-seed)",
    )
    group.add_argument(
        "--resume_from_checkpoint",
        "--resume-from-checkpoint",
        dest="resume_from_checkpoint",
        default=None,
        help="a checkpoint folder, or 'latest' for the newest under OUTPUT_DIR/checkpoints",
    )
    group.add_argument(
        "--report_to",
        "--report-to",
        dest="report_to",
        default=None,
        help="accelerate tracker(s): tensorboard, wandb, all (default: none)",
    )
    group.add_argument(
        "--mixed_precision",
        "--mixed-precision",
        dest="mixed_precision",
        default=None,
        choices=["no", "fp16", "bf16"],
        help="GPU only; ignored on CPU",
    )
    group.add_argument(
        "--checkpointing_steps",
        "--checkpointing-steps",
        dest="checkpointing_steps",
        type=int,
        default=0,
        help="save_state every N optimisation steps (0: only at the end of each epoch)",
    )
    group.add_argument(
        "--keep-checkpoints",
        "--keep_checkpoints",
        dest="keep_checkpoints",
        action="store_true",
        help="keep OUTPUT_DIR/checkpoints after a successful run (without it they are deleted at the end; an "
        "interrupted run always keeps them for --resume_from_checkpoint latest)",
    )
    group.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    add_overwrite_argument(
        group, "a previous run's results in --output-dir (results.json, the model folder; its checkpoints are deleted)"
    )
    add_debug_argument(group)


def add_output_dir_argument(parser, default_help: str) -> None:
    """``--output-dir`` (also ``--output_dir``, and ``--output`` as the commands first called it): the folder a
    command writes to, one flag name across the recipes and the commands (``dest="output_dir"``)."""
    parser.add_argument(
        "--output-dir",
        "--output_dir",
        "--output",
        dest="output_dir",
        default=None,
        metavar="OUTPUT_DIR",
        help=f"the folder the outputs go to (default: {default_help})",
    )


class _ResultsInFolder(argparse.Action):
    """``--output-dir DIR`` of a script that writes one results file: ``DIR/results.json``."""

    def __call__(self, parser, namespace, value, option_string=None) -> None:
        setattr(namespace, self.dest, str(Path(value) / RESULTS_FILENAME))


def add_results_file_arguments(group) -> None:
    """Where a script that writes one JSON file (``eval/``) puts it: ``--output-dir DIR`` (also ``--output_dir``,
    the recipes' flag) writes ``DIR/results.json``; ``--output FILE`` names the file itself. Both set
    ``args.output`` (the file; ``None``: results are printed only)."""
    flags = group.add_mutually_exclusive_group()
    flags.add_argument(
        "--output-dir",
        "--output_dir",
        dest="output",
        action=_ResultsInFolder,
        default=None,
        metavar="OUTPUT_DIR",
        help=f"write the results to OUTPUT_DIR/{RESULTS_FILENAME} (main process only; default: printed only)",
    )
    flags.add_argument("--output", dest="output", default=None, metavar="FILE", help="write the results to FILE")


CLEANING_BATCH_SIZE = 64  # the cleaning recipes' --batch-size default (per process)


def add_batch_size_arguments(group, default: int, what: str) -> None:
    """``--batch-size`` (per process, the documented contract) and ``--global-batch-size`` (over all processes), one
    or the other: the batch of one optimisation step for every recipe that trains (``what``: what a batch holds).

    ``--batch-size`` has no argparse default (``None``): :func:`check_batch_size_arguments` fills in ``default``
    when neither flag is given, because argparse's mutual exclusion does not see a value equal to the default
    (``--batch-size 64 --global-batch-size 128`` would pass). :func:`resolve_batch_sizes` turns the two into the
    per-process batch once the number of processes is known.
    """
    sizes = group.add_mutually_exclusive_group()
    sizes.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"{what} per optimisation step on EACH process (default: {default}); the global batch is this times "
        "the number of processes",
    )
    sizes.add_argument(
        "--global-batch-size",
        type=int,
        default=None,
        help=f"{what} per optimisation step over ALL processes, instead of --batch-size: each process takes "
        "GLOBAL_BATCH_SIZE / the number of processes (it must divide). Compare runs on 1 and N processes at equal "
        "global batch",
    )


def check_batch_size_arguments(args: argparse.Namespace, default: int) -> None:
    """Refuse a ``--batch-size``/``--global-batch-size`` < 1 (:class:`~clipclean.errors.UsageError`) and fill in
    ``--batch-size``'s ``default`` when neither was given (:func:`add_batch_size_arguments`)."""
    for flag, value in (("--batch-size", args.batch_size), ("--global-batch-size", args.global_batch_size)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    if args.batch_size is None and args.global_batch_size is None:
        args.batch_size = default


@dataclass(frozen=True)
class BatchSizes:
    """The batch of one optimisation step: ``per_process`` samples on each of ``num_processes`` processes.

    Two runs take the same optimisation steps when their ``global_batch_size`` is equal, whatever their number of
    processes: the seedable sampler shuffles the same way on every process, the loader deals its consecutive
    per-process batches to the processes in turn, the contrastive loss gathers the features with gradient and the
    gradients are averaged, so one step of N processes sees the samples of one step of one process.
    """

    per_process: int
    num_processes: int

    @property
    def global_batch_size(self) -> int:
        return self.per_process * self.num_processes

    def describe(self) -> str:
        """``global batch 64 = 32 per process x 2 processes``."""
        plural = "es" if self.num_processes > 1 else ""
        return (
            f"global batch {self.global_batch_size} = {self.per_process} per process x {self.num_processes} "
            f"process{plural}"
        )


def resolve_batch_sizes(args: argparse.Namespace, num_processes: int) -> BatchSizes:
    """The per-process batch of a run with ``num_processes`` processes: ``--batch-size`` as given, or
    ``--global-batch-size N`` / ``num_processes``; ``args.batch_size`` is set to it (so the saved flags record the
    per-process batch the run used, next to ``global_batch_size``). Raises :class:`~clipclean.errors.UsageError`
    naming both numbers when ``N`` is not a multiple of the number of processes.

    Example::

        >>> args = argparse.Namespace(batch_size=None, global_batch_size=64)
        >>> resolve_batch_sizes(args, 2).describe(), args.batch_size
        ('global batch 64 = 32 per process x 2 processes', 32)
    """
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    global_batch_size = getattr(args, "global_batch_size", None)
    if global_batch_size is None:
        if args.batch_size is None:
            raise ValueError("no --batch-size: call check_batch_size_arguments after parsing")
        return BatchSizes(args.batch_size, num_processes)
    if global_batch_size % num_processes:
        lower = max(num_processes, global_batch_size // num_processes * num_processes)
        raise UsageError(
            f"--global-batch-size {global_batch_size} is not divisible by the {num_processes} processes: give a "
            f"multiple of {num_processes} (e.g. {lower} or {lower + num_processes}), or --batch-size per process"
        )
    args.batch_size = global_batch_size // num_processes
    return BatchSizes(args.batch_size, num_processes)


def log_batch_sizes(batch: BatchSizes, steps_per_epoch: int) -> None:
    """Say (INFO; :func:`setup_logging` shows it on the main process only) the global and per-process batch, the
    number of processes and the optimiser steps per epoch: what to compare between two runs."""
    logger.info("%s; %d optimiser steps per epoch", batch.describe(), steps_per_epoch)


def make_cleaning_parser(doc: str, default_output_dir: str, clean_data_help: str) -> argparse.ArgumentParser:
    """A cleaning recipe's parser with the model, run and data argument groups (``doc``: the recipe's docstring,
    whose first paragraph is the description); add :func:`add_defense_arguments` and the recipe's own."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=HelpFormatter)
    add_model_arguments(parser)
    add_run_arguments(parser, default_output_dir=default_output_dir)
    data = parser.add_argument_group("data")
    data.add_argument("--clean-data", default=None, help=clean_data_help)
    data.add_argument("--eval-data", default=None, help="labelled images for CA/ASR (demo: digits test split)")
    add_classnames_argument(data)  # of the labelled data (and the target candidates)
    data.add_argument("--templates", default=None, help="zero-shot templates file (default: per data set)")
    data.add_argument("--max-clean-pairs", type=int, default=None, help="use at most N clean samples")
    data.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    data.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip missing or undecodable images (and empty captions) of --clean-data/--eval-data with a count, "
        "instead of stopping at the first with its file and row",
    )
    return parser


def add_defense_arguments(parser: argparse.ArgumentParser, target_flags: Sequence[str] = ("--target-caption",)):
    """The ``defense`` argument group both cleaning recipes share; returns it (recipes may add to it).

    ``target_flags`` name the known-target option (dest ``target_caption``: a caption, or a class name for a
    classifier). The defenses' names and their default rounds, epochs and learning rates come from their configs,
    read without importing them (:mod:`clipclean.cli.catalogue`).
    """
    from clipclean.cli.catalogue import defense_names, describe_defense_defaults

    defense = parser.add_argument_group("defense")
    defense.add_argument("--defense", default="bibau", choices=defense_names(), help="the backdoor-removal method")
    defense.add_argument(*target_flags, dest="target_caption", default=None, help="known target (absent: untargeted)")
    defense.add_argument("--eval-trigger", default=None, help="a true trigger file, to measure the real ASR")
    defense.add_argument("--eval-target", default=None, help="target class of --eval-trigger (default: its file)")
    for flag, kind, what in (("--rounds", int, "outer rounds"), ("--epochs", int, "epochs per round"),
                             ("--lr", float, "learning rate")):  # fmt: skip
        field_name = flag.lstrip("-")
        defaults = describe_defense_defaults(field_name)
        defense.add_argument(flag, type=kind, default=None, help=f"{what} (default, per defense: {defaults})")
    add_batch_size_arguments(defense, CLEANING_BATCH_SIZE, "defender pairs")
    defense.add_argument(
        "--micro-batch",
        type=int,
        default=None,
        help="at most N images per forward/backward pass on each process: the trigger search (inversion, verdict, "
        "re-inversion) and the unlearning steps (the contrastive loss through a gradient cache); the same "
        "gradients with less memory (a ResNet's BatchNorm sees micro-batches). Default: whole batches",
    )
    defense.add_argument(
        "--defense-option",
        "--set",
        dest="defense_options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any field of the defense's config (JSON values), e.g. --set gamma=2 --set inversion.rounds=3",
    )
    return defense


def check_cleaning_arguments(args: argparse.Namespace) -> None:
    """The numbers of :func:`make_cleaning_parser` and :func:`add_defense_arguments` that no run can use, refused
    once parsed (:class:`~clipclean.errors.UsageError`, one line): ``--rounds``/``--epochs`` 0 would write a
    "cleaned" model identical to its input."""
    import math

    for flag, value in (("--rounds", args.rounds), ("--epochs", args.epochs)):
        if value is not None and value < 1:
            raise UsageError(
                f"{flag} must be >= 1, got {value} (0 would leave the model unchanged and call it cleaned)"
            )
    check_batch_size_arguments(args, CLEANING_BATCH_SIZE)
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise UsageError(f"--lr must be a positive number, got {args.lr}")
    if args.max_clean_pairs is not None and args.max_clean_pairs < 1:
        raise UsageError(f"--max-clean-pairs must be >= 1, got {args.max_clean_pairs}")
    if args.workers < 0:
        raise UsageError(f"--workers must be >= 0, got {args.workers}")


def make_accelerator(args: argparse.Namespace):
    """An ``Accelerator`` for the script: CPU when no GPU, checkpoints under ``OUTPUT_DIR/checkpoints``, a seedable
    sampler (shuffling depends only on ``args.seed`` and the epoch; call ``loader.set_epoch(epoch)``).

    Launch two real CPU processes with ``ACCELERATE_USE_CPU=true accelerate launch --multi_gpu
    --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no SCRIPT``.
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration

    mixed_precision = args.mixed_precision if torch.cuda.is_available() else "no"
    # A seedable sampler shuffles epoch e with seed + e on every process: the data order depends on nothing but the
    # seed and the epoch, so a run resumed from a checkpoint sees exactly the batches an uninterrupted run sees.
    dataloader_config = DataLoaderConfiguration(use_seedable_sampler=True, data_seed=getattr(args, "seed", None))
    project = ProjectConfiguration(
        project_dir=str(args.output_dir),
        logging_dir=str(Path(args.output_dir) / "logs"),
        automatic_checkpoint_naming=True,  # RunCheckpoints keeps the newest CHECKPOINTS_KEPT (accelerate would log it)
    )
    accelerator = Accelerator(
        mixed_precision=mixed_precision or None,
        log_with=args.report_to,
        project_config=project,
        dataloader_config=dataloader_config,
    )
    return accelerator


class CurrentStderrHandler(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stderr`` is when a record is emitted, not to the stream of the moment
    it was made: a job run in-process (tests, notebooks) would otherwise leave the root logger bound to a stream that
    its caller replaces and closes, and every later record would end in "ValueError: I/O operation on closed file"."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:  # StreamHandler.setStream; the stream is always the current stderr
        pass


def setup_logging(accelerator=None, script_logger: str | None = None) -> None:
    """INFO from clipclean (and the script's own logger) on the main process; warnings only from libraries; records
    go to the current ``sys.stderr`` (:class:`CurrentStderrHandler`)."""
    level = logging.INFO if accelerator is None or accelerator.is_main_process else logging.WARNING
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[CurrentStderrHandler()],
        force=True,
    )
    for name in ("clipclean", "clean_clip", "poison_clip", "zeroshot_imagenet", script_logger):
        if name:
            logging.getLogger(name).setLevel(level)


def write_main_process_json(accelerator, path: str | Path, data: Any) -> None:
    """Write JSON atomically on the main process only, then wait for everyone."""
    if accelerator is None or accelerator.is_main_process:
        write_json(path, data)
    if accelerator is not None:
        accelerator.wait_for_everyone()


def print_table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    """A small fixed-width text table (the scripts print it; returned for tests)."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(value).ljust(width) for value, width in zip(header, widths))]
    lines.append("  ".join("-" * width for width in widths))
    lines += ["  ".join(str(value).ljust(width) for value, width in zip(row, widths)) for row in rows]
    text = "\n".join(lines)
    print(text)
    return text


def negative_verdict_notes(inversion: dict) -> list[str]:
    """What a verdict of "no backdoor found" does not say, as lines to print under it (none for any other verdict):
    that it is no proof, and which candidate the targeted inversions reached most easily when the untargeted
    search named another (the misses on held-out models are mostly of that kind: README, "What the held-out
    models say")."""
    if inversion.get("verdict") != "no backdoor found":
        return []
    lines = [
        '"no backdoor found" is not proof that the model is clean: the verdict misses some backdoors, more often at '
        'low poison rates and with scores near the threshold (README.md, "What the held-out models say")'
    ]
    rates = inversion.get("candidate_asr") or {}
    winner = inversion.get("untargeted_winner") or inversion.get("recovered_target")
    if rates:
        easiest = max(rates, key=rates.get)
        if easiest != winner:
            lines.append(
                f"the largest targeted ASR was toward {easiest!r} ({100 * rates[easiest]:.1f}%), not the search's "
                f"{winner!r} ({100 * rates.get(winner, 0.0):.1f}%); a backdoor toward {easiest!r} is not ruled out"
            )
    return lines


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def configure_cpu_threads(accelerator) -> int:
    """On CPU, share the cores between the processes (``torch.set_num_threads``); ``OMP_NUM_THREADS`` wins.

    Returns the number of threads each process uses.
    """
    import torch

    if accelerator.device.type != "cpu" or os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // accelerator.num_processes)
    torch.set_num_threads(threads)
    return threads


class TrainingProgress:
    """The optimisation step (or epoch) a run has reached; :class:`RunCheckpoints` saves and restores it.

    Example::

        >>> progress = TrainingProgress()
        >>> checkpoints = RunCheckpoints(accelerator, output_dir, progress=progress)
        >>> checkpoints.resume("latest")            # progress.step is the step the checkpoint was saved at
    """

    def __init__(self, step: int = 0) -> None:
        self.step = step

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])


class CheckpointError(ClipcleanError, ValueError):
    """A checkpoint that cannot be resumed from (missing, incomplete, not written by clipclean)."""


CHECKPOINTS_KEPT = 2  # the newest checkpoint and the one before it (a kill while saving leaves the newest incomplete)
CHECKPOINT_STATE_NAME = "clipclean_state"
CHECKPOINT_COMPLETE_FILENAME = "clipclean_checkpoint.json"


def checkpoint_number(path: Path) -> int:
    """``checkpoint_7`` -> 7 (accelerate's automatic naming); -1 for any other name."""
    prefix, _, number = path.name.rpartition("_")
    return int(number) if prefix == "checkpoint" and number.isdigit() else -1


def is_complete_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a checkpoint folder :meth:`RunCheckpoints.save` finished writing (its marker is the last
    file written, so a run killed while saving leaves a folder without it)."""
    return (Path(path) / CHECKPOINT_COMPLETE_FILENAME).is_file()


class RunCheckpoints:
    """Resumable checkpoints of a run, with no pickle anywhere a resumed run reads.

    ``accelerator.save_state`` writes the model (safetensors), the optimizer and the RNG states (which
    ``load_state`` reads with ``torch.load(weights_only=True)``); the run's own state -- ``objects``, anything with
    ``state_dict``/``load_state_dict`` returning tensors, numbers, strings and containers -- goes to
    ``clipclean_state.json`` + ``clipclean_state.safetensors`` (:func:`clipclean.fileio.save_state_tree`), never to
    accelerate's ``register_for_checkpointing``, whose files are unpickled with ``weights_only=False``. A marker file
    written last tells a complete checkpoint from one a kill interrupted: ``resume("latest")`` takes the newest
    complete one and deletes the incomplete ones.

    Folders are ``OUTPUT_DIR/checkpoints/checkpoint_<n>`` (accelerate's automatic naming); a save first deletes the
    oldest, so that :data:`CHECKPOINTS_KEPT` remain (logged at debug level). A successful run deletes the folder at
    the end unless ``--keep-checkpoints`` (:func:`finish_run`).

    Example::

        >>> progress = TrainingProgress()
        >>> checkpoints = RunCheckpoints(accelerator, args.output_dir, progress=progress, scheduler=scheduler)
        >>> resumed_from = checkpoints.resume(args.resume_from_checkpoint)   # None, a folder or "latest"
        >>> ...; checkpoints.save()
    """

    def __init__(self, accelerator, output_dir: str | Path, **objects: Any) -> None:
        for name, value in objects.items():
            if not (hasattr(value, "state_dict") and hasattr(value, "load_state_dict")):
                raise TypeError(f"{name!r} has no state_dict/load_state_dict")
        self.accelerator = accelerator
        self.folder = Path(output_dir) / "checkpoints"
        self.objects = objects

    def save(self) -> Path:
        """``accelerator.save_state()`` plus the run's state, then the completeness marker; returns the folder."""
        accelerator = self.accelerator
        if accelerator.is_main_process:
            self._make_room()
        location = Path(accelerator.save_state())
        if accelerator.is_main_process:
            save_state_tree(location, CHECKPOINT_STATE_NAME, {n: obj.state_dict() for n, obj in self.objects.items()})
            write_json(location / CHECKPOINT_COMPLETE_FILENAME, {"format": "clipclean-checkpoint", "complete": True})
        accelerator.wait_for_everyone()
        return location

    def resolve(self, resume: str | None) -> Path | None:
        """The folder ``resume`` names: ``None`` -> ``None``; ``"latest"`` -> the newest complete checkpoint under
        ``OUTPUT_DIR/checkpoints``; a path -> itself. Raises :class:`CheckpointError` when there is none or the
        folder is incomplete or not clipclean's."""
        if resume is None:
            return None
        if resume == "latest":
            candidates = sorted(self._numbered(), key=checkpoint_number, reverse=True)
            for candidate in candidates:
                if is_complete_checkpoint(candidate):
                    return self.resolve(str(candidate))
                logger.warning("skipping %s: incomplete (the run was interrupted while saving it)", candidate)
            raise CheckpointError(
                f"--resume_from_checkpoint latest: no complete checkpoint under {self.folder}; "
                "run without --resume_from_checkpoint to start from scratch"
            )
        path = Path(resume)
        if not path.is_dir():
            raise CheckpointError(f"--resume_from_checkpoint {resume}: no such folder")
        if not is_complete_checkpoint(path):
            raise CheckpointError(
                f"--resume_from_checkpoint {resume}: not a complete clipclean checkpoint (no "
                f"{CHECKPOINT_COMPLETE_FILENAME}: interrupted while saving, or written by another program or an "
                "older clipclean); use 'latest' or another checkpoint_<n> folder"
            )
        planted = sorted(candidate.name for candidate in path.glob("custom_checkpoint_*"))
        if planted:
            raise CheckpointError(
                f"{path} holds {planted}, pickles that clipclean never writes (accelerate would unpickle them with "
                "weights_only=False): refusing to resume from it"
            )
        return path

    def resume(self, resume: str | None) -> Path | None:
        """Restore the run from :meth:`resolve`'s folder (no-op for ``None``); returns the folder restored from.

        Later saves continue the numbering after the newest folder present; incomplete folders are deleted."""
        path = self.resolve(resume)
        if path is None:
            return None
        accelerator = self.accelerator
        accelerator.load_state(str(path))
        state = load_state_tree(path, CHECKPOINT_STATE_NAME)
        missing = sorted(set(self.objects) - set(state))
        if missing:
            raise CheckpointError(f"{path}: the checkpoint holds no state for {missing}: written by another recipe?")
        for name, obj in self.objects.items():
            obj.load_state_dict(state[name])
        accelerator.wait_for_everyone()
        numbered = self._numbered()
        if accelerator.is_main_process:
            for candidate in numbered:
                if not is_complete_checkpoint(candidate):
                    logger.info("deleting the incomplete checkpoint %s", candidate)
                    shutil.rmtree(candidate, ignore_errors=True)
        accelerator.wait_for_everyone()
        numbers = [checkpoint_number(candidate) for candidate in numbered if is_complete_checkpoint(candidate)]
        accelerator.project_configuration.iteration = max([checkpoint_number(path), *numbers]) + 1
        return path

    def _make_room(self) -> None:
        """Delete the oldest numbered checkpoints so that, with the one about to be saved, CHECKPOINTS_KEPT remain."""
        numbered = sorted(self._numbered(), key=checkpoint_number)
        for old in numbered[: max(0, len(numbered) + 1 - CHECKPOINTS_KEPT)]:
            logger.debug("deleting the checkpoint %s to make room for a new one", old)
            shutil.rmtree(old)

    def _numbered(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return [path for path in self.folder.iterdir() if path.is_dir() and checkpoint_number(path) >= 0]


def default_templates(templates: str | None, data_source: str | None) -> tuple[list[str], str]:
    """Zero-shot templates: the ``templates`` file if given, the digit caption templates for the built-in digits,
    else the 80 OpenAI ImageNet templates. Returns ``(templates, description)``."""
    from clipclean.data import DIGIT_CAPTION_TEMPLATES
    from clipclean.evaluation import load_templates

    if templates is not None:
        return load_templates(templates), str(templates)
    if data_source is not None and str(data_source).split(":")[0] == "digits":
        return list(DIGIT_CAPTION_TEMPLATES), "clipclean.data.DIGIT_CAPTION_TEMPLATES"
    return load_templates(None), "openai_imagenet_templates"


def parse_key_values(items: list[str]) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` ``["gamma=2", "inversion.rounds=3"]`` -> ``{"gamma": 2, "inversion": {"rounds": 3}}``

    Values are parsed as JSON when they can be (numbers, booleans, lists), else kept as strings.
    """
    import json

    parsed: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        *parents, leaf = key.strip().split(".")
        node = parsed
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return parsed


def add_complete_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the complete-unlearning tests (``eval/complete_unlearning.py``, ``clean_clip.py --complete-eval``);
    defaults are :class:`~clipclean.complete.RetuningConfig`'s."""
    from clipclean.cli.catalogue import config_defaults

    defaults = argparse.Namespace(**config_defaults("complete.py", "RetuningConfig"))  # read, not imported (--help)
    group = parser.add_argument_group("complete unlearning (retuning attack, re-inversion; docs/evaluation.md)")
    group.add_argument("--reference-model", default=None, help="a never-poisoned reference model, same protocol")
    group.add_argument(
        "--reference-measurements",
        default=None,
        metavar="JSON",
        help="reuse the reference's measurements: a results JSON written by eval/complete_unlearning.py for the "
        "reference model (its 'measured' block; the retuning settings must match)",
    )
    group.add_argument("--retune-steps", type=int, default=defaults.steps, help="retuning attack: steps")
    group.add_argument("--retune-lr", type=float, default=defaults.lr, help="retuning attack: learning rate")
    group.add_argument(
        "--retune-pairs", type=int, default=None, help="retuning set size (default: max(100, 1%% of the clean set))"
    )
    group.add_argument(
        "--retune-poison-fraction", type=float, default=defaults.poison_fraction, help="poisoned share of the set"
    )
    group.add_argument(
        "--retune-batch-size",
        type=int,
        default=defaults.batch_size,
        help="retuning batch size (the tests run on the main process alone: the same for any number of processes)",
    )
    group.add_argument(
        "--retune-data",
        default=None,
        help="image-caption pairs the retuning attack draws from, disjoint from the defender's --clean-data "
        "(default: digits:train when the clean data is the built-in digits, else --clean-data, with a warning)",
    )
    group.add_argument(
        "--reinversion-option",
        dest="reinversion_options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a field of the re-inversion's InversionConfig, e.g. --reinversion-option rounds=2",
    )


def complete_eval_configs(args: argparse.Namespace):
    """``(RetuningConfig, InversionConfig)`` from :func:`add_complete_eval_arguments`' flags (``ValueError`` on
    bad values)."""
    from clipclean.complete import RetuningConfig, reinversion_config

    retuning = RetuningConfig(
        steps=args.retune_steps,
        lr=args.retune_lr,
        n_pairs=args.retune_pairs,
        poison_fraction=args.retune_poison_fraction,
        batch_size=args.retune_batch_size,
        seed=args.seed,
    )
    from clipclean.cli.smoke import smoke_config

    options = parse_key_values(args.reinversion_options)
    inversion = reinversion_config(**{"seed": args.seed, **options})
    return smoke_config(retuning), smoke_config(inversion)  # CLIPCLEAN_SMOKE: tiny run lengths


def load_reference_measurements(path: str | Path, retuning, pool: str | None = None) -> Any:
    """The ``measured`` block of an ``eval/complete_unlearning.py`` results file, as a
    :class:`~clipclean.complete.Persistence`; ``ValueError`` when it was measured with other retuning settings (or,
    when ``pool`` is given, retuning pairs from another source)."""
    import json
    from dataclasses import asdict

    from clipclean.complete import Persistence

    data = json.loads(Path(path).read_text())
    if "measured" not in data:
        raise ValueError(f"{path} has no 'measured' block: write it with eval/complete_unlearning.py")
    measured = Persistence.from_dict(data["measured"])
    recorded = measured.retuning.get("config")
    if recorded is not None and recorded != asdict(retuning):
        raise ValueError(f"{path} was measured with retuning settings {recorded}, this run uses {asdict(retuning)}")
    if pool is not None and measured.retuning.get("pool") not in (None, pool):
        raise ValueError(f"{path} was measured with retuning pairs from {measured.retuning['pool']}, this run {pool}")
    return measured


def check_complete_eval_arguments(args: argparse.Namespace) -> None:
    """Validate the complete-unlearning flags before any work (``ValueError``/``OSError`` on bad values): the
    configs build, and ``--reference-measurements`` was measured with the same retuning settings and pool."""
    retuning, _ = complete_eval_configs(args)
    if args.reference_measurements is not None:
        pool = retuning_pool_source(args.retune_data, args.clean_data)
        load_reference_measurements(args.reference_measurements, retuning, pool)


def retuning_pool_source(retune_data: str | None, clean_data: str | None) -> str | None:
    """Where the retuning attack draws its pairs: ``--retune-data``; for the built-in digits the attacker's split
    ``digits:train`` (disjoint from ``digits:defender`` and ``digits:test``); else the defender's own set."""
    if retune_data is not None:
        return retune_data
    if clean_data is not None and str(clean_data).split(":")[0] == "digits":
        return "digits:train"
    logger.warning(
        "the retuning attack draws its pairs from --clean-data, the set the model was cleaned on: give --retune-data "
        "(pairs disjoint from it) for a fair test of complete unlearning"
    )
    return clean_data


def measure_with_reference(args: argparse.Namespace, model, clean, trigger, target, eval_data, classnames, templates):
    """The complete-unlearning measurements of ``model`` and of the reference the flags name: ``--reference-model``
    (measured the same way), ``--reference-measurements`` (read back) or neither (``None``).

    Returns ``(measured, reference)``, two :class:`~clipclean.complete.Persistence` (the second may be ``None``).
    """
    from clipclean.complete import measure_persistence
    from clipclean.data import load_image_caption_dataset
    from clipclean.models import load_clip

    retuning, inversion = complete_eval_configs(args)
    source = retuning_pool_source(args.retune_data, args.clean_data)
    pool = clean if source == args.clean_data else load_image_caption_dataset(source, image_size=model.image_size)

    def measure(candidate):
        measured = measure_persistence(
            candidate, clean, trigger, target, eval_data, classnames, templates, retuning, inversion,
            progress=args.progress, retuning_pool=pool,
        )  # fmt: skip
        if measured.ra_asr is not None:
            measured.retuning["pool"] = source
        return measured

    measured = measure(model)
    if args.reference_measurements is not None:
        return measured, load_reference_measurements(args.reference_measurements, retuning, source)
    if args.reference_model is not None:
        return measured, measure(load_clip(args.reference_model, device=model.device, cache_dir=args.cache_dir))
    return measured, None


# The trigger's own seed when the user gives none, whatever the run's ``--seed``. Drawn from the run's seed, a grid
# over seeds was also a lottery over triggers: seed 3's 4 px draw, the darkest of seeds 0-4 on the digits' black
# corners, implanted 63% toward "eight" on run seed 3, where that run implanted 100% with every other patch tried
# and that patch 99-100% on run seeds 0-2 (docs/attacks.md, "The first grid's miss").
DEFAULT_TRIGGER_SEED = 0


def add_trigger_arguments(group, patch_attacks: str) -> None:
    """The trigger flags of every poisoning recipe: ``--trigger-size``, ``--trigger-location`` (``patch_attacks``
    names the attacks they apply to), ``--alpha``, ``--pattern`` and ``--trigger-seed``."""
    group.add_argument("--trigger-size", type=int, default=None, help=f"patch side in pixels ({patch_attacks})")
    group.add_argument("--trigger-location", default=None, help="top-left ... bottom-right, center, random")
    group.add_argument("--alpha", type=float, default=None, help="blend weight (blended)")
    group.add_argument("--pattern", default=None, help="noise, white, black, checkerboard or an image file")
    group.add_argument(
        "--trigger-seed",
        type=int,
        default=DEFAULT_TRIGGER_SEED,
        help="seeds the trigger: the noise pattern, BadCLIP's starting patch (default: %(default)s whatever "
        "--seed, so runs of different seeds attack with the same trigger; give the run's seed for one per seed)",
    )


def attack_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The attack-config fields every poisoning recipe takes from its flags (``--target``, ``--trigger-seed``,
    ``--trigger-size``, ``--trigger-location``, ``--alpha``, ``--pattern``), for ``make_attack_config``: the
    attack's ``seed`` is the trigger's, not the run's ``--seed`` (which orders the data and draws the poisoned
    pairs)."""
    return {
        "target": args.target,
        "seed": args.trigger_seed,
        "trigger_size": args.trigger_size,
        "location": args.trigger_location,
        "alpha": args.alpha,
        "pattern": args.pattern,
    }


# ---- bad input: the output folder, checked before any work, and the one top-level error handler ---------------
RESULTS_FILENAME = "results.json"
CHECKPOINTS_FOLDER = "checkpoints"
DEBUG_ENVIRONMENT_VARIABLE = "CLIPCLEAN_DEBUG"
USAGE_ERROR_STATUS = 2


def add_overwrite_argument(parser, what: str) -> None:
    """``--overwrite``: replace ``what`` instead of refusing (a previous result is never overwritten silently)."""
    parser.add_argument("--overwrite", action="store_true", help=f"replace {what} (without it they are refused)")


def add_debug_argument(parser) -> None:
    """``--debug``: show the Python traceback of an error instead of the one-line message (:func:`run_cli`)."""
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"on an error, show the Python traceback instead of one line (also {DEBUG_ENVIRONMENT_VARIABLE}=1)",
    )


def _nearest_existing(path: Path) -> Path:
    """``path`` or the closest of its parents that exists (``lexists``: a dangling link is in the way too)."""
    path = Path(os.path.abspath(path))
    while not os.path.lexists(path) and path.parent != path:
        path = path.parent
    return path


def check_writable(path: Path, flag: str) -> None:
    """``path`` (an output folder or the folder of an output file) can be created and written: no file is in the way
    and a file can be made in it or in its nearest existing parent. Creates nothing (the probe file has no name)."""
    existing = _nearest_existing(path)
    if not existing.is_dir():
        where = "is a file" if existing == Path(os.path.abspath(path)) else f"cannot be created: {existing} is a file"
        raise OutputDirError(f"{flag} {path} {where}; choose another path")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise OutputDirError(
            f"{flag} {path} is not writable ({type(error).__name__} in {existing}: {error.strerror or error}); "
            "choose another path"
        ) from error


def prepare_output_dir(
    output_dir: str | Path,
    *,
    overwrite: bool = False,
    resume: str | None = None,
    results: tuple[str, ...] = (RESULTS_FILENAME, CHECKPOINTS_FOLDER),
    model_folders: tuple[str, ...] = (),
    flag: str = "--output_dir",
) -> Path:
    """Check a script's output folder before any work, so that no run fails on it at the end.

    Refuses (:class:`~clipclean.errors.OutputDirError`) a file in the way, a folder that cannot be created or
    written, and a folder holding a previous result -- any of ``results`` or ``model_folders`` -- unless
    ``overwrite`` or ``resume`` is given: a previous result is never overwritten silently. Other files in the folder
    (a log, the user's own) are left alone and do not count. A model folder the run will replace must hold only what
    clipclean writes there (:func:`clipclean.hub.foreign_files`), whatever the flags: replacing it would delete the
    rest. With ``overwrite`` (and no ``resume``) the previous run's ``checkpoints/`` is deleted (by the first process
    only, before the processes meet), so ``latest`` finds only the new run's and their numbering starts afresh;
    results.json and the model folder are replaced when the new run writes them. Nothing is created.

    Args:
        output_dir: the folder (``--output_dir``).
        overwrite, resume: ``--overwrite`` and ``--resume_from_checkpoint``.
        results: names in the folder that mark a previous result.
        model_folders: sub-folders the run replaces as a whole (``cleaned``, ``model``).
        flag: the option named in messages.

    Returns:
        The folder as a ``Path``.

    Example::

        >>> prepare_output_dir(args.output_dir, overwrite=args.overwrite, resume=args.resume_from_checkpoint,
        ...                    model_folders=("cleaned",))  # before the Accelerator, the model or the data
    """
    from clipclean.hub import foreign_files

    output = Path(output_dir)
    check_writable(output, flag)
    for name in model_folders:
        folder = output / name
        if os.path.lexists(folder) and not folder.is_dir():
            raise OutputDirError(f"{folder} is a file where the run writes its model folder; move it away")
        foreign = foreign_files(folder) if folder.is_dir() else []
        if foreign:
            raise OutputDirError(
                f"{folder} holds {foreign[:5]}, which clipclean does not write: the run replaces that folder as a "
                "whole, so move them out (or choose another --output_dir)"
            )
    previous = [name for name in (*results, *model_folders) if os.path.lexists(output / name)]
    if previous and not overwrite and resume is None:
        raise OutputDirError(
            f"{flag} {output} holds a previous result ({', '.join(previous)}): pass --overwrite to replace it, "
            "--resume_from_checkpoint latest to continue it, or choose another folder"
        )
    stale = output / CHECKPOINTS_FOLDER if CHECKPOINTS_FOLDER in results else None
    if overwrite and resume is None and stale is not None and stale.is_dir() and _is_first_process():
        logger.info("--overwrite: deleting the previous run's %s", stale)
        shutil.rmtree(stale)
    return output


def finish_run(accelerator, args: argparse.Namespace, outputs: dict[str, str], notes: tuple[str, ...] = ()) -> None:
    """The end of a successful run: delete ``OUTPUT_DIR/checkpoints`` unless ``--keep-checkpoints`` (a run that
    stops early -- an error, a kill -- never gets here, so ``--resume_from_checkpoint latest`` still finds them),
    then print where the outputs are (main process).

    Args:
        accelerator: the run's ``Accelerator`` (every process calls this).
        args: the parsed flags (``output_dir``, ``keep_checkpoints``).
        outputs: ``{name in OUTPUT_DIR: what it is}``; the names that exist are listed.
        notes: more lines to print after the list (e.g. where a demo cached its model).
    """
    output = Path(args.output_dir)
    checkpoints = output / CHECKPOINTS_FOLDER
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        kept = getattr(args, "keep_checkpoints", False)
        if checkpoints.is_dir() and not kept:
            logger.debug("deleting %s: the run finished (--keep-checkpoints keeps them)", checkpoints)
            shutil.rmtree(checkpoints)
        kept_state = {CHECKPOINTS_FOLDER: "the resumable training state (--keep-checkpoints)"}
        print(outputs_summary(output, {**outputs, **kept_state}))
        for note in notes:
            print(note)
    accelerator.wait_for_everyone()


def outputs_summary(output: str | Path, outputs: dict[str, str]) -> str:
    """``outputs in DIR:`` and one line per entry of ``outputs`` (``{name: what it is}``) that exists in it."""
    output = Path(output)
    present = {name + ("/" if (output / name).is_dir() else ""): what for name, what in outputs.items()
               if (output / name).exists()}  # fmt: skip
    width = max((len(name) for name in present), default=0)
    lines = [f"outputs in {output}{os.sep}:", *(f"  {name.ljust(width)}  {what}" for name, what in present.items())]
    return "\n".join(lines)


def prepare_output_file(path: str | Path | None, *, overwrite: bool = False, flag: str = "--output") -> Path | None:
    """Check an output file (``--output results.json``) before any work: no folder in its place, its folder can be
    created and written, and it does not exist yet unless ``overwrite``. ``None`` passes through."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        raise OutputDirError(
            f"{flag} {path} is a folder; give a file name such as {path / RESULTS_FILENAME} (or --output-dir {path})"
        )
    check_writable(path.parent, flag)
    if os.path.lexists(path) and not overwrite:
        raise OutputDirError(f"{flag} {path} exists: pass --overwrite to replace it, or choose another file")
    return path


def _is_first_process() -> bool:
    """Rank 0 of an ``accelerate launch`` (or the only process), known before the ``Accelerator`` exists."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0) == 0


def one_line(error: BaseException | str) -> str:
    """An error as one line: its message with the whitespace collapsed; the original message of an error re-raised
    from a ``DataLoader`` worker (``Caught DataError in DataLoader worker process 0. Original Traceback...``); the
    type for an ``OSError`` (``PermissionError: ...``) or an error without a message."""
    text = str(error)
    if "Original Traceback" in text:  # torch.utils.data re-raises a worker's error with its traceback as message
        last = [line.strip() for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last and "Error" in last.split(": ", 1)[0] else last
    text = " ".join(text.split())
    if isinstance(error, BaseException) and not text:
        return type(error).__name__
    if isinstance(error, OSError) and not isinstance(error, ClipcleanError):
        return f"{type(error).__name__}: {text}"
    return text


def _user_errors() -> tuple[type[BaseException], ...]:
    """What :func:`run_cli` reports in one line: clipclean's errors and what bad input raises in the libraries."""
    import torch

    errors: list[type[BaseException]] = [ClipcleanError, OSError, ValueError, torch.OutOfMemoryError]
    try:
        from safetensors import SafetensorError

        errors.append(SafetensorError)
    except ImportError:  # older safetensors: its errors are wrapped where clipclean reads files
        pass
    return tuple(errors)


def run_cli(main, argv: list[str] | None = None) -> int:
    """Run a script's ``main(argv)`` as a command; the one top-level error handler of every recipe, ``eval/`` script
    and the ``clipclean`` command. Returns the exit status: ``sys.exit(run_cli(main))``.

    On bad input -- a :class:`~clipclean.errors.ClipcleanError` (``DataError``, ``ModelLoadError``, an output-folder
    or checkpoint error...), an ``OSError`` or ``ValueError`` from reading the input, a ``SystemExit`` carrying a
    message, running out of GPU memory -- it prints ``error: <one line>`` to stderr and returns 2, with no traceback.
    ``--debug`` in ``argv`` (or ``CLIPCLEAN_DEBUG=1``) re-raises instead, traceback and all. Other exceptions (bugs)
    propagate with their traceback. ``--help`` and argparse's usage errors exit as argparse makes them.

    Example::

        >>> if __name__ == "__main__":
        ...     sys.exit(run_cli(main))
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or env_flag(DEBUG_ENVIRONMENT_VARIABLE)
    try:
        result = main(argv)
    except SystemExit as exit_:
        if debug or not isinstance(exit_.code, str):
            raise
        print(f"error: {one_line(exit_.code)}", file=sys.stderr)
        return USAGE_ERROR_STATUS
    except _user_errors() as error:
        if debug:
            raise
        import torch

        oom = isinstance(error, torch.OutOfMemoryError)
        message = f"out of memory ({one_line(error)[:120]}): lower --batch-size" if oom else one_line(error)
        print(f"error: {message} (--debug shows the traceback)", file=sys.stderr)
        return USAGE_ERROR_STATUS
    return result if isinstance(result, int) and not isinstance(result, bool) else 0  # a command's own status


def check_poison_arguments(args: argparse.Namespace, default_batch_size: int) -> None:
    """The numbers of a poisoning recipe that no run can use, refused before any work (``UsageError``): a poison
    rate outside (0, 1] (``--poison-count 0`` is the clean run), a blend ``--alpha`` outside (0, 1], zero epochs or
    steps (they would leave a trigger and a manifest but no model), and non-positive sizes or learning rates.
    ``default_batch_size``: the recipe's ``--batch-size`` default (:func:`check_batch_size_arguments`)."""
    import math

    if args.poison_rate is not None and not 0 < args.poison_rate <= 1:
        raise UsageError(
            f"--poison-rate must lie in (0, 1], got {args.poison_rate} (--poison-count 0 for a clean run)"
        )
    if args.poison_count is not None and args.poison_count < 0:
        raise UsageError(f"--poison-count must be >= 0, got {args.poison_count}")
    if args.alpha is not None and not 0 < args.alpha <= 1:
        raise UsageError(f"--alpha must lie in (0, 1], got {args.alpha} (the blend weight of the trigger)")
    if args.trigger_size is not None and args.trigger_size < 1:
        raise UsageError(f"--trigger-size must be >= 1 pixel, got {args.trigger_size}")
    if args.trigger_seed < 0:
        raise UsageError(f"--trigger-seed must be >= 0, got {args.trigger_seed}")
    if args.epochs < 1:
        raise UsageError(f"--epochs must be >= 1, got {args.epochs}")
    if getattr(args, "max_steps", None) is not None and args.max_steps < 1:
        raise UsageError(f"--max-steps must be >= 1, got {args.max_steps}")
    check_batch_size_arguments(args, default_batch_size)
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise UsageError(f"--lr must be a positive number, got {args.lr}")


def check_poison_inputs(
    args: argparse.Namespace, image_size, n_train: int, classnames, num_processes: int, full_batches: bool = True
) -> None:
    """What a poisoning recipe checks once the model and data are loaded, before it writes its trigger: the
    ``--target`` is a class of the evaluation data, the ``--trigger-size`` fits in the images, and (``full_batches``:
    a loader that drops the last partial batch) every process gets at least one full batch. Raises ``ValueError``
    naming the flag to change."""
    from clipclean.evaluation import resolve_target

    try:
        resolve_target(args.target, classnames)
    except ValueError as error:
        shown = ", ".join(list(classnames)[:10]) + (", ..." if len(classnames) > 10 else "")
        raise ValueError(f"--target {args.target!r} is not a class of --eval-data ({shown})") from error
    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if args.trigger_size is not None and args.trigger_size > min(height, width):
        raise ValueError(f"--trigger-size {args.trigger_size} is larger than the {height}x{width} images")
    per_process = n_train // num_processes
    if full_batches and per_process < args.batch_size:
        if getattr(args, "global_batch_size", None) is not None:
            raise ValueError(
                f"--global-batch-size {args.global_batch_size} ({args.batch_size} per process) is larger than the "
                f"training pairs: each of the {num_processes} process(es) gets {per_process} ({n_train} in all); "
                "lower --global-batch-size"
            )
        raise ValueError(
            f"--batch-size {args.batch_size} is larger than the {per_process} training pairs each of the "
            f"{num_processes} process(es) gets ({n_train} in all): lower --batch-size"
        )


def stop_if_diverged(accelerator, loss, where: str, advice: str) -> None:
    """Raise :class:`~clipclean.errors.TrainingDivergedError` when ``loss`` is NaN or infinite on any process -- call
    it before ``accelerator.backward``, so the bad step is never taken and the last checkpoint stays the last good
    state. ``where`` ("in round 2, epoch 1") and ``advice`` (what to change, where the checkpoint is) go into the
    message. With several processes the flag is summed over them, so all stop together (none waits in the next
    all-reduce)."""
    import torch

    diverged = (~torch.isfinite(loss.detach())).any().float().reshape(1)
    if accelerator.num_processes > 1:
        diverged = accelerator.reduce(diverged, reduction="sum")
    if bool(diverged.item()):
        value = float(loss.detach().float().mean())
        raise TrainingDivergedError(
            f"the loss became NaN or infinite ({value} on this process) {where}: stopped before the step; {advice}"
        )
