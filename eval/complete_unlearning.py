"""Is the backdoor *completely* gone? The retuning attack and re-inversion (docs/evaluation.md).

The job is :mod:`clipclean.cli.complete_unlearning`, installed with clipclean; this file launches it
(``python -m clipclean.cli.complete_unlearning`` is the same).
"""

import sys

from clipclean.cli.common import run_cli
from clipclean.cli.complete_unlearning import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
