"""CleanCLIP: multimodal fine-tuning plus unimodal self-supervision (Bansal et al., ICCV 2023, arXiv 2303.03323).

A backdoor in CLIP lives in a *spurious association* between the trigger and the target caption. CleanCLIP
fine-tunes on clean pairs with the CLIP loss **and** a self-supervised loss inside each modality, which makes
each encoder learn its modality's features on its own and weakens the cross-modal shortcut::

    L = clip_weight * L_clip(x, c) + unimodal_weight * [NT-Xent(g(x), g(aug(x))) + NT-Xent(h(c), h(aug(c)))]

where ``g``/``h`` are the image/text encoders and ``NT-Xent(a, b)`` is the symmetric InfoNCE between two views
(positives on the diagonal) at the model's own temperature, as in the authors' code; it is computed with
open_clip's ``ClipLoss`` so the negatives come from the global batch across processes.

What it assumes: only the clean set ``D`` (no trigger, no target). Reference recipe at scale (the paper's):
100K pairs, batch 64, 10 epochs, lr 1e-5, both towers tuned.

Approximations (documented on purpose):

* image augmentation is a torch re-implementation in pixel space of random resized crop, horizontal flip and
  colour jitter (brightness, contrast, saturation), not the AutoAugment policy of the paper;
* text augmentation works on **token ids** because batches carry no caption strings: random *token dropout*
  and *adjacent swaps* of the non-special tokens, re-packed between the kept start-of-text (SOT) and
  end-of-text (EOT) tokens, with zero padding after EOT (open_clip's ``SimpleTokenizer`` layout; EOT is found
  as the row's arg-max token id, exactly as open_clip's text tower pools). Tokens are BPE pieces, so this
  approximates EDA's word deletion/swap (no synonym replacement or insertion);
* the views' NT-Xent has no negatives *within* a view (CleanCLIP's implementation, not SimCLR's 2N-2 form).

The image augmentation's defaults are the paper's, for natural images. On images that a flip or a half-image crop
turns into another class (digits, text, many medical images) they cost clean accuracy at *every* learning rate:
measured on the digits CLIPs (benchmarks/README.md, "The learning-rate grid widened"), 9-38 points in 72 steps at
lr 3e-5, and 0.2-1.0 with ``crop_scale=(1.0, 1.0), flip_probability=0, color_jitter=0``. Set ``flip_probability``
and ``crop_scale`` for your data.

Example::

    >>> defense = build_defense("cleanclip", model, DefenseContext(), {"unimodal_weight": 1.0})
    >>> losses, _ = defense.forward(model, (images, tokens))     # images (B, 3, H, W) in [0, 1]
    >>> sorted(losses)
    ['clip_clean', 'loss', 'nt_xent_image', 'nt_xent_text']
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from clipclean.defenses.base import Batch, Defense, DefenseConfig, DefenseContext, register_defense
from clipclean.models import PixelCLIP, PixelModel, unwrap

logger = logging.getLogger(__name__)


@dataclass
class CleanCLIPConfig(DefenseConfig):
    """CleanCLIP hyper-parameters.

    Args:
        rounds: outer rounds. Default 1.
        epochs: passes over the defender data per round. Default 2.
        lr: learning rate (AdamW, set by the recipe). Default 1e-4.
        tune: ``"all"`` (default: both towers, as the paper; the text NT-Xent needs a trainable text tower)
            or ``"image"``.
        clip_weight: weight of the multimodal CLIP loss. Default 1.
        unimodal_weight: ``lambda``, weight of the two unimodal NT-Xent terms. Default 1.
        crop_scale: ``(min, max)`` area fraction of the random resized crop. Default ``(0.5, 1.0)``.
        flip_probability: probability of a horizontal flip. Default 0.5.
        color_jitter: strength ``j`` of brightness/contrast/saturation factors drawn from ``[1 - j, 1 + j]``.
            Default 0.4.
        token_dropout: probability of dropping each non-special caption token. Default 0.1.
        token_swap: probability of one random adjacent swap of the kept tokens per caption. Default 0.1.
        seed: seeds the augmentations (offset by the process rank). Default 0.
    """

    tune: str = "all"
    clip_weight: float = 1.0
    unimodal_weight: float = 1.0
    crop_scale: tuple[float, float] = (0.5, 1.0)
    flip_probability: float = 0.5
    color_jitter: float = 0.4
    token_dropout: float = 0.1
    token_swap: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.crop_scale = tuple(float(v) for v in self.crop_scale)
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must be (min, max) with 0 < min <= max <= 1, got {self.crop_scale}")
        if self.clip_weight < 0 or self.unimodal_weight < 0:
            raise ValueError("clip_weight and unimodal_weight must be >= 0")
        for name in ("flip_probability", "token_dropout", "token_swap"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 <= self.color_jitter < 1:
            raise ValueError(f"color_jitter must be in [0, 1), got {self.color_jitter}")


def augment_images(
    images: torch.Tensor,
    generator: torch.Generator,
    crop_scale: tuple[float, float] = (0.5, 1.0),
    flip_probability: float = 0.5,
    color_jitter: float = 0.4,
) -> torch.Tensor:
    """Random resized crop, horizontal flip and colour jitter of ``(B, 3, H, W)`` images in [0, 1] (same shape).

    The random draws come from ``generator`` (a CPU generator); the crop keeps aspect ratios in [3/4, 4/3] and is
    resampled bilinearly back to ``(H, W)``. Not differentiable with respect to the random parameters.
    """
    batch = images.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(batch, generator=generator)

    area = uniform(*crop_scale)
    log_ratio = uniform(math.log(3 / 4), math.log(4 / 3))
    width = (area * log_ratio.exp()).sqrt().clamp(max=1.0)  # fractions of the side
    height = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
    centre_x = (1 - width) * uniform(-1.0, 1.0)
    centre_y = (1 - height) * uniform(-1.0, 1.0)
    flip = torch.where(torch.rand(batch, generator=generator) < flip_probability, -1.0, 1.0)
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = width * flip, centre_x
    theta[:, 1, 1], theta[:, 1, 2] = height, centre_y
    theta = theta.to(device=images.device, dtype=images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)

    shape = (batch, 1, 1, 1)
    brightness, contrast, saturation = (
        uniform(1 - color_jitter, 1 + color_jitter).view(shape).to(out) for _ in range(3)
    )
    out = (out * brightness).clamp(0, 1)
    mean_luminance = _luminance(out).mean(dim=(2, 3), keepdim=True)
    out = ((out - mean_luminance) * contrast + mean_luminance).clamp(0, 1)
    luminance = _luminance(out)
    return (luminance + (out - luminance) * saturation).clamp(0, 1)


def _luminance(images: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 grey level ``(B, 1, H, W)`` of RGB images ``(B, 3, H, W)``."""
    return 0.299 * images[:, 0:1] + 0.587 * images[:, 1:2] + 0.114 * images[:, 2:3]


def augment_tokens(
    tokens: torch.Tensor, generator: torch.Generator, dropout: float = 0.1, swap: float = 0.1
) -> torch.Tensor:
    """Token dropout and adjacent swaps of ``(B, L)`` caption token ids, keeping SOT and EOT.

    Each row is ``[SOT, t_1, ..., t_n, EOT, 0, ...]`` (open_clip's layout; EOT is the row's arg-max id). Every
    ``t_i`` is dropped with probability ``dropout`` (at least one is kept), then with probability ``swap`` one
    random pair of neighbouring kept tokens is exchanged; the row is re-packed as ``[SOT, kept..., EOT, 0...]``.
    """
    device, tokens = tokens.device, tokens.cpu()  # a short Python loop over rows: cheaper on the CPU
    out = torch.zeros_like(tokens)
    eot_positions = tokens.argmax(dim=-1).tolist()
    for row, eot in enumerate(eot_positions):
        sequence = tokens[row]
        content = sequence[1:eot]
        if content.numel() > 0:
            keep = torch.rand(content.numel(), generator=generator) >= dropout
            if not keep.any():
                keep[int(torch.randint(content.numel(), (1,), generator=generator))] = True
            content = content[keep]
            if content.numel() > 1 and float(torch.rand(1, generator=generator)) < swap:
                i = int(torch.randint(content.numel() - 1, (1,), generator=generator))
                content = content.clone()
                content[[i, i + 1]] = content[[i + 1, i]]
        packed = torch.cat([sequence[:1], content, sequence[eot : eot + 1]])
        out[row, : packed.numel()] = packed
    return out.to(device)


class CleanCLIP(Defense):
    """CleanCLIP fine-tuning (see the module docstring).

    One forward pass through the (possibly DDP-wrapped) model embeds the stacked ``[x; aug(x)]`` images with the
    stacked ``[c; aug(c)]`` captions, so gradient synchronisation sees a single graph.
    """

    def __init__(self, model: PixelCLIP, config: CleanCLIPConfig, context: DefenseContext) -> None:
        if not isinstance(unwrap(model, PixelModel), PixelCLIP):
            raise TypeError(
                "CleanCLIP is inherently multimodal (it needs captions and a text tower); it does not apply to an "
                "image classifier: use finetune, ibau, baerase or bibau"
            )
        super().__init__(model, config, context)
        self.generator = torch.Generator().manual_seed(config.seed + 1000 * context.rank)

    def augment(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The augmented views ``(aug(x), aug(c))`` of a batch."""
        config = self.config
        with torch.no_grad():
            images = augment_images(
                images, self.generator, config.crop_scale, config.flip_probability, config.color_jitter
            )
            tokens = augment_tokens(tokens, self.generator, config.token_dropout, config.token_swap)
        return images, tokens

    def loss(self, model: nn.Module, batch: Batch) -> tuple[dict[str, torch.Tensor], dict]:
        images, tokens = batch
        augmented_images, augmented_tokens = self.augment(images, tokens)
        image_features, text_features, logit_scale = model(
            torch.cat([images, augmented_images]), torch.cat([tokens, augmented_tokens])
        )
        clean_image, augmented_image = image_features.chunk(2)
        clean_text, augmented_text = text_features.chunk(2)
        losses = {
            "clip_clean": self.clip_loss(clean_image, clean_text, logit_scale),
            "nt_xent_image": self.clip_loss(clean_image, augmented_image, logit_scale),
            "nt_xent_text": self.clip_loss(clean_text, augmented_text, logit_scale),
        }
        losses["loss"] = self.config.clip_weight * losses["clip_clean"] + self.config.unimodal_weight * (
            losses["nt_xent_image"] + losses["nt_xent_text"]
        )
        return losses, {}

    def method_state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_method_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


register_defense("cleanclip", CleanCLIPConfig, CleanCLIP)
