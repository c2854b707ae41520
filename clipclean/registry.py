"""One registry for every pluggable part of clipclean, with one rule for unknown names and options.

Every table of methods -- defenses, attacks, trigger families, classifier architectures (keyed by name), and the
inverter and defense objective of each kind of model (keyed by model class) -- is a :class:`Registry`. The rule is
the same everywhere: a name is registered once, in the method's own file, by one ``register`` call; looking up a
name that is not registered, or building a config with an option it does not have, raises
:class:`UnknownNameError`, whose message names the valid ones.

Example::

    >>> from clipclean.registry import Registry, build_config
    >>> METHODS = Registry("method")
    >>> METHODS.register("fast", FastConfig)
    >>> METHODS["slow"]
    UnknownNameError: unknown method 'slow'; registered: ['fast']
    >>> build_config(FastConfig, {"lr": 1e-3, "steps": None})   # None means "not given": the default stays
    >>> build_config(FastConfig, {"lr_typo": 1e-3})
    UnknownNameError: FastConfig has no option(s) ['lr_typo']; options: ['lr', 'steps']
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from clipclean.errors import ClipcleanError

__all__ = ["Registry", "UnknownNameError", "build_config", "import_modules"]

Key = TypeVar("Key")
Value = TypeVar("Value")

_NAME_PATTERN = re.compile(r"^[a-z0-9]+([_-][a-z0-9]+)*$")


class UnknownNameError(ClipcleanError, KeyError, ValueError):
    """A name or option that is not registered; the message names the valid ones. A ``KeyError`` (it is a failed
    lookup) and a ``ValueError`` (it is a bad value given by the caller)."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


def _label(key: Any) -> str:
    return key.__name__ if isinstance(key, type) else repr(key)


class Registry(Mapping, Generic[Key, Value]):
    """A read-only mapping ``key -> value`` that methods add themselves to with :meth:`register`.

    Keys are lowercase names (letters, digits, single ``-`` or ``_`` between them) or, for tables per kind of model,
    classes (:meth:`lookup_class` then walks a class's hierarchy).

    Args:
        what: what the table holds, for messages (``"defense"``, ``"attack"``...).
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[Key, Value] = {}

    def register(self, key: Key, value: Value) -> Value:
        """Add ``value`` under ``key`` (a lowercase name or a class); a key is registered once. Returns ``value``."""
        if isinstance(key, str):
            if not _NAME_PATTERN.match(key):
                raise ValueError(f"{self.what} names are lowercase identifiers, got {key!r}")
        elif not isinstance(key, type):
            raise TypeError(f"{self.what} keys are names or classes, got {key!r}")
        if key in self._entries:
            raise ValueError(f"{self.what} {_label(key)} is already registered")
        self._entries[key] = value
        return value

    def unregister(self, key: Key) -> Value:
        """Remove ``key`` (for tests that register a method of their own); returns its value."""
        return self._entries.pop(key)

    def __getitem__(self, key: Key) -> Value:
        try:
            return self._entries[key]
        except (KeyError, TypeError):
            raise UnknownNameError(f"unknown {self.what} {_label(key)}; registered: {self.names()}") from None

    def __contains__(self, key: object) -> bool:
        try:
            return key in self._entries
        except TypeError:  # an unhashable key is not registered
            return False

    def __iter__(self) -> Iterator[Key]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}, {self.names()})"

    def names(self) -> list[str]:
        """The registered keys, sorted (class keys by class name)."""
        return sorted(_label(key) if isinstance(key, type) else key for key in self._entries)

    def lookup_class(self, cls: type) -> Value:
        """The value of the first class of ``cls.__mro__`` that is registered (a subclass inherits its base's)."""
        for base in cls.__mro__:
            if base in self._entries:
                return self._entries[base]
        raise UnknownNameError(f"no {self.what} is registered for {cls.__name__}; registered: {self.names()}")


def build_config(config_class: type, overrides: Mapping[str, Any] | None = None, what: str | None = None) -> Any:
    """``config_class(**overrides)`` for a config dataclass: ``None`` values mean "not given" (the field keeps its
    default, which lives only in the dataclass); an option the dataclass does not have raises
    :class:`UnknownNameError` naming the valid ones. ``what`` names the owner in that message (default: the class).
    """
    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    options = [field.name for field in dataclasses.fields(config_class)]
    unknown = sorted(set(given) - set(options))
    if unknown:
        owner = what or config_class.__name__
        raise UnknownNameError(f"{owner} has no option(s) {unknown}; options: {options}")
    return config_class(**given)


def import_modules(package: str, path: Iterable[str]) -> None:
    """Import every module of ``package`` (its ``__name__`` and ``__path__``), so each method file registers itself
    when the package is imported: adding a method is adding a file."""
    for module in pkgutil.iter_modules(path):
        importlib.import_module(f"{package}.{module.name}")
