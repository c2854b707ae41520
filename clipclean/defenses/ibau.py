"""I-BAU-style adversarial unlearning (Zeng et al., ICLR 2022, arXiv 2110.03735), adapted to CLIP.

I-BAU casts backdoor removal as the minimax problem ``min_theta max_{||delta|| <= eps} L(theta; x + delta)``: a
*universal* perturbation that hurts the model most on clean data is a proxy for any trigger, and training the
model to be right on ``x + delta`` unlearns the shortcut. For CLIP the task loss is the clean contrastive loss::

    inner:  delta* = argmax_{||delta||_inf <= eps} L_clip(x + delta, c)           (model frozen, K PGD steps)
    outer:  L = L_clip(x, c) + perturbed_weight * L_clip(x + delta*, c)          (the recipe's epochs)

For an image classifier (the paper's own setting) the task loss is the cross-entropy ``CE(f(x), y)`` instead of
``L_clip`` (:mod:`clipclean.defenses.objectives`).

What it assumes: only the clean set ``D`` (no trigger, no target); a trigger that an L-inf bounded universal
additive perturbation (:class:`~clipclean.triggers.AdditiveTrigger` on [0, 1] pixels) can emulate well enough.

**Approximation:** this is the *plain alternating* version: the perturbation is re-solved
by projected sign-gradient ascent at the start of every round (warm-started; optionally every
``refresh_every`` steps on the current batch) and the model is then updated with ``delta`` held fixed. The
original's implicit hypergradient (the fixed-point / conjugate-gradient term ``d delta*/d theta``) is **not**
computed. The paper bounds ``delta`` in L2; here it is an L-inf bound.

Distributed use: the trigger gradients go through ``context.reduce_fn(grad, "mean")`` before each step, so every
process holds the same ``delta``.

Example::

    >>> defense = build_defense("ibau", model, DefenseContext(), {"eps": 8 / 255, "inner_steps": 10})
    >>> defense.begin_round(0, batches)                           # finds the universal perturbation
    >>> losses, _ = defense.forward(model, (images, tokens))     # images (B, 3, H, W) in [0, 1]
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from clipclean.defenses.base import Batch, Defense, DefenseConfig, DefenseContext, register_defense
from clipclean.inversion import cycle
from clipclean.models import PixelCLIP
from clipclean.triggers import AdditiveTrigger

logger = logging.getLogger(__name__)


@dataclass
class IBAUConfig(DefenseConfig):
    """I-BAU hyper-parameters.

    Args:
        rounds: alternations of (solve ``delta``, ``epochs`` of model updates). Default 3.
        epochs: passes over the defender data per round. Default 1.
        lr: learning rate of the outer problem (AdamW, set by the recipe). Default 1e-4.
        eps: L-inf budget of the universal perturbation on [0, 1] pixels. Default 8/255.
        inner_steps: PGD steps ``K`` of the inner maximisation per round (and per refresh). Default 10.
        step_fraction: PGD step size as a fraction of ``eps``. Default 0.25.
        perturbed_weight: weight of ``L_clip(x + delta, c)`` in the outer loss. Default 1.
        refresh_every: also re-solve ``delta`` on the current batch every this many steps (0: only at the start
            of each round). Default 0.
        seed: seeds the random start of ``delta``. Default 0.
    """

    rounds: int = 3
    epochs: int = 1
    eps: float = 8 / 255
    inner_steps: int = 10
    step_fraction: float = 0.25
    perturbed_weight: float = 1.0
    refresh_every: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.eps <= 1:
            raise ValueError(f"eps must be in (0, 1], got {self.eps}")
        if self.inner_steps < 1:
            raise ValueError(f"inner_steps must be >= 1, got {self.inner_steps}")
        if not 0 < self.step_fraction <= 1:
            raise ValueError(f"step_fraction must be in (0, 1], got {self.step_fraction}")
        if self.perturbed_weight < 0 or self.refresh_every < 0:
            raise ValueError("perturbed_weight and refresh_every must be >= 0")


class IBAU(Defense):
    """Alternating I-BAU for CLIP (see the module docstring).

    Attributes:
        trigger: the universal :class:`AdditiveTrigger` ``delta`` of shape ``(3, H, W)``, ``|delta| <= eps``.
    """

    def __init__(self, model: PixelCLIP, config: IBAUConfig, context: DefenseContext) -> None:
        super().__init__(model, config, context)
        self.trigger = AdditiveTrigger.random(model.image_size, eps=config.eps, seed=config.seed).to(model.device)
        self.inner_reports: list[dict] = []

    def solve_perturbation(self, batches: Iterator[Batch], steps: int) -> dict:
        """``steps`` projected sign-gradient ascent steps of ``delta`` on ``L_clip(x + delta, c)``, model frozen.

        Only ``delta`` receives a gradient (``torch.autograd.grad``), so the model's ``.grad`` is left untouched.
        Returns the clean loss under the perturbation at the first and the last step.
        """
        delta = self.trigger.delta
        step_size = self.config.step_fraction * self.config.eps
        values = []
        for _ in range(steps):
            images, own = next(batches)
            images, own = images.to(self.model.device), own.to(self.model.device)
            (outputs,), own, scale = self.objective.forward(self.model, self.trigger.apply(images), own)
            loss = self.objective.task_loss(outputs, own, scale)
            (gradient,) = torch.autograd.grad(loss, [delta])
            gradient = self.context.reduce_fn(gradient, "mean")
            with torch.no_grad():
                delta.add_(step_size * gradient.sign())
            self.trigger.project_()
            values.append(float(self.context.reduce_fn(loss.detach(), "mean")))
        return {"perturbed_loss_first": values[0], "perturbed_loss_last": values[-1], "steps": steps}

    def begin_round(self, round_index: int, batches: Iterable[Batch]) -> dict:
        report = {"round": round_index, **self.solve_perturbation(cycle(batches), self.config.inner_steps)}
        self.inner_reports.append(report)
        logger.info("I-BAU round %d inner maximisation: %s", round_index, report)
        return {"inner": report}

    def loss(self, model: nn.Module, batch: Batch) -> tuple[dict[str, torch.Tensor], dict]:
        images, own = batch
        refresh = self.config.refresh_every
        if refresh and self.steps > 0 and self.steps % refresh == 0:
            self.solve_perturbation(iter([batch] * self.config.inner_steps), self.config.inner_steps)
        with torch.no_grad():
            perturbed = self.trigger.apply(images).detach()
        objective = self.objective
        (clean, perturbed_out), own, scale = objective.forward(model, torch.cat([images, perturbed]), own, parts=2)
        clean_name, perturbed_name = f"{objective.prefix}_clean", f"{objective.prefix}_perturbed"
        losses = {
            clean_name: objective.task_loss(clean, own, scale),
            perturbed_name: objective.task_loss(perturbed_out, own, scale),
        }
        losses["loss"] = losses[clean_name] + self.config.perturbed_weight * losses[perturbed_name]
        return losses, {}

    def finish_round(self, round_index: int, batches: Iterable[Batch]) -> tuple[bool, dict]:
        return False, {"perturbation_linf": self.perturbation_linf()}

    def perturbation_linf(self) -> float:
        """``||delta||_inf`` (at most ``eps``)."""
        return float(self.trigger.delta.detach().abs().max())

    def method_summary(self) -> dict:
        return {"eps": self.config.eps, "perturbation_linf": self.perturbation_linf(), "inner": self.inner_reports}

    def trigger_for_report(self) -> AdditiveTrigger:
        return self.trigger

    def method_state_dict(self) -> dict:
        return {"delta": self.trigger.delta.detach().cpu(), "inner_reports": json.dumps(self.inner_reports)}

    def load_method_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.trigger.delta.copy_(state["delta"].to(self.trigger.delta.device))
        self.inner_reports = json.loads(state["inner_reports"])


register_defense("ibau", IBAUConfig, IBAU)
