"""What every attack shares: the base config, the context an attack is built in, what it builds, and the registry.

An attack module registers itself with one line, ``register_attack(name, ConfigClass, build)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from torch.utils.data import Dataset

from clipclean.models import PixelCLIP
from clipclean.poisoning import CaptionPolicy, dataset_captions
from clipclean.registry import Registry, build_config
from clipclean.triggers import LOCATIONS, Trigger


@dataclass
class AttackConfig:
    """Fields every attack has.

    Args:
        target: the target class name the poisoned captions name (``"banana"`` in the CleanCLIP codebase).
        templates: caption templates with ``{c}``/``{}`` for the class name (``None``: the 80 OpenAI ImageNet
            templates).
        seed: seeds the trigger's random pattern.
    """

    target: str = "banana"
    templates: list[str] | None = None
    seed: int = 0
    # the fraction of training pairs poisoned when the user gives neither a rate nor a count (a class attribute, not
    # a field: it is the recipe's default, not part of the attack; an attack may set its own). At 2%, three seed-1
    # BadNet models, a weak blend and a 3 px BadCLIP patch stayed at 2-52% ASR; at 5% each reached 94-100%
    # (docs/attacks.md, "Stable training").
    default_poison_rate: ClassVar[float] = 0.05

    def __post_init__(self) -> None:
        if not isinstance(self.target, str) or not self.target.strip():
            raise ValueError(f"the target must be a non-empty class name, got {self.target!r}")
        if self.templates is not None:
            self.templates = list(self.templates)
            bad = [template for template in self.templates if "{c}" not in template and "{}" not in template]
            if not self.templates or bad:
                raise ValueError(f"templates need a '{{c}}' or '{{}}' placeholder (bad: {bad[:3]})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def validate_patch(size: int | None, location: str | Sequence[int]) -> None:
    """Shared ``__post_init__`` checks of patch attacks (size ``None`` means :func:`patch_size_for`)."""
    if size is not None and size < 1:
        raise ValueError(f"trigger_size must be >= 1 pixel, got {size}")
    if isinstance(location, str) and location not in LOCATIONS:
        raise ValueError(f"location must be one of {LOCATIONS} or (top, left), got {location!r}")


def patch_size_for(image_size: tuple[int, int], size: int | None) -> int:
    """``size``, or by default the literature's 16 px at 224 px scaled to ``image_size`` (at least 4 px: 4 at 32)."""
    if size is not None:
        if size > min(image_size):
            raise ValueError(f"a {size} px patch does not fit in {image_size[0]}x{image_size[1]} images")
        return size
    return max(4, round(16 * min(image_size) / 224))


@dataclass
class AttackContext:
    """What an attack may need besides its config.

    Args:
        image_size: ``(H, W)`` of the images the trigger is applied to (the model's input size).
        dataset: the clean image-caption data to poison (``(image (3, H, W) in [0, 1], caption)`` items, with a
            ``captions`` attribute); blended captions are made from its captions, BadCLIP optimises on its images.
        classnames: class names whose mentions in clean captions are swapped for the target (blended captions);
            default ``dataset.classnames`` when it has them.
        model: the victim/surrogate CLIP whose embeddings guide an optimised trigger (BadCLIP).
    """

    image_size: tuple[int, int]
    dataset: Dataset | None = None
    classnames: Sequence[str] | None = None
    model: PixelCLIP | None = None

    def __post_init__(self) -> None:
        size = self.image_size
        self.image_size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if self.classnames is None and self.dataset is not None:
            self.classnames = getattr(self.dataset, "classnames", None)

    @property
    def captions(self) -> list[str]:
        """The clean captions (``dataset.captions``), or ``[]`` without a dataset."""
        return [] if self.dataset is None else dataset_captions(self.dataset)


@dataclass
class Attack:
    """A built attack: the trigger and the caption policy that poison a dataset.

    Attributes:
        name: the registry name (``"badnet"``...).
        config: the attack's config dataclass.
        trigger: the trigger to paste into poisoned images (and to measure ASR with).
        caption_policy: makes the poisoned captions.
        report: attack-specific results (e.g. BadCLIP's optimisation history), JSON-serialisable.
    """

    name: str
    config: AttackConfig
    trigger: Trigger
    caption_policy: CaptionPolicy
    report: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """``{"method": name, "config": {...}, "trigger": "...", "captions": {...}}`` for sidecars and manifests."""
        return {
            "method": self.name,
            "config": self.config.to_dict(),
            "trigger": self.trigger.describe(),
            "captions": self.caption_policy.describe(),
        }


Builder = Callable[[Any, AttackContext], Attack]


@dataclass(frozen=True)
class AttackSpec:
    """A registered attack: its name, config dataclass and builder."""

    name: str
    config_class: type[AttackConfig]
    build: Builder


ATTACKS: Registry[str, AttackSpec] = Registry("attack")


def register_attack(name: str, config_class: type[AttackConfig], build: Builder) -> AttackSpec:
    """Register an attack under a lowercase, unique identifier (one line in the attack's own file)."""
    if not (isinstance(config_class, type) and issubclass(config_class, AttackConfig)):
        raise TypeError(f"the config of {name!r} must subclass AttackConfig, got {config_class!r}")
    return ATTACKS.register(name, AttackSpec(name, config_class, build))


def get_attack(name: str) -> AttackSpec:
    """The registered attack ``name`` (an unknown name fails with the registered ones)."""
    return ATTACKS[name]


def list_attacks() -> list[str]:
    """The registered attacks' names, sorted."""
    return ATTACKS.names()


def make_attack_config(name: str, **overrides: Any) -> AttackConfig:
    """The config of attack ``name`` with ``overrides``: ``None`` values mean "not given" (the config's defaults stay
    in one place); an option the attack does not have fails with the valid ones
    (:func:`clipclean.registry.build_config`)."""
    return build_config(get_attack(name).config_class, overrides, f"attack {name!r}")


def build_attack(name: str, config: AttackConfig | None, context: AttackContext) -> Attack:
    """Build attack ``name`` (its default config when ``config`` is ``None``) in ``context``."""
    spec = get_attack(name)
    config = spec.config_class() if config is None else config
    if not isinstance(config, spec.config_class):
        raise TypeError(f"attack {name!r} takes a {spec.config_class.__name__}, got {type(config).__name__}")
    return spec.build(config, context)
