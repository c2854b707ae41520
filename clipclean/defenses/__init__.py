"""Backdoor-removal methods behind one interface (:class:`~clipclean.defenses.base.Defense`).

Importing this package imports every module in it, and each defense module registers itself with one
``register_defense`` line; ``DEFENSES`` maps names to ``(config_class, defense_class)``. A new defense is a new file
here: nothing else is edited.
"""

from clipclean.defenses.base import (
    DEFENSES,
    Defense,
    DefenseConfig,
    DefenseContext,
    build_defense,
    register_defense,
)
from clipclean.registry import import_modules

import_modules(__name__, __path__)

__all__ = ["DEFENSES", "Defense", "DefenseConfig", "DefenseContext", "build_defense", "register_defense"]
