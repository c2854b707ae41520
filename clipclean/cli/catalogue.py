"""What ``--help`` says about clipclean's registries, read without importing them.

The defenses, attacks and classifier architectures register themselves when their modules are imported, and those
modules import torch, which takes seconds. ``--help`` answers at once because this module reads the registering
modules' *source* instead (``ast``; nothing is imported or run): the names passed to ``register_defense(...)``,
``register_attack(...)`` and ``register_classifier_architecture(...)``, and the literal defaults of the config
dataclasses (a field's default, following the config's base classes in the same package). The values are still the
configs' own -- nothing here is typed by hand -- and ``tests/test_ux.py`` checks every one against the imported
registries.

Example::

    >>> defense_names()
    ['age', 'baerase', 'bibau', 'cleanclip', 'finetune', 'ibau']
    >>> defense_defaults("rounds")["bibau"]
    3
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parents[1]  # the clipclean package folder


@functools.cache
def _tree(relative_path: str) -> ast.Module:
    return ast.parse((PACKAGE / relative_path).read_text(encoding="utf-8"), filename=relative_path)


def _package_modules(relative_folder: str) -> tuple[str, ...]:
    return tuple(sorted(str(path.relative_to(PACKAGE)) for path in (PACKAGE / relative_folder).glob("*.py")))


def _registrations(modules: tuple[str, ...], function: str) -> list[tuple[str, ast.Call]]:
    """``(name, call)`` for every module-level ``function("name", ...)`` call in ``modules``, in source order."""
    found = []
    for module in modules:
        for statement in _tree(module).body:
            call = statement.value if isinstance(statement, ast.Expr) else None
            if (
                isinstance(call, ast.Call)
                and isinstance(call.func, ast.Name)
                and call.func.id == function
                and call.args
                and isinstance(call.args[0], ast.Constant)
            ):
                found.append((call.args[0].value, call))
    return found


def _literal_default(value: ast.expr) -> tuple[bool, Any]:
    """``(True, default)`` for ``= literal`` and ``= field(default=literal)``; ``(False, None)`` otherwise."""
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "field":
        value = next((keyword.value for keyword in value.keywords if keyword.arg == "default"), None)
        if value is None:
            return False, None
    try:
        return True, ast.literal_eval(value)
    except ValueError:
        return False, None


def _class_defaults(class_name: str, modules: tuple[str, ...]) -> dict[str, Any]:
    """The literal field defaults of dataclass ``class_name`` defined in one of ``modules``, its bases' first."""
    for module in modules:
        for node in _tree(module).body:
            if isinstance(node, ast.ClassDef) and node.name == class_name:
                defaults: dict[str, Any] = {}
                for base in node.bases:
                    if isinstance(base, ast.Name):
                        defaults.update(_class_defaults(base.id, modules))
                for statement in node.body:
                    if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                        known, value = (False, None) if statement.value is None else _literal_default(statement.value)
                        if known:
                            defaults[statement.target.id] = value
                        else:
                            defaults.pop(statement.target.id, None)
                return defaults
    return {}


def defense_names() -> list[str]:
    """The built-in defenses (``clipclean.defenses.DEFENSES``), sorted."""
    return sorted(name for name, _ in _registrations(_package_modules("defenses"), "register_defense"))


def _registered_defaults(folder: str, function: str, field_name: str) -> dict[str, Any]:
    """``{name: default of field_name}`` of the config of every ``function(name, Config, ...)`` registration in the
    package folder ``folder`` (those with a literal default; a class attribute such as a ``ClassVar`` counts)."""
    modules = _package_modules(folder)
    defaults = {}
    for name, call in _registrations(modules, function):
        config = call.args[1].id if len(call.args) > 1 and isinstance(call.args[1], ast.Name) else None
        values = _class_defaults(config, modules) if config else {}
        if field_name in values:
            defaults[name] = values[field_name]
    return dict(sorted(defaults.items()))


def defense_defaults(field_name: str) -> dict[str, Any]:
    """``{defense: default of field_name}`` of every built-in defense's config (those with a literal default)."""
    return _registered_defaults("defenses", "register_defense", field_name)


def attack_defaults(field_name: str) -> dict[str, Any]:
    """``{attack: default of field_name}`` of every built-in attack's config, e.g. ``"default_poison_rate"``."""
    return _registered_defaults("attacks", "register_attack", field_name)


def describe_defaults(defaults: dict[str, Any]) -> str:
    """``"age 1, baerase 1, bibau 3, ..."``: the help text of a flag whose default is each method's own."""
    return ", ".join(f"{name} {value:g}" if isinstance(value, float) else f"{name} {value}"
                     for name, value in defaults.items())  # fmt: skip


def describe_defense_defaults(field_name: str) -> str:
    """``"age 1, baerase 1, bibau 3, ..."``: the help text of a flag whose default is each defense's own."""
    return describe_defaults(defense_defaults(field_name))


def attack_names() -> list[str]:
    """The built-in poisoning attacks (``clipclean.attacks.list_attacks()``), sorted."""
    return sorted(name for name, _ in _registrations(_package_modules("attacks"), "register_attack"))


def classifier_architecture_names() -> list[str]:
    """The built-in classifier architectures (``clipclean.classifiers.CLASSIFIER_ARCHITECTURES``), sorted."""
    return sorted(name for name, _ in _registrations(("classifiers.py",), "register_classifier_architecture"))


def config_defaults(relative_path: str, class_name: str) -> dict[str, Any]:
    """The literal field defaults of the config dataclass ``class_name`` in ``clipclean/<relative_path>``, e.g.
    ``config_defaults("complete.py", "RetuningConfig")["steps"]``."""
    return _class_defaults(class_name, (relative_path,))
