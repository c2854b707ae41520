"""Find and remove a backdoor from an image classifier: blind inversion + unlearning (BI-BAU by default), evaluate.

The job is :mod:`clipclean.cli.clean_classifier`, installed with clipclean; this file launches it
(``python -m clipclean.cli.clean_classifier`` is the same).
"""

import sys

from clipclean.cli.clean_classifier import main
from clipclean.cli.common import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main))
