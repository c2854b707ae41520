"""Shared plumbing of clipclean's thin scripts (``recipes/``, ``eval/``, the ``clipclean`` command).

Scripts own the loop, the ``Accelerator``, the CLI and the output folder; this module keeps the parts they
would otherwise repeat: argument groups with one set of defaults, accelerator construction, logging set-up
and main-process-only atomic output writing.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from clipclean.fileio import write_json

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
    """An ``Accelerator`` for the script: CPU when no GPU, checkpoints under ``OUTPUT_DIR/checkpoints``.

    Launch two real CPU processes with ``ACCELERATE_USE_CPU=true accelerate launch --multi_gpu
    --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no SCRIPT``.
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    mixed_precision = args.mixed_precision if torch.cuda.is_available() else "no"
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
    )
    return accelerator


def setup_logging(accelerator=None) -> None:
    level = logging.INFO if accelerator is None or accelerator.is_main_process else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    for noisy in ("httpx", "urllib3", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def resolve_resume_path(resume: str | None, output_dir: str | Path) -> str | None:
    """``'latest'`` -> the newest accelerate checkpoint under ``OUTPUT_DIR/checkpoints`` (None if none)."""
    if resume is None or resume != "latest":
        return resume
    folder = Path(output_dir) / "checkpoints"
    candidates = [path for path in folder.glob("checkpoint_*") if path.is_dir()] if folder.is_dir() else []
    if not candidates:
        logger.info("no checkpoint under %s: starting from scratch", folder)
        return None
    return str(max(candidates, key=lambda path: int(path.name.rsplit("_", 1)[-1])))


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
