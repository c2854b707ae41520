"""Find and remove a backdoor from a CLIP: blind inversion + unlearning (BI-BAU by default), then evaluate.

The job is :mod:`clipclean.cli.clean_clip`, installed with clipclean; this file launches it
(``python -m clipclean.cli.clean_clip`` is the same).
"""

import sys

from clipclean.cli.clean_clip import main
from clipclean.cli.common import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main))
