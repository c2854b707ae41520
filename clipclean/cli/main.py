"""The ``clipclean`` command: the common jobs without writing a script.

* ``clipclean scan MODEL --data D`` -- is the model backdoored? verdict, recovered trigger (PNG), named target;
* ``clipclean clean ...`` -- :mod:`clipclean.cli.clean_clip`: find and remove a backdoor, evaluate, save;
* ``clipclean eval ...`` -- :mod:`clipclean.cli.zeroshot_imagenet`: clean accuracy and attack success rate;
* ``clipclean convert SOURCE OUTPUT_DIR`` -- legacy CleanCLIP/BadCLIP checkpoint (or transformers CLIP) to open_clip;
* ``clipclean push DIR REPO_ID`` -- upload a checkpoint folder (card, sidecar, safetensors) to the Hub.

``clipclean COMMAND --help`` shows each command's options and examples. Installed as a console script
(``[project.scripts]``); ``python -m clipclean.cli.main`` is the same.
"""

from __future__ import annotations

import argparse
import sys

from clipclean.cli import convert, jobs, push, scan

EXAMPLES = """examples:
  clipclean scan outputs/badnet/model --data digits:defender
  clipclean clean --model outputs/badnet/model --clean-data digits:defender --eval-data digits:test
  clipclean eval --model outputs/cleaned/cleaned --data digits --trigger outputs/badnet/trigger.json --target zero
  clipclean convert cleanclip/epoch_64.pt outputs/cleanclip-open_clip
  clipclean push outputs/cleaned/cleaned my-org/clip-cleaned
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipclean",
        description="Find and remove backdoors from CLIP models.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    scan.add_parser(commands)
    jobs.add_parsers(commands)
    convert.add_parser(commands)
    push.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the process exit status: 0 on success, 2 on bad input (``error: <one line>`` on
    stderr; ``--debug`` shows the traceback instead), see :func:`clipclean.cli.common.run_cli`."""
    from clipclean.cli.common import run_cli

    return run_cli(_run_command, sys.argv[1:] if argv is None else argv)


def _run_command(argv: list[str]) -> None:
    from clipclean.cli.common import setup_logging

    if argv[:1] == ["--debug"]:  # `clipclean --debug COMMAND ...`: the commands take it
        argv = [*argv[1:], "--debug"]
    if argv and argv[0] in jobs.JOBS:  # the job parses (and documents) its own arguments
        jobs.JOBS[argv[0]].run(argv[1:])
        return
    args = build_parser().parse_args(argv)
    setup_logging()
    args.run(args)


if __name__ == "__main__":
    sys.exit(main())
