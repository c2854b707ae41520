"""Shared plumbing of clipclean's thin scripts (``recipes/``, ``eval/``, the ``clipclean`` command).

Scripts own the loop, the ``Accelerator``, the CLI and the output folder; this module keeps the parts they
would otherwise repeat: argument groups with one set of defaults, accelerator construction, logging set-up
and main-process-only atomic output writing.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from clipclean.fileio import load_state_tree, save_state_tree, write_json

logger = logging.getLogger(__name__)


def add_model_arguments(parser: argparse.ArgumentParser, required: bool = False) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        required=required,
        help="open_clip model name (e.g. ViT-B-32, clipclean-tiny), hf-hub:org/repo, local-dir:/path or a directory",
    )
    group.add_argument("--pretrained", default=None, help="open_clip pretrained tag or checkpoint file (names only)")
    group.add_argument("--cache-dir", default=None, help="Hugging Face cache directory")


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
    group.add_argument("--output_dir", "--output-dir", dest="output_dir", default=default_output_dir)
    group.add_argument("--seed", type=int, default=0)
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
    group.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")


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
        automatic_checkpoint_naming=True,
        total_limit=2,
    )
    accelerator = Accelerator(
        mixed_precision=mixed_precision or None,
        log_with=args.report_to,
        project_config=project,
        dataloader_config=dataloader_config,
    )
    return accelerator


def setup_logging(accelerator=None, script_logger: str | None = None) -> None:
    """INFO from clipclean (and the script's own logger) on the main process; warnings only from libraries."""
    level = logging.INFO if accelerator is None or accelerator.is_main_process else logging.WARNING
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
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


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from (missing, incomplete, not written by clipclean)."""


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

    Folders are ``OUTPUT_DIR/checkpoints/checkpoint_<n>`` (accelerate's automatic naming, the last two kept).

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
    from clipclean.complete import RetuningConfig

    defaults = RetuningConfig()
    group = parser.add_argument_group("complete unlearning (retuning attack, re-inversion; method.md section 3)")
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
    group.add_argument("--retune-batch-size", type=int, default=defaults.batch_size, help="retuning batch size")
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
    options = parse_key_values(args.reinversion_options)
    inversion = reinversion_config(**{"seed": args.seed, **options})
    return retuning, inversion


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


def attack_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The attack-config fields every poisoning recipe takes from its flags (``--target``, ``--seed``,
    ``--trigger-size``, ``--trigger-location``, ``--alpha``, ``--pattern``), for ``make_attack_config``."""
    return {
        "target": args.target,
        "seed": args.seed,
        "trigger_size": args.trigger_size,
        "location": args.trigger_location,
        "alpha": args.alpha,
        "pattern": args.pattern,
    }
