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

A new attack is one file with a config dataclass (subclass of ``AttackConfig``) and a builder
``build(config, context) -> Attack``, plus one ``register_attack`` line below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from clipclean.attacks.badclip import BadCLIPConfig, build_badclip, optimize_badclip_patch
from clipclean.attacks.badnet import BadNetConfig, build_badnet
from clipclean.attacks.base import Attack, AttackConfig, AttackContext
from clipclean.attacks.blended import BlendedConfig, build_blended

Builder = Callable[[Any, AttackContext], Attack]


@dataclass(frozen=True)
class AttackSpec:
    """A registered attack: its name, config dataclass and builder."""

    name: str
    config_class: type[AttackConfig]
    build: Builder


ATTACKS: dict[str, AttackSpec] = {}


def register_attack(name: str, config_class: type[AttackConfig], build: Builder) -> AttackSpec:
    """Register an attack under a lowercase, unique identifier."""
    if name != name.lower() or not name.replace("_", "").isalnum():
        raise ValueError(f"attack names are lowercase identifiers, got {name!r}")
    if name in ATTACKS:
        raise ValueError(f"attack {name!r} is already registered")
    if not (isinstance(config_class, type) and issubclass(config_class, AttackConfig)):
        raise TypeError(f"the config of {name!r} must subclass AttackConfig, got {config_class!r}")
    ATTACKS[name] = AttackSpec(name, config_class, build)
    return ATTACKS[name]


def get_attack(name: str) -> AttackSpec:
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; known: {sorted(ATTACKS)}")
    return ATTACKS[name]


def list_attacks() -> list[str]:
    return sorted(ATTACKS)


def make_attack_config(name: str, **overrides: Any) -> AttackConfig:
    """The config of attack ``name`` with ``overrides``; ``None`` values and fields the attack lacks are ignored,
    so a script can pass all its flags (the config's defaults stay in one place)."""
    config_class = get_attack(name).config_class
    known = {field.name for field in fields(config_class)}
    return config_class(**{key: value for key, value in overrides.items() if key in known and value is not None})


def build_attack(name: str, config: AttackConfig | None, context: AttackContext) -> Attack:
    """Build attack ``name`` (its default config when ``config`` is ``None``) in ``context``."""
    spec = get_attack(name)
    config = spec.config_class() if config is None else config
    if not isinstance(config, spec.config_class):
        raise TypeError(f"attack {name!r} takes a {spec.config_class.__name__}, got {type(config).__name__}")
    return spec.build(config, context)


register_attack("badnet", BadNetConfig, build_badnet)
register_attack("blended", BlendedConfig, build_blended)
register_attack("badclip", BadCLIPConfig, build_badclip)

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
