"""BAERASE: trigger-distribution recovery with a generator, then unlearning (Liu et al., INFOCOM 2022,
arXiv 2201.09538), adapted to CLIP.

BAERASE first recovers not one trigger but a *distribution* of triggers: a generator ``G(z)`` is trained so that
stamping ``G(z)`` on clean images drives them to the target, with an entropy term that keeps the generated
triggers diverse; then the model is unlearned on images stamped with fresh ``G(z)``, with a weight penalty
holding it near its starting point. For CLIP:

1. **Target.** The target direction ``u`` (unit, embedding space) comes from the blind inversion's E-step
   (:class:`~clipclean.inversion.BlindInversion`, untargeted) or, in targeted mode, from the text embedding of
   ``context.target_caption``.
2. **Generator** (``begin_round``, model frozen): ``G`` maps noise ``z ~ N(0, I)`` to a full-image mask
   ``m(z)`` ``(1, H, W)`` under a mask budget (mean ``<= mask_budget``) and a pattern ``p(z)`` ``(3, H, W)``,
   both in [0, 1]; ``x ⊕ G(z) = (1 - m) * x + m * p``. It maximises
   ``mean min(p_target(x ⊕ G(z)), target_cap) + diversity_weight * D(G)``, where ``p_target`` is the
   probability that the stamped image matches ``u`` rather than any caption of its batch (softmax of
   ``s * g(x') @ [u, h(c_1), ..., h(c_B)]``), so it needs no class list.
3. **Unlearning** (the recipe's epochs):
   ``L = clean_weight * L_clip(x, c) + forget_weight * mean -log(1 - p_target(x ⊕ G(z)))
   + weight_penalty * ||theta - theta_0||^2`` over the trainable parameters.

What it assumes: the clean set ``D``; a patch-like trigger that a (smooth, low-resolution) mask can cover;
either nothing about the target (untargeted) or the target caption.

Approximations (documented on purpose):

* the paper's entropy term is a MINE (mutual-information) estimate; here it is the *mode-seeking* diversity
  ``D = mean |G(z_1) - G(z_2)| / mean |z_1 - z_2|`` over pairs of noise draws (Mao et al., CVPR 2019);
* the generator is a small MLP that outputs mask and pattern logits at ``generator_resolution`` and upsamples
  them bilinearly to the image size;
* the paper's gradient *ascent* on the target loss ``-L_target`` is unbounded; it is replaced by the bounded
  ``-log(1 - p_target)`` (minimised, >= 0), which has the same fixed point (``p_target -> 0``) without
  diverging.

Example::

    >>> defense = build_defense("baerase", model, DefenseContext(reference=model.fresh_copy()))
    >>> defense.begin_round(0, batches)                            # inversion (target) + generator training
    >>> losses, _ = defense.forward(model, (images, tokens))      # images (B, 3, H, W) in [0, 1]
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from clipclean.defenses.base import (
    Batch,
    Defense,
    DefenseConfig,
    DefenseContext,
    invert_trigger,
    register_defense,
)
from clipclean.defenses.objectives import target_probability
from clipclean.inversion import InversionConfig, cycle
from clipclean.models import PixelCLIP
from clipclean.triggers import PatchBlendTrigger

logger = logging.getLogger(__name__)


@dataclass
class BAERASEConfig(DefenseConfig):
    """BAERASE hyper-parameters.

    Args:
        rounds: outer rounds of (generator training, unlearning epochs). Default 1.
        epochs: unlearning passes over the defender data per round. Default 2.
        lr: unlearning learning rate (AdamW, set by the recipe). Default 1e-4.
        clean_weight: ``w``, weight of the clean CLIP loss. Default 1.
        forget_weight: weight of the bounded forgetting term ``-log(1 - p_target)``. Default 1.
        weight_penalty: weight of ``||theta - theta_0||^2`` (sum over trainable parameters). Default 1.
        target_cap: ``beta``, the cap on the target probability the generator maximises. Default 0.9.
        diversity_weight: weight of the generator's diversity (entropy surrogate). Default 0.1.
        generator_steps: Adam steps of generator training per round (warm-started across rounds). Default 100.
        generator_lr: generator learning rate. Default 1e-3.
        noise_dim: dimension of ``z``. Default 32.
        hidden_dim: width of the generator's two hidden layers. Default 128.
        generator_resolution: side of the mask/pattern logits before upsampling. Default 8.
        mask_budget: hard bound on the mean of each generated mask (fraction of the image). Default 0.03.
        inversion: the :class:`InversionConfig` of the blind inversion that finds the target (untargeted mode).
        verdict: run the inversion's anomaly-index verdict (needs candidates). Default False.
        seed: seeds the generator's initialisation and the noise. Default 0.
    """

    clean_weight: float = 1.0
    forget_weight: float = 1.0
    weight_penalty: float = 1.0
    target_cap: float = 0.9
    diversity_weight: float = 0.1
    generator_steps: int = 100
    generator_lr: float = 1e-3
    noise_dim: int = 32
    hidden_dim: int = 128
    generator_resolution: int = 8
    mask_budget: float = 0.03
    inversion: InversionConfig = field(default_factory=InversionConfig)
    verdict: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.inversion, dict):
            self.inversion = InversionConfig(**self.inversion)
        weights = (self.clean_weight, self.forget_weight, self.weight_penalty, self.diversity_weight)
        if min(weights) < 0:
            raise ValueError("clean_weight, forget_weight, weight_penalty and diversity_weight must be >= 0")
        if not 0 < self.target_cap <= 1:
            raise ValueError(f"target_cap must be in (0, 1], got {self.target_cap}")
        if not 0 < self.mask_budget <= 1:
            raise ValueError(f"mask_budget must be in (0, 1], got {self.mask_budget}")
        if min(self.generator_steps, self.noise_dim, self.hidden_dim, self.generator_resolution) < 1:
            raise ValueError("generator_steps, noise_dim, hidden_dim and generator_resolution must be >= 1")
        if self.generator_lr <= 0:
            raise ValueError(f"generator_lr must be > 0, got {self.generator_lr}")


class TriggerGenerator(nn.Module):
    """``G(z)``: noise ``(N, noise_dim)`` -> masks ``(N, 1, H, W)`` (mean <= budget) and patterns ``(N, 3, H, W)``.

    Both are in [0, 1]. An MLP outputs ``4 x r x r`` logits (``r = resolution``), upsampled bilinearly to
    ``image_size``; the mask starts near ``init_mask`` everywhere.
    """

    def __init__(
        self,
        image_size: tuple[int, int],
        noise_dim: int = 32,
        hidden_dim: int = 128,
        resolution: int = 8,
        mask_budget: float = 0.03,
        init_mask: float = 0.01,
    ) -> None:
        super().__init__()
        self.image_size = tuple(image_size)
        self.noise_dim = noise_dim
        self.resolution = resolution
        self.mask_budget = mask_budget
        self.net = nn.Sequential(
            nn.Linear(noise_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, 4 * resolution * resolution),
        )
        with torch.no_grad():
            bias = self.net[-1].bias.view(4, resolution, resolution)
            bias[0].fill_(math.log(init_mask / (1 - init_mask)))

    def forward(self, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(noise).view(-1, 4, self.resolution, self.resolution)
        logits = F.interpolate(logits, size=self.image_size, mode="bilinear", align_corners=False)
        mask, pattern = torch.sigmoid(logits[:, :1]), torch.sigmoid(logits[:, 1:])
        coverage = mask.mean(dim=(1, 2, 3), keepdim=True)
        mask = mask * torch.clamp(self.mask_budget / coverage.clamp_min(1e-12), max=1.0)
        return mask, pattern

    def stamp(self, images: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``x ⊕ G(z) = (1 - m) * x + m * p`` for ``(B, 3, H, W)`` images in [0, 1] and ``(B, noise_dim)`` noise."""
        mask, pattern = self(noise)
        return (1 - mask) * images + mask * pattern


__all__ = ["BAERASE", "BAERASEConfig", "TriggerGenerator", "mode_seeking_diversity", "target_probability"]


def mode_seeking_diversity(masks: torch.Tensor, patterns: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``mean |G(z_1) - G(z_2)| / mean |z_1 - z_2|`` over the pairs (first half, second half) of a batch."""
    half = noise.shape[0] // 2
    if half == 0:
        return masks.new_zeros(())
    outputs = torch.cat([masks, masks * patterns], dim=1).flatten(1)
    output_distance = (outputs[:half] - outputs[half : 2 * half]).abs().mean(dim=1)
    noise_distance = (noise[:half] - noise[half : 2 * half]).abs().mean(dim=1)
    return (output_distance / noise_distance.clamp_min(1e-6)).mean()


class BAERASE(Defense):
    """Generator-based trigger-distribution recovery and bounded unlearning (see the module docstring)."""

    report_means = ("target_probability",)  # the round report also averages the stamped images' p_target

    def __init__(self, model: PixelCLIP, config: BAERASEConfig, context: DefenseContext) -> None:
        super().__init__(model, config, context)
        with torch.random.fork_rng(devices=[]):  # the same initialisation on every process
            torch.manual_seed(config.seed)
            self.generator = TriggerGenerator(
                model.image_size, config.noise_dim, config.hidden_dim, config.generator_resolution, config.mask_budget
            ).to(model.device)
        self.generator_optimizer = torch.optim.Adam(self.generator.parameters(), lr=config.generator_lr)
        self.noise_source = torch.Generator().manual_seed(config.seed + 1000 * context.rank + 1)
        self.direction: torch.Tensor | None = None
        self.inversion_report: dict | None = None
        self.generator_reports: list[dict] = []
        if context.reference is not None:
            reference = dict(context.reference.named_parameters())
            self._start = {name: reference[name].detach() for name, _ in self._tuned_parameters()}
        else:
            self._start = {name: p.detach().clone() for name, p in self._tuned_parameters()}

    def _tuned_parameters(self) -> list[tuple[str, nn.Parameter]]:
        ids = {id(p) for p in self.trainable_parameters()}
        return [(name, p) for name, p in self.model.named_parameters() if id(p) in ids]

    def _noise(self, count: int) -> torch.Tensor:
        return torch.randn(count, self.config.noise_dim, generator=self.noise_source).to(self.model.device)

    # ---- target and generator ------------------------------------------------------------------------
    def find_target(self, batches: Iterable[Batch]) -> dict:
        """``u`` from the target caption (targeted) or the blind inversion's E-step (untargeted)."""
        if self.context.target_caption is not None:
            with torch.no_grad():
                self.direction = self.model.encode_text([self.context.target_caption]).float()[0]
            self.inversion_report = None
            return {"target_source": "target_caption"}
        result = invert_trigger(self.model, self.config.inversion, self.context, batches, self.config.verdict)
        self.direction = result.direction.to(self.model.device).float()
        self.inversion_report = result.report()
        logger.info("BAERASE target from inversion: %s", self.inversion_report["recovered_target"])
        return {"target_source": "inversion", "inversion": self.inversion_report}

    def train_generator(self, batches: Iterator[Batch], steps: int) -> dict:
        """``steps`` Adam steps of ``G`` on ``mean min(p_target, cap) + diversity_weight * D`` (model frozen)."""
        config = self.config
        parameters = list(self.generator.parameters())
        probabilities, diversities = [], []
        for _ in range(steps):
            images, own = next(batches)
            images = images.to(self.model.device)
            noise = self._noise(images.shape[0])
            masks, patterns = self.generator(noise)
            stamped = (1 - masks) * images + masks * patterns
            (outputs,), own, scale = self.objective.forward(self.model, stamped, own.to(self.model.device))
            probability = self.objective.target_probability(outputs, own, self.direction, scale)
            diversity = mode_seeking_diversity(masks, patterns, noise)
            objective = probability.clamp(max=config.target_cap).mean() + config.diversity_weight * diversity
            gradients = torch.autograd.grad(-objective, parameters)
            for parameter, gradient in zip(parameters, gradients):
                parameter.grad = self.context.reduce_fn(gradient, "mean")
            self.generator_optimizer.step()
            self.generator_optimizer.zero_grad(set_to_none=True)
            probabilities.append(float(self.context.reduce_fn(probability.detach().mean(), "mean")))
            diversities.append(float(self.context.reduce_fn(diversity.detach(), "mean")))
        return {
            "target_probability_first": probabilities[0],
            "target_probability_last": probabilities[-1],
            "diversity_last": diversities[-1],
            "steps": steps,
        }

    def begin_round(self, round_index: int, batches: Iterable[Batch]) -> dict:
        report: dict = {}
        if self.direction is None:
            report.update(self.find_target(batches))
        generator_report = {"round": round_index, **self.train_generator(cycle(batches), self.config.generator_steps)}
        self.generator_reports.append(generator_report)
        logger.info("BAERASE round %d generator: %s", round_index, generator_report)
        report["generator"] = generator_report
        return report

    # ---- unlearning --------------------------------------------------------------------------------------
    def weight_distance(self) -> torch.Tensor:
        """``||theta - theta_0||^2`` over the trainable parameters (differentiable)."""
        terms = [(p - self._start[name]).pow(2).sum() for name, p in self._tuned_parameters() if p.requires_grad]
        return torch.stack(terms).sum() if terms else torch.zeros((), device=self.model.device)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[dict[str, torch.Tensor], dict]:
        if self.direction is None:
            raise RuntimeError("BAERASE.loss needs the target: run begin_round(0, batches) first")
        images, own = batch
        with torch.no_grad():
            stamped = self.generator.stamp(images, self._noise(images.shape[0])).detach()
        objective = self.objective
        (clean, stamped_out), own, scale = objective.forward(model, torch.cat([images, stamped]), own, parts=2)
        probability = objective.target_probability(stamped_out, own, self.direction, scale)
        clean_name = f"{objective.prefix}_clean"
        losses = {
            clean_name: objective.task_loss(clean, own, scale),
            "forget": -torch.log1p(-probability.clamp(max=1 - 1e-6)).mean(),
            "weight_distance": self.weight_distance(),
        }
        config = self.config
        losses["loss"] = (
            config.clean_weight * losses[clean_name]
            + config.forget_weight * losses["forget"]
            + config.weight_penalty * losses["weight_distance"]
        )
        return losses, {"target_probability": float(probability.detach().mean())}

    def method_summary(self) -> dict:
        return {
            "inversion": self.inversion_report,
            "target_source": "target_caption" if self.context.target_caption is not None else "inversion",
            "generator": self.generator_reports,
        }

    def trigger_for_report(self) -> PatchBlendTrigger | None:
        """One generated trigger ``G(z_0)`` (a fixed, seeded ``z_0``) as a full-image patch/blend trigger."""
        if self.direction is None:
            return None
        noise = torch.randn(1, self.config.noise_dim, generator=torch.Generator().manual_seed(self.config.seed))
        with torch.no_grad():
            mask, pattern = self.generator(noise.to(self.model.device))
        trigger = PatchBlendTrigger(mask[0].clamp(0, 1).cpu(), pattern[0].clamp(0, 1).cpu(), self.model.image_size)
        return trigger.to(self.model.device).requires_grad_(False)

    def method_state_dict(self) -> dict:
        state = {
            "generator": self.generator.state_dict(),
            "generator_optimizer": self.generator_optimizer.state_dict(),
            "noise_source": self.noise_source.get_state(),
            "inversion_report": json.dumps(self.inversion_report),
            "generator_reports": json.dumps(self.generator_reports),
        }
        if self.direction is not None:
            state["direction"] = self.direction.detach().cpu()
        return state

    def load_method_state_dict(self, state: dict) -> None:
        self.generator.load_state_dict(state["generator"])
        self.generator_optimizer.load_state_dict(state["generator_optimizer"])
        self.noise_source.set_state(state["noise_source"])
        self.inversion_report = json.loads(state["inversion_report"])
        self.generator_reports = json.loads(state["generator_reports"])
        if "direction" in state:
            self.direction = state["direction"].to(self.model.device).float()


register_defense("baerase", BAERASEConfig, BAERASE)
