"""Train a backdoored image classifier: poison a labelled image set (relabel to the target class), then train.

The job is :mod:`clipclean.cli.poison_classifier`, installed with clipclean; this file launches it
(``python -m clipclean.cli.poison_classifier`` is the same).
"""

import sys

from clipclean.cli.common import run_cli
from clipclean.cli.poison_classifier import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
