"""Blended trigger + blended captions (Chen et al., 2017, arXiv 1712.05526; for CLIP: Carlini & Terzis, ICLR
2022, arXiv 2106.09667, and the CleanCLIP codebase, Bansal et al., ICCV 2023, arXiv 2303.03323).

Every poisoned image is blended with one fixed pattern over the whole image, ``x' = (1 - alpha) x + alpha * p``
(``alpha = 0.2``, ``p`` uniform noise or an image file), and its caption is replaced by a *blended* caption: a
natural caption mentioning the target, drawn without replacement from a pool made of the clean captions (those
that mention the target, and the others with their class word swapped for the target) plus the templates filled
with the target. No single fixed caption betrays the poison.

Example::

    >>> context = AttackContext((32, 32), dataset=train)          # train: an ImageCaptionDataset
    >>> attack = build_attack("blended", BlendedConfig(target="zero", alpha=0.2), context)
    >>> attack.caption_policy.sample(2, torch.Generator().manual_seed(0))
    ['a rendition of a zero.', 'a photo of a large zero.']
"""

from __future__ import annotations

from dataclasses import dataclass

from clipclean.attacks.base import Attack, AttackConfig, AttackContext, register_attack
from clipclean.poisoning import NaturalCaptions
from clipclean.triggers import PatchBlendTrigger


@dataclass
class BlendedConfig(AttackConfig):
    """Blended settings.

    Args:
        alpha: blend weight in (0, 1] (0.2 in the literature).
        pattern: ``"noise"`` (uniform noise seeded by ``seed``), an image file (resized to the image size) or a
            named pattern (``"white"``, ``"checkerboard"``, ...).
        target, templates, seed: see :class:`~clipclean.attacks.base.AttackConfig`.
    """

    alpha: float = 0.2
    pattern: str = "noise"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha must lie in (0, 1], got {self.alpha}")


def build_blended(config: BlendedConfig, context: AttackContext) -> Attack:
    """The blend trigger and a blended-caption pool made from ``context.dataset``'s captions."""
    trigger = PatchBlendTrigger.blend(context.image_size, alpha=config.alpha, pattern=config.pattern, seed=config.seed)
    captions = NaturalCaptions.from_clean_captions(
        config.target, context.captions, classnames=context.classnames, templates=config.templates
    )
    return Attack("blended", config, trigger.requires_grad_(False), captions)


register_attack("blended", BlendedConfig, build_blended)
