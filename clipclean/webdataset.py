"""Moved to :mod:`clipclean.data.webdataset` (one module per data source); ``clipclean.webdataset`` stays an alias of
that module, so ``from clipclean.webdataset import ShardStream`` keeps working."""

import sys

from clipclean.data import webdataset

sys.modules[__name__] = webdataset
