"""Zero-shot clean accuracy (CA) and attack success rate (ASR) of a CLIP, by clipclean's one protocol.

The job is :mod:`clipclean.cli.zeroshot_imagenet`, installed with clipclean; this file launches it
(``python -m clipclean.cli.zeroshot_imagenet`` is the same).
"""

import sys

from clipclean.cli.common import run_cli
from clipclean.cli.zeroshot_imagenet import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
