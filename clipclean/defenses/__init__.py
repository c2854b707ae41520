"""Backdoor-removal methods behind one interface (:class:`~clipclean.defenses.base.Defense`).

Importing this package registers every built-in defense; ``DEFENSES`` maps names to (config, class).
"""

from clipclean.defenses import (
    age,  # noqa: F401  (registers "age")
    baerase,  # noqa: F401  (registers "baerase")
    bibau,  # noqa: F401  (registers "bibau")
    cleanclip,  # noqa: F401  (registers "cleanclip")
    finetune,  # noqa: F401  (registers "finetune")
    ibau,  # noqa: F401  (registers "ibau")
)
from clipclean.defenses.base import (
    DEFENSES,
    Defense,
    DefenseConfig,
    DefenseContext,
    build_defense,
    register_defense,
)

__all__ = ["DEFENSES", "Defense", "DefenseConfig", "DefenseContext", "build_defense", "register_defense"]
