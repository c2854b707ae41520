"""Help text of the ``clipclean`` command, taken from the command modules' docstrings."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable

from clipclean.cli.common import add_debug_argument

_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data):`~?([^`]+)`")


def plain_text(docstring: str) -> str:
    """A module docstring as terminal text: Sphinx roles and double backticks removed.

    >>> plain_text("Runs :class:`clipclean.inversion.BlindInversion` on ``--max-pairs`` pairs.")
    'Runs clipclean.inversion.BlindInversion on --max-pairs pairs.'
    """
    return _ROLE.sub(r"\1", docstring).replace("``", "").strip()


def add_command(
    subparsers, name: str, summary: str, docstring: str, examples: str, run: Callable
) -> argparse.ArgumentParser:
    """A ``clipclean NAME`` sub-command: ``summary`` in ``clipclean --help``, the module ``docstring`` and the
    ``examples`` in ``clipclean NAME --help``; ``run(args)`` does the work."""
    parser = subparsers.add_parser(
        name,
        help=summary,
        description=plain_text(docstring),
        epilog=examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(run=run)
    add_debug_argument(parser)
    return parser
