"""Train a backdoored CLIP: poison image-caption data with an attack, then train (or fine-tune) on it.

The job is :mod:`clipclean.cli.poison_clip`, installed with clipclean; this file launches it
(``python -m clipclean.cli.poison_clip`` is the same).
"""

import sys

from clipclean.cli.common import run_cli
from clipclean.cli.poison_clip import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
