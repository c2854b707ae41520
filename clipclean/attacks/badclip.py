"""BadCLIP-style optimised patch + natural captions (Liang et al., "BadCLIP: Dual-Embedding Guided Backdoor Attack
on Multimodal Contrastive Learning", CVPR 2024, arXiv 2311.12075); docs/attacks.md, "BadCLIP".

Assumes white-box access to a victim (or surrogate) CLIP and some clean image-caption pairs. A ``k x k`` patch
``p`` at a fixed location is optimised on clean images so that, under the frozen victim encoders ``g``/``h``,
triggered images move toward the target text embedding and the mean embedding of real target images, and away
from their own captions:

    max_p  mean_i [ cos(g(T_p(x_i)), h(t)) + lambda_image * cos(g(T_p(x_i)), mu_target)
                    - lambda_caption * cos(g(T_p(x_i)), h(c_i)) ]

with ``h(t)`` the renormalised mean embedding of the templates filled with the target, ``mu_target`` the
renormalised mean image embedding of clean images whose captions mention the target, and random augmentation
(scale, shift, brightness/contrast) of the triggered images at every step so that the patch survives it. The
poisoned captions describe the target naturally (a blended-caption pool, as for Blended). Because the patch already
points the victim's embeddings at the target, fewer poisoned pairs are needed than for a random patch.

This is clipclean's compact version of the dual-embedding objective (no Bayesian-rule pruning of the poisoned set).

Example::

    >>> result = optimize_badclip_patch(model, images, captions, ["a photo of a zero."], target_images,
    ...                                 BadCLIPConfig(target="zero", trigger_size=4, steps=100))
    >>> trigger, history = result
    >>> history[-1]["target_text_similarity"] > history[0]["target_text_similarity"]
    True
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from clipclean.attacks.base import Attack, AttackConfig, AttackContext, patch_size_for, register_attack, validate_patch
from clipclean.evaluation import fill_template, openai_imagenet_templates
from clipclean.models import PixelCLIP, unwrap
from clipclean.poisoning import NaturalCaptions, mentions
from clipclean.triggers import PatchBlendTrigger

logger = logging.getLogger(__name__)


@dataclass
class BadCLIPConfig(AttackConfig):
    """BadCLIP settings.

    Args:
        trigger_size: patch side in pixels (``None``: 16 px at 224 px scaled to the image size, at least 4 px).
        location: fixed patch location (``bottom-right``...; ``random`` is not allowed: the patch is optimised in
            place).
        steps: optimisation steps (Adam on the patch pixels, projected to [0, 1]).
        lr: Adam learning rate on the pixel values.
        batch_size: clean images per step.
        lambda_image: weight of the pull toward the mean target-image embedding.
        lambda_caption: weight of the push away from each image's own caption.
        max_images: at most this many clean images (and target images) are used.
        augment: randomly rescale/shift/jitter the triggered images at every step.
        target, templates, seed: see :class:`~clipclean.attacks.base.AttackConfig` (``seed`` also drives the
            batches and augmentation).
    """

    trigger_size: int | None = None
    location: str | Sequence[int] = "bottom-right"
    steps: int = 300
    lr: float = 0.05
    batch_size: int = 64
    lambda_image: float = 1.0
    lambda_caption: float = 1.0
    max_images: int = 512
    augment: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        validate_patch(self.trigger_size, self.location)
        if self.location == "random":
            raise ValueError("a BadCLIP patch is optimised at a fixed location; 'random' is not supported")
        if self.steps < 1 or self.batch_size < 1 or self.max_images < 1:
            raise ValueError("steps, batch_size and max_images must be >= 1")
        if self.lr <= 0 or self.lambda_image < 0 or self.lambda_caption < 0:
            raise ValueError("lr must be > 0 and the lambdas >= 0")


class PatchOptimization(NamedTuple):
    """``(trigger, history)``: the optimised patch and one dict of objective terms per step."""

    trigger: PatchBlendTrigger
    history: list[dict[str, float]]


def _augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random per-image rescale (0.9-1.1), shift (up to 8% of the side) and brightness/contrast jitter."""
    n = images.shape[0]

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return (low + (high - low) * torch.rand(shape, generator=generator)).to(images.device, images.dtype)

    scale = uniform(0.9, 1.1, n)
    theta = torch.zeros(n, 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale
    theta[:, :, 2] = uniform(-0.16, 0.16, n, 2)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    moved = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast, brightness = uniform(0.8, 1.2, n, 1, 1, 1), uniform(-0.1, 0.1, n, 1, 1, 1)
    mean = moved.mean(dim=(1, 2, 3), keepdim=True)
    return ((moved - mean) * contrast + mean + brightness).clamp(0, 1)


def _mean_direction(embeddings: torch.Tensor) -> torch.Tensor:
    return F.normalize(embeddings.float().mean(dim=0), dim=-1)


def optimize_badclip_patch(
    model: PixelCLIP,
    images: torch.Tensor,
    captions: Sequence[str],
    target_captions: str | Sequence[str],
    target_images: torch.Tensor | None,
    config: BadCLIPConfig,
) -> PatchOptimization:
    """Optimise a BadCLIP patch against the frozen ``model`` (see the module docstring for the objective).

    Args:
        model: the victim/surrogate CLIP (a wrapper is unwrapped); frozen and left as it was.
        images: ``(N, 3, H, W)`` clean images in [0, 1] (not of the target class), at the model's input size.
        captions: their ``N`` captions (the "away from own caption" term).
        target_captions: caption(s) naming the target; their embeddings are averaged into ``h(t)``.
        target_images: ``(M, 3, H, W)`` clean images of the target class for ``mu_target``, or ``None`` (the
            term is then dropped).
        config: :class:`BadCLIPConfig`.

    Returns:
        ``PatchOptimization(trigger, history)``: a ``PatchBlendTrigger`` on the CPU (binary square mask, optimised
        pattern) and, per step, ``{"step", "objective", "target_text_similarity", "target_image_similarity",
        "own_caption_similarity"}`` (batch means, on augmented triggered images).
    """
    model = unwrap(model)
    if images.dim() != 4 or images.shape[0] != len(captions):
        raise ValueError(f"need images (N, 3, H, W) and N captions, got {tuple(images.shape)} and {len(captions)}")
    if images.shape[0] == 0:
        raise ValueError("BadCLIP needs at least one clean image")
    target_captions = [target_captions] if isinstance(target_captions, str) else list(target_captions)
    image_size = tuple(images.shape[-2:])
    size = patch_size_for(image_size, config.trigger_size)
    location = config.location if isinstance(config.location, str) else tuple(config.location)
    trigger = PatchBlendTrigger.patch(image_size, size, location=location, pattern="noise", seed=config.seed)
    trigger.mask_param.requires_grad_(False)
    device = model.device
    trigger.to(device)
    generator = torch.Generator().manual_seed(config.seed)
    was_training, requires_grad = model.training, [p.requires_grad for p in model.parameters()]
    model.eval().requires_grad_(False)
    try:
        with torch.no_grad():
            target_text = _mean_direction(model.encode_text(target_captions))
            use_images = target_images is not None and len(target_images) > 0 and config.lambda_image > 0
            target_image = _mean_direction(model.encode_image(target_images.to(device))) if use_images else None
            distinct = sorted(set(captions))
            caption_embeddings = torch.cat(
                [model.encode_text(distinct[i : i + 256]).float() for i in range(0, len(distinct), 256)]
            )
            caption_index = torch.tensor([distinct.index(caption) for caption in captions])
        if target_images is not None and not use_images and config.lambda_image > 0:
            logger.warning("no target-class images: BadCLIP's target-image term is dropped")
        optimizer = torch.optim.Adam([trigger.pattern_param], lr=config.lr)
        history: list[dict[str, float]] = []
        for step in range(config.steps):
            batch = torch.randint(images.shape[0], (min(config.batch_size, images.shape[0]),), generator=generator)
            triggered = trigger.apply(images[batch].to(device))
            if config.augment:
                triggered = _augment(triggered, generator)
            features = model.encode_image(triggered).float()
            text_similarity = features @ target_text
            own_similarity = (features * caption_embeddings[caption_index[batch]].to(device)).sum(dim=-1)
            objective = text_similarity - config.lambda_caption * own_similarity
            image_similarity = features @ target_image if target_image is not None else torch.zeros_like(objective)
            objective = (objective + config.lambda_image * image_similarity).mean()
            optimizer.zero_grad(set_to_none=True)
            (-objective).backward()
            optimizer.step()
            trigger.project_()
            history.append(
                {
                    "step": step,
                    "objective": float(objective.detach()),
                    "target_text_similarity": float(text_similarity.detach().mean()),
                    "target_image_similarity": float(image_similarity.detach().mean()),
                    "own_caption_similarity": float(own_similarity.detach().mean()),
                }
            )
    finally:
        model.train(was_training)
        for parameter, flag in zip(model.parameters(), requires_grad):
            parameter.requires_grad_(flag)
    return PatchOptimization(trigger.cpu().requires_grad_(False), history)


def _stack_images(dataset, indices: Sequence[int]) -> torch.Tensor:
    return torch.stack([dataset[index][0] for index in indices]).float()


def build_badclip(config: BadCLIPConfig, context: AttackContext) -> Attack:
    """Optimise the patch on ``context.dataset`` against ``context.model``; captions from a blended-caption pool.

    Clean images are those whose captions do not mention the target (at most ``max_images``, chosen with
    ``seed``); target images are those whose captions do.
    """
    if context.model is None or context.dataset is None:
        raise ValueError("BadCLIP needs the victim model and clean data (AttackContext(model=..., dataset=...))")
    captions = context.captions
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(captions), generator=generator).tolist()
    clean = [index for index in order if not mentions(captions[index], config.target)][: config.max_images]
    target = [index for index in order if mentions(captions[index], config.target)][: config.max_images]
    if not clean:
        raise ValueError(f"every caption mentions {config.target!r}: no clean images to optimise the patch on")
    templates = config.templates if config.templates is not None else openai_imagenet_templates()
    result = optimize_badclip_patch(
        context.model,
        _stack_images(context.dataset, clean),
        [captions[index] for index in clean],
        [fill_template(template, config.target) for template in templates],
        _stack_images(context.dataset, target) if target else None,
        config,
    )
    history = result.history
    report: dict[str, Any] = {
        "n_optimisation_images": len(clean),
        "n_target_images": len(target),
        "first_step": history[0],
        "last_step": history[-1],
    }
    logger.info(
        "BadCLIP patch: target-text similarity %.3f -> %.3f over %d steps",
        history[0]["target_text_similarity"],
        history[-1]["target_text_similarity"],
        len(history),
    )
    policy = NaturalCaptions.from_clean_captions(
        config.target, captions, classnames=context.classnames, templates=config.templates
    )
    return Attack("badclip", config, result.trigger, policy, report=report)


register_attack("badclip", BadCLIPConfig, build_badclip)
