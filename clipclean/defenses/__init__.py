"""Backdoor-removal methods behind one interface (:class:`~clipclean.defenses.base.Defense`).

Importing this package imports every module in it, and each defense module registers itself with one
``register_defense`` line; ``DEFENSES`` maps names to ``(config_class, defense_class)``. A new defense is a new file
here: nothing else is edited.
"""

import importlib
import pkgutil

from clipclean.defenses.base import (
    DEFENSES,
    Defense,
    DefenseConfig,
    DefenseContext,
    build_defense,
    register_defense,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
del _module

__all__ = ["DEFENSES", "Defense", "DefenseConfig", "DefenseContext", "build_defense", "register_defense"]
