"""BadNet patch + template captions (Gu et al., 2017, arXiv 1708.06733; for CLIP: Carlini & Terzis, ICLR 2022,
arXiv 2106.09667, and the CleanCLIP codebase, Bansal et al., ICCV 2023, arXiv 2303.03323).

A ``k x k`` patch of uniform noise (or a solid colour / checkerboard) is pasted into each poisoned image, at a
fixed corner or at a random location per image, and the caption is replaced by a template filled with the target
class name. The CleanCLIP codebase uses a 16 px noise patch at 224 px with the 80 OpenAI ImageNet templates.

Example::

    >>> attack = build_attack("badnet", BadNetConfig(target="zero", trigger_size=4), AttackContext((32, 32)))
    >>> attack.trigger(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 3, 32, 32])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from clipclean.attacks.base import Attack, AttackConfig, AttackContext, patch_size_for, register_attack, validate_patch
from clipclean.poisoning import TemplateCaptions
from clipclean.triggers import PatchBlendTrigger


@dataclass
class BadNetConfig(AttackConfig):
    """BadNet settings.

    Args:
        trigger_size: patch side in pixels (``None``: 16 px at 224 px scaled to the image size, at least 4 px).
        location: ``top-left``, ``top-right``, ``bottom-left``, ``bottom-right``, ``center``, ``random`` (a new
            place per image) or ``(top, left)``.
        pattern: ``"noise"`` (uniform noise seeded by ``seed``), ``"white"``, ``"black"``, ``"checkerboard"`` or an
            RGB triple in [0, 1].
        target, templates, seed: see :class:`~clipclean.attacks.base.AttackConfig`.
    """

    trigger_size: int | None = None
    location: str | Sequence[int] = "bottom-right"
    pattern: str | Sequence[float] = "noise"

    def __post_init__(self) -> None:
        super().__post_init__()
        validate_patch(self.trigger_size, self.location)


def build_badnet(config: BadNetConfig, context: AttackContext) -> Attack:
    """The BadNet patch trigger (fixed mask, not learnable) and template captions."""
    size = patch_size_for(context.image_size, config.trigger_size)
    location = config.location if isinstance(config.location, str) else tuple(config.location)
    pattern = config.pattern if isinstance(config.pattern, str) else list(config.pattern)
    trigger = PatchBlendTrigger.patch(context.image_size, size, location=location, pattern=pattern, seed=config.seed)
    return Attack("badnet", config, trigger.requires_grad_(False), TemplateCaptions(config.target, config.templates))


register_attack("badnet", BadNetConfig, build_badnet)
