"""``clipclean clean`` and ``clipclean eval``: run the thin scripts of a source checkout (``recipes/clean_clip.py``,
``eval/zeroshot_imagenet.py``) with the given arguments.

The scripts are not a package (they own their ``Accelerator`` and output folder, and run under ``accelerate
launch``); the command loads the file next to the installed ``clipclean`` package (an editable install from a
checkout, ``pip install -e .``) and calls its ``main(argv)``. Several processes:
``accelerate launch -m clipclean.cli.main clean ...``.
"""

from __future__ import annotations

import importlib.util
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
        """``main(argv)`` of the script; ``--help`` shows the script's options under the command's name, then the
        command's examples (the script's ``build_parser()``: no model or library is loaded for it)."""
        module = self.load()
        if "-h" in argv or "--help" in argv:
            parser = module.build_parser()
            parser.prog = f"clipclean {self.command}"
            parser.epilog = "\n\n".join(text for text in (self.examples, f"(runs {self.path})") if text)
            parser.print_help()
            parser.exit()
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
      --eval-trigger outputs/badnet/trigger.json --output-dir outputs/cleaned
  clipclean clean --model path/to/transformers-clip --clean-data "shards/cc-{000..009}.tar" --defense cleanclip
  accelerate launch -m clipclean.cli.main clean --model hf-hub:org/suspect --clean-data pairs.csv""",
        ),
        Script(
            "eval",
            "eval/zeroshot_imagenet.py",
            "zero-shot clean accuracy and attack success rate (top-1; top-5/top-10 when there are more classes), "
            "clipclean's protocol",
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
