"""``clipclean clean`` and ``clipclean eval``: the jobs :mod:`clipclean.cli.clean_clip` and
:mod:`clipclean.cli.zeroshot_imagenet` under the ``clipclean`` command.

A job module owns its ``Accelerator``, output folder and command line (``build_parser()``, ``main(argv)``); the
command imports it from the installed package and calls its ``main(argv)``, as ``recipes/clean_clip.py`` and
``eval/zeroshot_imagenet.py`` do. Several processes: ``accelerate launch -m clipclean.cli.main clean ...``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Job:
    """A job module the ``clipclean`` command delegates to."""

    command: str
    module: str  # under clipclean.cli
    help: str
    examples: str

    def load(self) -> ModuleType:
        """The job module (it imports only the command line at the top: torch loads in its ``main``)."""
        return importlib.import_module(f"clipclean.cli.{self.module}")

    def run(self, argv: list[str]):
        """``main(argv)`` of the job; ``--help`` shows the job's options under the command's name, then the
        command's examples (the job's ``build_parser()``: no model or library is loaded for it)."""
        module = self.load()
        if "-h" in argv or "--help" in argv:
            parser = module.build_parser()
            parser.prog = f"clipclean {self.command}"
            parser.epilog = "\n\n".join((self.examples, f"(runs clipclean.cli.{self.module})"))
            parser.print_help()
            parser.exit()
        return module.main(argv)


JOBS = {
    job.command: job
    for job in (
        Job(
            "clean",
            "clean_clip",
            "find and remove a backdoor (blind inversion + unlearning, BI-BAU by default), evaluate, save the cleaned "
            "model (a transformers model stays in transformers format)",
            """examples:
  clipclean clean                                   # the embedded digits demo
  clipclean clean --model outputs/badnet/model --clean-data digits:defender --eval-data digits:test \\
      --eval-trigger outputs/badnet/trigger.json --output-dir outputs/cleaned
  clipclean clean --model path/to/transformers-clip --clean-data "shards/cc-{000..009}.tar" --defense cleanclip
  accelerate launch -m clipclean.cli.main clean --model hf-hub:org/suspect --clean-data pairs.csv""",
        ),
        Job(
            "eval",
            "zeroshot_imagenet",
            "zero-shot clean accuracy and attack success rate (top-1; top-5/top-10 when there are more classes), "
            "clipclean's protocol",
            """examples:
  clipclean eval --model outputs/cleaned/cleaned --data digits --trigger outputs/badnet/trigger.json --target zero
  clipclean eval --model ViT-B-32 --pretrained laion2b_s34b_b79k --data /data/imagenet --split val""",
        ),
    )
}


def add_parsers(subparsers) -> None:
    """List the delegated commands in ``clipclean --help`` (their arguments are parsed by the jobs)."""
    for job in JOBS.values():
        subparsers.add_parser(job.command, help=job.help, add_help=False)
