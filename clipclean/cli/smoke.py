"""``CLIPCLEAN_SMOKE=1``: every recipe, eval script and ``clipclean`` command at a tiny size.

With the environment variable set, the length of every run is capped -- training epochs at 1, outer and EM rounds at
1, optimisation steps of every kind (``--max-steps``, warmup, BadCLIP's patch, trigger inversion and the verdict,
re-inversion, the retuning attack, inner loops of the defenses) at 3 -- so the README runs top to bottom in minutes
(``tests/test_readme.py``). The numbers such a run prints mean nothing; the files it writes have the usual layout,
and its configs, saved next to every output, record the capped values. The demos cache their model under
``<demo cache>-smoke`` so that a later full-size demo never reuses a smoke model.

A field or flag is a run length when its name has the word ``epochs``, ``rounds`` or ``steps``
(``steps_per_round``, ``verdict_steps``, ``retune_steps``...) and its value is an integer; ``None`` (the method's
default) is left for the config to fill in, which is capped in turn. This module is the only place that reads the
variable; the library (``clipclean.*`` outside ``clipclean.cli``) never does.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

SMOKE_VARIABLE = "CLIPCLEAN_SMOKE"
SMOKE_CAPS = {"epochs": 1, "rounds": 1, "steps": 3}  # name word -> largest value in a smoke run

Config = TypeVar("Config")
_warned = False


def smoke_run() -> bool:
    """Whether ``CLIPCLEAN_SMOKE`` is set (``1``, ``true`` or ``yes``, as ``clipclean.cli.common.env_flag`` reads
    ``CLIPCLEAN_DEBUG``; this module imports nothing from clipclean, so that ``common`` can import it)."""
    return os.environ.get(SMOKE_VARIABLE, "").lower() in ("1", "true", "yes")


def _cap(name: str, value: Any) -> Any:
    """``value`` capped when ``name`` is a run length (see the module docstring), else unchanged."""
    if isinstance(value, bool) or not isinstance(value, int):
        return value
    words = set(name.split("_"))
    caps = [cap for word, cap in SMOKE_CAPS.items() if word in words]
    return min([value, *caps])


def _announce() -> None:
    """Say once per process that the run is a smoke run."""
    global _warned
    if not _warned:
        caps = ", ".join(f"{word} <= {cap}" for word, cap in SMOKE_CAPS.items())
        logger.warning("%s is set: run lengths capped (%s); the numbers mean nothing", SMOKE_VARIABLE, caps)
        _warned = True


def smoke_arguments(args: argparse.Namespace) -> argparse.Namespace:
    """A recipe's parsed flags with every run length capped in a smoke run (``args`` itself, changed in place)."""
    if smoke_run():
        _announce()
        for name, value in vars(args).items():
            setattr(args, name, _cap(name, value))
    return args


def smoke_config(config: Config) -> Config:
    """A config dataclass with every run-length field capped in a smoke run, nested configs included (a copy built
    with :func:`dataclasses.replace`, so ``__post_init__`` validates it again); ``config`` itself otherwise."""
    if not smoke_run():
        return config
    _announce()
    changes = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        capped = smoke_config(value) if dataclasses.is_dataclass(value) else _cap(field.name, value)
        if capped is not value:
            changes[field.name] = capped
    return dataclasses.replace(config, **changes) if changes else config


def smoke_overrides(config_class: type, overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` for ``config_class(**overrides)`` (``None`` values: the default), completed in a smoke run with
    the capped value of every field; unknown keys are left for the caller to report."""
    given = {key: value for key, value in overrides.items() if value is not None}
    if not smoke_run() or set(given) - {field.name for field in dataclasses.fields(config_class)}:
        return overrides
    capped = smoke_config(config_class(**given))
    return {field.name: getattr(capped, field.name) for field in dataclasses.fields(capped)}


def smoke_cache(path: str | Path) -> Path:
    """Where a demo caches its model: ``path``, or ``path-smoke`` in a smoke run."""
    path = Path(path)
    return path.with_name(path.name + "-smoke") if smoke_run() else path
