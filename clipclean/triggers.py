"""Backdoor triggers: one interface for attacks, inversion and unlearning.

A :class:`Trigger` maps un-normalised images ``x`` in [0, 1], shape ``(B, 3, H, W)``, to triggered images
of the same shape and range. The families are

* :class:`PatchBlendTrigger`: ``T(x) = (1 - m) * x + m * p`` with mask ``m`` in [0, 1] and pattern ``p`` in
  [0, 1]. A BadNet patch is a binary ``k x k`` mask (fixed corner/centre or a random location per image),
  a Blended trigger is a constant ``m = alpha`` over the whole image, a BadCLIP patch is an optimised
  pattern under a square mask, and an *inverted* trigger is a free ``m = sigmoid(a)``, ``p = sigmoid(b)``
  under a hard mask budget.
* :class:`AdditiveTrigger`: ``T(x) = clamp(x + delta, 0, 1)`` with ``||delta||_inf <= eps`` (also SIG).
* :class:`WarpTrigger`: WaNet-style ``T(x) = grid_sample(x, identity + flow)`` with a smooth bounded flow.

Every trigger is an ``nn.Module`` whose parameters are differentiable (inversion optimises them), and
serialises to the **trigger file format**: ``NAME.json`` (family, scalar config, free-form metadata) next to
``NAME.safetensors`` (its tensors). No pickle is involved in either direction.

Example::

    >>> trigger = PatchBlendTrigger.patch(image_size=32, size=4, location="bottom-right", pattern="noise")
    >>> poisoned = trigger(torch.rand(8, 3, 32, 32))
    >>> save_trigger(trigger, "out/trigger", metadata={"attack": "badnet", "target": "banana"})
    >>> same = load_trigger("out/trigger.json")
"""

from __future__ import annotations

import json
import logging
import math
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from clipclean.fileio import atomic_write, to_jsonable
from clipclean.registry import Registry, UnknownNameError

logger = logging.getLogger(__name__)

TRIGGER_FORMAT = "clipclean-trigger"
TRIGGER_FORMAT_VERSION = 1
TRIGGER_FAMILIES: Registry[str, type[Trigger]] = Registry("trigger family")

Size = int | Sequence[int]
LOCATIONS = ("top-left", "top-right", "bottom-left", "bottom-right", "center", "random")


def register_trigger_family(name: str):
    """Class decorator registering a :class:`Trigger` subclass under a lowercase, unique family name."""

    def decorator(cls: type[Trigger]) -> type[Trigger]:
        TRIGGER_FAMILIES.register(name, cls)
        cls.family = name
        return cls

    return decorator


def _pair(size: Size) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


def _check_images(images: torch.Tensor, image_size: tuple[int, int]) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"triggers act on images of shape (B, 3, H, W), got {tuple(images.shape)}")
    if tuple(images.shape[-2:]) != image_size:
        raise ValueError(
            f"this trigger is defined for {image_size[0]}x{image_size[1]} images but got "
            f"{images.shape[-2]}x{images.shape[-1]}: apply triggers after resizing to the model's input size"
        )


def _random_pattern(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=generator)


def _clamp_straight_through(values: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``values.clamp(low, high)`` in the forward pass, identity gradient in the backward pass.

    ``clamp`` has a zero gradient at its bounds, so a binary mask (all ones) or a solid white/black pattern
    would never move under projected gradient steps; :meth:`Trigger.project_` keeps the values feasible instead.
    """
    return values + (values.clamp(low, high) - values).detach()


def _logit(values: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    values = values.clamp(eps, 1 - eps)
    return torch.log(values) - torch.log1p(-values)


class Trigger(nn.Module):
    """Base class: ``apply(images, generator=None) -> triggered images``.

    Subclasses implement :meth:`apply`, :meth:`config` (JSON-serialisable scalars), :meth:`tensors`
    (materialised tensors to save), :meth:`from_saved`, and may implement :meth:`project_` (in-place
    projection onto the feasible set after a gradient step) and :meth:`visual_panels` (for PNGs).
    """

    family: ClassVar[str] = ""

    def __init__(self, image_size: Size) -> None:
        super().__init__()
        self.image_size = _pair(image_size)

    def apply(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(images, generator=generator)

    def config(self) -> dict[str, Any]:
        return {"image_size": list(self.image_size)}

    def tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @classmethod
    def from_saved(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Trigger:
        raise NotImplementedError

    @torch.no_grad()
    def project_(self) -> None:
        """Project parameters onto the feasible set in place (no-op by default)."""

    def visual_panels(self) -> list[tuple[str, torch.Tensor]]:
        """``(title, image (3, H, W) in [0, 1])`` panels that show the trigger itself."""
        return []

    def describe(self) -> str:
        return f"{self.family} trigger {self.config()}"


@register_trigger_family("patch_blend")
class PatchBlendTrigger(Trigger):
    """``T(x) = (1 - m) * x + m * p``: BadNet patches, Blended triggers, BadCLIP patches, inverted triggers.

    Args:
        mask: ``(1, h, w)`` values in [0, 1] (or logits when ``parametrization="logit"``).
        pattern: ``(3, h, w)`` values in [0, 1] (or logits).
        image_size: ``(H, W)`` of the images the trigger is applied to; ``h <= H``, ``w <= W``.
        position: ``(top, left)`` of the ``h x w`` patch, or ``"random"`` for a uniformly random location
            per image (drawn from the ``generator`` given to :meth:`apply`, for reproducible evaluation).
        parametrization: ``"direct"`` (values, clamped to [0, 1] by :meth:`project_`) or ``"logit"``
            (``m = sigmoid(a)``, ``p = sigmoid(b)``: unconstrained, used by inversion).
        mask_budget: optional hard bound on the mean of the full-image mask (fraction of the image the
            trigger may cover). A mask over budget is scaled down to it, differentiably.
        learnable: make mask and pattern ``nn.Parameter`` s (default True: triggers are optimisable).
    """

    def __init__(
        self,
        mask: torch.Tensor,
        pattern: torch.Tensor,
        image_size: Size,
        position: tuple[int, int] | str = (0, 0),
        parametrization: str = "direct",
        mask_budget: float | None = None,
        learnable: bool = True,
    ) -> None:
        super().__init__(image_size)
        mask = torch.as_tensor(mask, dtype=torch.float32)
        pattern = torch.as_tensor(pattern, dtype=torch.float32)
        if mask.dim() == 2:
            mask = mask.unsqueeze(0)
        if mask.dim() != 3 or mask.shape[0] != 1:
            raise ValueError(f"mask must have shape (1, h, w), got {tuple(mask.shape)}")
        if pattern.dim() != 3 or pattern.shape[0] != 3 or pattern.shape[1:] != mask.shape[1:]:
            raise ValueError(f"pattern must have shape (3, h, w) = (3, {mask.shape[1]}, {mask.shape[2]})")
        h, w = mask.shape[1:]
        height, width = self.image_size
        if h > height or w > width:
            raise ValueError(f"a {h}x{w} trigger does not fit in {height}x{width} images")
        if parametrization not in ("direct", "logit"):
            raise ValueError(f"parametrization must be 'direct' or 'logit', got {parametrization!r}")
        if isinstance(position, str):
            if position != "random":
                position = _corner_position(position, (h, w), self.image_size)
        else:
            top, left = (int(v) for v in position)
            if not (0 <= top <= height - h and 0 <= left <= width - w):
                raise ValueError(f"position {(top, left)} puts the {h}x{w} patch outside {height}x{width}")
            position = (top, left)
        if mask_budget is not None and not 0 < mask_budget <= 1:
            raise ValueError(f"mask_budget must be in (0, 1], got {mask_budget}")
        if not (torch.isfinite(mask).all() and torch.isfinite(pattern).all()):
            raise ValueError("mask and pattern must be finite (they hold NaN or infinite values)")
        out_of_range = mask.min() < 0 or mask.max() > 1 or pattern.min() < 0 or pattern.max() > 1
        if parametrization == "direct" and out_of_range:
            raise ValueError("direct mask and pattern values must lie in [0, 1]")
        self.position = position
        self.parametrization = parametrization
        self.mask_budget = mask_budget
        if learnable:
            self.mask_param = nn.Parameter(mask.clone())
            self.pattern_param = nn.Parameter(pattern.clone())
        else:
            self.register_buffer("mask_param", mask.clone())
            self.register_buffer("pattern_param", pattern.clone())

    # ---- constructors -------------------------------------------------------------------------------
    @classmethod
    def patch(
        cls,
        image_size: Size,
        size: int,
        location: str | tuple[int, int] = "bottom-right",
        pattern: str | Sequence[float] | torch.Tensor = "noise",
        seed: int = 0,
    ) -> PatchBlendTrigger:
        """A BadNet patch: binary ``size x size`` mask with a noise / solid / checkerboard pattern.

        ``location``: one of ``top-left, top-right, bottom-left, bottom-right, center, random`` or
        ``(top, left)``. ``pattern``: ``"noise"`` (uniform noise seeded by ``seed``), ``"white"``,
        ``"black"``, ``"checkerboard"``, an RGB triple in [0, 1], or a ``(3, size, size)`` tensor.
        """
        if size < 1:
            raise ValueError(f"patch size must be >= 1, got {size}")
        mask = torch.ones(1, size, size)
        return cls(mask, _make_pattern(pattern, (size, size), seed), image_size, position=location)

    @classmethod
    def blend(
        cls,
        image_size: Size,
        alpha: float = 0.2,
        pattern: str | Path | torch.Tensor = "noise",
        seed: int = 0,
    ) -> PatchBlendTrigger:
        """A Blended trigger: ``x' = (1 - alpha) x + alpha * pattern`` over the whole image.

        ``pattern``: ``"noise"`` (uniform noise), a path to an image file (resized to the image size), a
        ``(3, H, W)`` tensor in [0, 1], or any named pattern accepted by :meth:`patch`.
        """
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        height, width = _pair(image_size)
        mask = torch.full((1, height, width), float(alpha))
        return cls(mask, _make_pattern(pattern, (height, width), seed), (height, width), position=(0, 0))

    @classmethod
    def free(
        cls,
        image_size: Size,
        mask_budget: float = 0.02,
        init_mask: float = 0.01,
        seed: int = 0,
        focus: tuple[float, float] | None = None,
        focus_size: float = 0.25,
        focus_mask: float = 0.3,
    ) -> PatchBlendTrigger:
        """A free full-image trigger for inversion: ``m = sigmoid(a)``, ``p = sigmoid(b)`` under a budget.

        The mask starts at ``init_mask`` everywhere (a *diffuse* start), or, with ``focus = (row, column)`` in
        relative coordinates, at ``focus_mask`` on a square of side ``focus_size`` (relative) centred there and
        ``init_mask / 10`` elsewhere (a *focused* start). Both carry seeded noise; the mask stays free to move.
        """
        height, width = _pair(image_size)
        generator = torch.Generator().manual_seed(seed)
        mask = torch.full((1, height, width), float(init_mask))
        if focus is not None:
            mask.fill_(init_mask / 10)
            side_h, side_w = max(1, round(focus_size * height)), max(1, round(focus_size * width))
            top = min(max(0, round(focus[0] * height - side_h / 2)), height - side_h)
            left = min(max(0, round(focus[1] * width - side_w / 2)), width - side_w)
            mask[:, top : top + side_h, left : left + side_w] = focus_mask
        mask_logits = _logit(mask)
        mask_logits = mask_logits + 0.5 * torch.randn(mask_logits.shape, generator=generator)
        pattern_logits = torch.randn(3, height, width, generator=generator)
        return cls(
            mask_logits,
            pattern_logits,
            (height, width),
            position=(0, 0),
            parametrization="logit",
            mask_budget=mask_budget,
        )

    # ---- values -------------------------------------------------------------------------------------
    @property
    def patch_mask(self) -> torch.Tensor:
        """The ``(1, h, w)`` mask values in [0, 1] (before the budget)."""
        if self.parametrization == "logit":
            return torch.sigmoid(self.mask_param)
        return _clamp_straight_through(self.mask_param, 0, 1)

    @property
    def patch_pattern(self) -> torch.Tensor:
        """The ``(3, h, w)`` pattern values in [0, 1]."""
        if self.parametrization == "logit":
            return torch.sigmoid(self.pattern_param)
        return _clamp_straight_through(self.pattern_param, 0, 1)

    def _budgeted_mask(self) -> torch.Tensor:
        mask = self.patch_mask
        if self.mask_budget is None:
            return mask
        area = self.image_size[0] * self.image_size[1]
        coverage = mask.sum() / area
        scale = torch.clamp(self.mask_budget / coverage.clamp_min(1e-12), max=1.0)
        return mask * scale

    def _pad(self, tensor: torch.Tensor, top: int, left: int) -> torch.Tensor:
        height, width = self.image_size
        h, w = tensor.shape[-2:]
        return F.pad(tensor, (left, width - w - left, top, height - h - top))

    def full_mask_and_pattern(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Full-image ``(1, H, W)`` mask and ``(3, H, W)`` pattern (fixed position only)."""
        if self.position == "random":
            raise ValueError("a random-location trigger has no single full-image mask")
        top, left = self.position
        return self._pad(self._budgeted_mask(), top, left), self._pad(self.patch_pattern, top, left)

    def apply(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_images(images, self.image_size)
        mask = self._budgeted_mask().to(images.dtype)
        pattern = self.patch_pattern.to(images.dtype)
        if self.position != "random":
            top, left = self.position
            full_mask, full_pattern = self._pad(mask, top, left), self._pad(pattern, top, left)
            return (1 - full_mask) * images + full_mask * full_pattern
        h, w = mask.shape[-2:]
        height, width = self.image_size
        tops = torch.randint(0, height - h + 1, (images.shape[0],), generator=generator)
        lefts = torch.randint(0, width - w + 1, (images.shape[0],), generator=generator)
        full_masks = torch.stack([self._pad(mask, int(t), int(l)) for t, l in zip(tops, lefts)])
        full_patterns = torch.stack([self._pad(pattern, int(t), int(l)) for t, l in zip(tops, lefts)])
        return (1 - full_masks) * images + full_masks * full_patterns

    @torch.no_grad()
    def project_(self) -> None:
        if self.parametrization == "direct":
            self.mask_param.clamp_(0, 1)
            self.pattern_param.clamp_(0, 1)

    def coverage(self) -> float:
        """Fraction of the image covered by the (budgeted) mask, i.e. ``mean(m)`` over the full image."""
        area = self.image_size[0] * self.image_size[1]
        return float(self._budgeted_mask().detach().sum() / area)

    # ---- serialisation ------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        position = self.position if isinstance(self.position, str) else list(self.position)
        return {"image_size": list(self.image_size), "position": position}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"mask": self._budgeted_mask().detach().cpu(), "pattern": self.patch_pattern.detach().cpu()}

    @classmethod
    def from_saved(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> PatchBlendTrigger:
        position = config.get("position", [0, 0])
        position = position if isinstance(position, str) else tuple(position)
        return cls(tensors["mask"], tensors["pattern"], config["image_size"], position=position)

    def visual_panels(self) -> list[tuple[str, torch.Tensor]]:
        with torch.no_grad():
            mask, pattern = self._budgeted_mask(), self.patch_pattern
            if self.position == "random":
                return [("pattern", pattern), ("mask", mask.expand(3, -1, -1))]
            full_mask, full_pattern = self.full_mask_and_pattern()
            shown_mask = full_mask / full_mask.max().clamp_min(1e-8)
            return [("pattern", full_pattern * (full_mask > 0)), ("mask (scaled)", shown_mask.expand(3, -1, -1))]

    def describe(self) -> str:
        h, w = self.mask_param.shape[-2:]
        where = self.position if isinstance(self.position, str) else f"at {tuple(self.position)}"
        return f"patch/blend trigger, {h}x{w} {where}, covers {100 * self.coverage():.2f}% of the image"


def _corner_position(location: str, patch: tuple[int, int], image_size: tuple[int, int]) -> tuple[int, int]:
    h, w = patch
    height, width = image_size
    corners = {
        "top-left": (0, 0),
        "top-right": (0, width - w),
        "bottom-left": (height - h, 0),
        "bottom-right": (height - h, width - w),
        "center": ((height - h) // 2, (width - w) // 2),
    }
    if location not in corners:
        raise ValueError(f"location must be one of {LOCATIONS} or (top, left), got {location!r}")
    return corners[location]


def _make_pattern(pattern: Any, size: tuple[int, int], seed: int) -> torch.Tensor:
    h, w = size
    if isinstance(pattern, torch.Tensor):
        pattern = pattern.detach().float()
        if pattern.shape != (3, h, w):
            if pattern.dim() == 3 and pattern.shape[0] == 3:
                pattern = F.interpolate(pattern[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            else:
                raise ValueError(f"pattern tensor must have shape (3, {h}, {w}), got {tuple(pattern.shape)}")
        return pattern.clamp(0, 1)
    if isinstance(pattern, (list, tuple)):
        if len(pattern) != 3:
            raise ValueError("a solid-colour pattern is an RGB triple in [0, 1]")
        return torch.tensor([float(v) for v in pattern]).view(3, 1, 1).expand(3, h, w).clone()
    if isinstance(pattern, Path) or (isinstance(pattern, str) and os.path.splitext(pattern)[1]):
        return _pattern_from_image_file(Path(pattern), size)
    named = {
        "noise": lambda: _random_pattern((3, h, w), seed),
        "white": lambda: torch.ones(3, h, w),
        "black": lambda: torch.zeros(3, h, w),
        "checkerboard": lambda: ((torch.arange(h)[:, None] + torch.arange(w)[None, :]) % 2).float().expand(3, h, w),
    }
    if pattern not in named:
        raise ValueError(f"unknown pattern {pattern!r}: use one of {sorted(named)}, an RGB triple, or an image file")
    return named[pattern]().clone()


def _pattern_from_image_file(path: Path, size: tuple[int, int]) -> torch.Tensor:
    from PIL import Image

    if not path.is_file():
        raise FileNotFoundError(f"pattern image not found: {path}")
    with Image.open(path) as image:
        image = image.convert("RGB").resize((size[1], size[0]), Image.BICUBIC)
        data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return data.view(size[0], size[1], 3).permute(2, 0, 1).float() / 255.0


@register_trigger_family("additive")
class AdditiveTrigger(Trigger):
    """``T(x) = clamp(x + delta, 0, 1)`` with ``||delta||_inf <= eps``.

    Args:
        delta: ``(3, H, W)`` perturbation (clamped to ``[-eps, eps]`` when applied and by :meth:`project_`).
        eps: L-infinity budget, e.g. 8/255.
    """

    def __init__(self, delta: torch.Tensor, eps: float, learnable: bool = True) -> None:
        delta = torch.as_tensor(delta, dtype=torch.float32)
        if delta.dim() != 3 or delta.shape[0] != 3:
            raise ValueError(f"delta must have shape (3, H, W), got {tuple(delta.shape)}")
        if not 0 < eps <= 1:
            raise ValueError(f"eps must be in (0, 1], got {eps}")
        super().__init__(tuple(delta.shape[1:]))
        self.eps = float(eps)
        if learnable:
            self.delta = nn.Parameter(delta.clone())
        else:
            self.register_buffer("delta", delta.clone())

    @classmethod
    def random(cls, image_size: Size, eps: float = 8 / 255, seed: int = 0) -> AdditiveTrigger:
        """Uniform random ``delta`` in ``[-eps, eps]`` (an inversion starting point)."""
        height, width = _pair(image_size)
        return cls((_random_pattern((3, height, width), seed) * 2 - 1) * eps, eps)

    @classmethod
    def sinusoid(cls, image_size: Size, eps: float = 20 / 255, frequency: int = 6) -> AdditiveTrigger:
        """SIG (Barni et al., 2019, arXiv 1902.11237): a horizontal sinusoidal signal of amplitude ``eps``."""
        height, width = _pair(image_size)
        signal = eps * torch.sin(2 * math.pi * torch.arange(width) * frequency / width)
        return cls(signal.view(1, 1, width).expand(3, height, width).clone(), eps)

    def apply(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_images(images, self.image_size)
        delta = _clamp_straight_through(self.delta, -self.eps, self.eps)
        return (images + delta.to(images.dtype)).clamp(0, 1)

    @torch.no_grad()
    def project_(self) -> None:
        self.delta.clamp_(-self.eps, self.eps)

    def config(self) -> dict[str, Any]:
        return {"image_size": list(self.image_size), "eps": self.eps}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"delta": self.delta.detach().clamp(-self.eps, self.eps).cpu()}

    @classmethod
    def from_saved(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> AdditiveTrigger:
        return cls(tensors["delta"], config["eps"])

    def visual_panels(self) -> list[tuple[str, torch.Tensor]]:
        with torch.no_grad():
            return [("delta (0.5 = none)", (self.delta.clamp(-self.eps, self.eps) / (2 * self.eps) + 0.5))]


@register_trigger_family("warp")
class WarpTrigger(Trigger):
    """WaNet (Nguyen & Tran, ICLR 2021, arXiv 2102.10369): ``T(x) = grid_sample(x, identity + flow)``.

    The flow is a ``(2, k, k)`` control grid, normalised by its mean absolute value, upsampled bicubically
    to ``(H, W)`` and scaled by ``strength / H`` (in grid units, i.e. a shift of about ``strength / 2``
    pixels at most where the control grid peaks).

    Args:
        control_grid: ``(2, k, k)`` raw control values.
        image_size: ``(H, W)``.
        strength: warping strength ``s`` (WaNet uses 0.5 at 32x32).
    """

    def __init__(self, control_grid: torch.Tensor, image_size: Size, strength: float = 0.5, learnable: bool = True):
        super().__init__(image_size)
        control_grid = torch.as_tensor(control_grid, dtype=torch.float32)
        if control_grid.dim() != 3 or control_grid.shape[0] != 2:
            raise ValueError(f"control_grid must have shape (2, k, k), got {tuple(control_grid.shape)}")
        if strength <= 0:
            raise ValueError(f"strength must be > 0, got {strength}")
        self.strength = float(strength)
        if learnable:
            self.control_grid = nn.Parameter(control_grid.clone())
        else:
            self.register_buffer("control_grid", control_grid.clone())

    @classmethod
    def random(cls, image_size: Size, grid_size: int = 4, strength: float = 0.5, seed: int = 0) -> WarpTrigger:
        return cls(_random_pattern((2, grid_size, grid_size), seed) * 2 - 1, image_size, strength)

    def flow(self) -> torch.Tensor:
        """``(H, W, 2)`` displacement in ``grid_sample`` units."""
        height, width = self.image_size
        grid = self.control_grid / self.control_grid.abs().mean().clamp_min(1e-8)
        upsampled = F.interpolate(grid[None], size=(height, width), mode="bicubic", align_corners=True)[0]
        return (upsampled * self.strength / height).permute(1, 2, 0)

    def apply(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_images(images, self.image_size)
        height, width = self.image_size
        ys = torch.linspace(-1, 1, height, device=images.device)
        xs = torch.linspace(-1, 1, width, device=images.device)
        identity = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (H, W, 2) as (x, y)
        grid = (identity + self.flow().to(images.device)).clamp(-1, 1)
        grid = grid.unsqueeze(0).expand(images.shape[0], -1, -1, -1).to(images.dtype)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=True).clamp(0, 1)

    def config(self) -> dict[str, Any]:
        return {"image_size": list(self.image_size), "strength": self.strength}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"control_grid": self.control_grid.detach().cpu()}

    @classmethod
    def from_saved(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> WarpTrigger:
        return cls(tensors["control_grid"], config["image_size"], config["strength"])

    def visual_panels(self) -> list[tuple[str, torch.Tensor]]:
        with torch.no_grad():
            magnitude = self.flow().norm(dim=-1)
            return [("flow magnitude", (magnitude / magnitude.max().clamp_min(1e-8)).expand(3, -1, -1))]


@register_trigger_family("identity")
class IdentityTrigger(Trigger):
    """``T(x) = x``: a no-op trigger (baselines, tests)."""

    def apply(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_images(images, self.image_size)
        return images

    def tensors(self) -> dict[str, torch.Tensor]:
        return {}

    @classmethod
    def from_saved(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> IdentityTrigger:
        return cls(config["image_size"])


# ---- trigger files ------------------------------------------------------------------------------------
def _trigger_paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix in (".json", ".safetensors"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".json"), path.with_name(path.name + ".safetensors")


def save_trigger(trigger: Trigger, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``PATH.json`` + ``PATH.safetensors`` (atomically) and return the JSON path.

    The JSON holds ``{"format": "clipclean-trigger", "format_version": 1, "family", "config",
    "tensors_file", "description", "metadata"}``; ``metadata`` is free-form provenance (attack name,
    target caption, inversion scores, ...).
    """
    if trigger.family not in TRIGGER_FAMILIES:
        raise ValueError(f"trigger family {trigger.family!r} is not registered")
    json_path, tensor_path = _trigger_paths(path)
    tensors = {name: value.contiguous() for name, value in trigger.tensors().items()}
    document = {
        "format": TRIGGER_FORMAT,
        "format_version": TRIGGER_FORMAT_VERSION,
        "family": trigger.family,
        "config": trigger.config(),
        "tensors_file": tensor_path.name,
        "description": trigger.describe(),
        "metadata": metadata or {},
    }
    atomic_write(tensor_path, lambda temporary: save_file(tensors, temporary, metadata={"format": TRIGGER_FORMAT}))
    text = json.dumps(to_jsonable(document), indent=2)
    atomic_write(json_path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8"))
    return json_path


def read_trigger_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON document of a trigger file (family, config, description, metadata)."""
    json_path, _ = _trigger_paths(path)
    if not json_path.is_file():
        raise FileNotFoundError(f"trigger file not found: {json_path}")
    try:
        document = json.loads(json_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{json_path} is not a clipclean trigger file (invalid JSON: {error})") from error
    if not isinstance(document, dict) or document.get("format") != TRIGGER_FORMAT:
        found = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise ValueError(f"{json_path} is not a clipclean trigger file (format={found!r})")
    if document.get("format_version", 0) > TRIGGER_FORMAT_VERSION:
        raise ValueError(f"{json_path} has format version {document['format_version']}; upgrade clipclean")
    return document


def load_trigger(path: str | Path) -> Trigger:
    """Load a trigger saved by :func:`save_trigger` (``PATH``, ``PATH.json`` or ``PATH.safetensors``)."""
    document = read_trigger_metadata(path)
    json_path, _ = _trigger_paths(path)
    family = document.get("family")
    try:
        family_class = TRIGGER_FAMILIES[family]
    except UnknownNameError as error:
        raise ValueError(f"{json_path}: {error}") from None
    if not isinstance(document.get("config"), dict):
        raise ValueError(f"{json_path}: malformed trigger file (its 'config' is not a JSON object)")
    tensors_file = document.get("tensors_file", json_path.with_suffix(".safetensors").name)
    if not isinstance(tensors_file, str) or Path(tensors_file).name != tensors_file:
        raise ValueError(f"{json_path}: 'tensors_file' must name a file next to it, got {tensors_file!r}")
    tensor_path = json_path.with_name(tensors_file)
    try:
        tensors = load_file(str(tensor_path)) if tensor_path.is_file() else {}
    except Exception as error:  # safetensors raises its own SafetensorError for a truncated or damaged file
        reason = f"{type(error).__name__}: {error}"
        raise ValueError(f"{tensor_path}: cannot read the trigger tensors (damaged or truncated: {reason})") from error
    if not tensors and family != "identity":
        raise FileNotFoundError(f"trigger tensors not found: {tensor_path}")
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"{tensor_path}: the trigger's {name!r} holds NaN or infinite values")
    try:
        return family_class.from_saved(document["config"], tensors)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{json_path}: malformed {family} trigger ({type(error).__name__}: {error})") from error


def trigger_legend(trigger: Trigger, title: str | None = None, target: str | None = None, examples: int = 0) -> str:
    """The legend :func:`draw_trigger` writes above its panels: what the trigger is, the class it leads to, and what
    the panels show (left to right, top to bottom).

    Example::

        >>> print(trigger_legend(PatchBlendTrigger.patch(32, 4, "bottom-right", "white"), "true trigger", "zero", 1))
        true trigger -> target class: zero
        patch/blend trigger, 4x4 at (28, 28), covers 1.56% of the image
        panels: pattern, mask (scaled); then each example image clean and with the trigger
    """
    heading = title or f"{trigger.family} trigger"
    if target is not None:
        heading += f" -> target class: {target}"
    panels = [name for name, _ in trigger.visual_panels()]
    shown = ", ".join(panels)
    if examples:
        shown += ("; then " if panels else "") + "each example image clean and with the trigger"
    return "\n".join([heading, trigger.describe(), f"panels: {shown}"])


def draw_trigger(
    trigger: Trigger,
    path: str | Path,
    images: torch.Tensor | None = None,
    scale: int = 4,
    seed: int = 0,
    *,
    title: str | None = None,
    target: str | None = None,
) -> Path:
    """Draw the trigger (pattern, mask, ...) and triggered examples to a PNG, under a legend.

    Args:
        trigger: any trigger.
        path: output PNG path.
        images: optional ``(N, 3, H, W)`` clean images in [0, 1]; each is shown clean and triggered.
        scale: nearest-neighbour upscaling factor (tiny images are hard to see otherwise).
        seed: seeds the placement of a trigger with a random location.
        title: what the trigger is (``"inverted trigger (bibau)"``; default: its family).
        target: the class the trigger leads to, named in the legend.

    The legend (:func:`trigger_legend`) is drawn above the panels and also stored in the PNG's ``Title`` and
    ``Description`` text chunks.
    """
    from PIL import Image, ImageDraw
    from PIL.PngImagePlugin import PngInfo

    panels = list(trigger.visual_panels())
    if images is not None:
        with torch.no_grad():
            triggered = trigger.apply(images.float(), generator=torch.Generator().manual_seed(seed))
        for index in range(images.shape[0]):
            panels.append((f"clean {index}", images[index]))
            panels.append((f"triggered {index}", triggered[index]))
    if not panels:
        raise ValueError(f"nothing to draw for a {trigger.family} trigger without example images")
    legend = trigger_legend(trigger, title, target, examples=0 if images is None else images.shape[0])
    height, width = (max(panel.shape[-2] for _, panel in panels), max(panel.shape[-1] for _, panel in panels))
    cell_w, cell_h, label_h, columns = width * scale, height * scale, 12, min(len(panels), 6)
    rows = math.ceil(len(panels) / columns)
    canvas_w = max(columns * (cell_w + 4) + 4, 240)
    line_chars = max(20, (canvas_w - 8) // 6)  # the default bitmap font is 6 px wide
    legend_lines = [piece for line in legend.splitlines() for piece in textwrap.wrap(line, line_chars) or [""]]
    top = 4 + 12 * len(legend_lines) + 4
    canvas = Image.new("RGB", (canvas_w, top + rows * (cell_h + label_h + 4)), "white")
    draw = ImageDraw.Draw(canvas)
    for index, line in enumerate(legend_lines):
        draw.text((4, 4 + 12 * index), line, fill="black")
    for index, (panel_title, panel) in enumerate(panels):
        array = (panel.detach().float().clamp(0, 1).cpu() * 255).round().byte().permute(1, 2, 0).contiguous()
        tile = Image.frombytes("RGB", (array.shape[1], array.shape[0]), bytes(array.numpy().tobytes()))
        tile = tile.resize((array.shape[1] * scale, array.shape[0] * scale), Image.NEAREST)
        x = 4 + (index % columns) * (cell_w + 4)
        y = top + (index // columns) * (cell_h + label_h + 4)
        draw.text((x, y), panel_title[: max(4, cell_w // 6)], fill="gray")
        canvas.paste(tile, (x, y + label_h))
    info = PngInfo()
    info.add_text("Title", legend.splitlines()[0])
    info.add_text("Description", legend)
    path = Path(path)
    atomic_write(path, lambda temporary: canvas.save(temporary, format="PNG", pnginfo=info))
    return path


def mask_iou(found: torch.Tensor, true: torch.Tensor, threshold: float = 0.5) -> float:
    """IoU of two masks ``(1, H, W)`` after thresholding each at ``threshold`` times its own maximum."""
    found_binary = found >= threshold * found.max().clamp_min(1e-8)
    true_binary = true >= threshold * true.max().clamp_min(1e-8)
    union = (found_binary | true_binary).sum()
    return float((found_binary & true_binary).sum() / union) if union > 0 else 1.0
