"""Backdoor attacks on CLIP: a registry of ``name -> (config dataclass, builder)``.

An attack builds an :class:`~clipclean.attacks.base.Attack` -- a trigger and a caption policy -- from its config and
an :class:`~clipclean.attacks.base.AttackContext` (image size, the clean data, the victim model when the attack
needs one). :func:`clipclean.poisoning.poison_dataset` then poisons a dataset with them.

========  ======================================================  ==========================================
name      trigger                                                 poisoned captions
========  ======================================================  ==========================================
badnet    ``k x k`` noise patch, fixed or random location          80 OpenAI templates filled with the target
blended   ``(1 - alpha) x + alpha * noise`` over the whole image    blended (natural captions naming the target)
badclip   ``k x k`` patch optimised against the victim's encoders   blended (natural captions naming the target)
========  ======================================================  ==========================================

Example::

    >>> from clipclean.attacks import AttackContext, build_attack, make_attack_config
    >>> from clipclean.poisoning import poison_dataset
    >>> config = make_attack_config("badnet", target="zero", trigger_size=4)
    >>> attack = build_attack("badnet", config, AttackContext((32, 32), dataset=train))
    >>> poisoned = poison_dataset(train, attack.trigger, attack.caption_policy, rate=0.02, seed=0, attack="badnet")

A new attack is one file in this package with a config dataclass (subclass of ``AttackConfig``), a builder
``build(config, context) -> Attack`` and one ``register_attack`` line; importing the package imports every module in
it, so nothing else is edited.
"""

from clipclean.attacks.base import (
    ATTACKS,
    Attack,
    AttackConfig,
    AttackContext,
    AttackSpec,
    build_attack,
    get_attack,
    list_attacks,
    make_attack_config,
    register_attack,
)
from clipclean.registry import import_modules

import_modules(__name__, __path__)

from clipclean.attacks.badclip import BadCLIPConfig, optimize_badclip_patch  # noqa: E402
from clipclean.attacks.badnet import BadNetConfig  # noqa: E402
from clipclean.attacks.blended import BlendedConfig  # noqa: E402

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackConfig",
    "AttackContext",
    "AttackSpec",
    "BadCLIPConfig",
    "BadNetConfig",
    "BlendedConfig",
    "build_attack",
    "get_attack",
    "list_attacks",
    "make_attack_config",
    "optimize_badclip_patch",
    "register_attack",
]
