"""``clipclean clean`` and ``clipclean eval``: run the thin scripts of a source checkout (``recipes/clean_clip.py``,
``eval/zeroshot_imagenet.py``) with the given arguments.

The scripts are not a package (they own their ``Accelerator`` and output folder, and run under ``accelerate
launch``); the command loads the file next to the installed ``clipclean`` package (an editable install from a
checkout, ``pip install -e .``) and calls its ``main(argv)``. Several processes:
``accelerate launch -m clipclean.cli.main clean ...``.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

CHECKOUT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Script:
    """A script the ``clipclean`` command delegates to."""

    command: str
    path: str  # relative to the checkout
    help: str
    examples: str

    def load(self) -> ModuleType:
        """Import the script file as a module (its ``if __name__ == "__main__"`` block does not run)."""
        file = CHECKOUT / self.path
        if not file.is_file():
            raise SystemExit(
                f"clipclean {self.command} runs {self.path} from a source checkout, and {file} does not exist: "
                "install clipclean from a checkout with `pip install -e .`"
            )
        spec = importlib.util.spec_from_file_location(f"clipclean_script_{file.stem}", file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    def run(self, argv: list[str]):
        """``main(argv)`` of the script; ``--help`` shows the command's examples, then the script's options."""
        module = self.load()
        if "-h" in argv or "--help" in argv:
            print(f"usage: clipclean {self.command} [options of {self.path}]\n\n{self.help}\n\n{self.examples}")
            sys.argv[0] = f"clipclean {self.command}"  # the script's parser names itself after argv[0]
            return module.main(["--help"])
        return module.main(argv)


SCRIPTS = {
    script.command: script
    for script in (
        Script(
            "clean",
            "recipes/clean_clip.py",
            "find and remove a backdoor (blind inversion + unlearning, BI-BAU by default), evaluate, save the cleaned "
            "model (a transformers model stays in transformers format)",
            """examples:
  clipclean clean                                   # the embedded digits demo
  clipclean clean --model outputs/badnet/model --clean-data digits:defender --eval-data digits:test \\
      --eval-trigger outputs/badnet/trigger.json --output_dir outputs/cleaned
  clipclean clean --model path/to/transformers-clip --clean-data "shards/cc-{000..009}.tar" --defense cleanclip
  accelerate launch -m clipclean.cli.main clean --model hf-hub:org/suspect --clean-data pairs.csv""",
        ),
        Script(
            "eval",
            "eval/zeroshot_imagenet.py",
            "zero-shot clean accuracy (top-1/top-5) and attack success rate (top-1/top-10), clipclean's protocol",
            """examples:
  clipclean eval --model outputs/cleaned/cleaned --data digits --trigger outputs/badnet/trigger.json --target zero
  clipclean eval --model ViT-B-32 --pretrained laion2b_s34b_b79k --data /data/imagenet --split val""",
        ),
    )
}


def add_parsers(subparsers) -> None:
    """List the delegated commands in ``clipclean --help`` (their arguments are parsed by the scripts)."""
    for script in SCRIPTS.values():
        subparsers.add_parser(script.command, help=script.help, add_help=False)
