"""FT: clean contrastive fine-tuning, the simplest backdoor-removal baseline.

The backdoored CLIP is fine-tuned on the defender's clean image-caption set ``D`` with the CLIP loss only,
``L = L_clip(x, c)`` (symmetric InfoNCE over the global batch); the hope is that catastrophic forgetting erases
the trigger-to-target shortcut. It is the control every other defense is compared against (e.g. in CleanCLIP,
Bansal et al., ICCV 2023, arXiv 2303.03323, which reports that plain fine-tuning barely lowers the ASR).

What it assumes: only the clean set ``D``; neither the trigger nor the target. Nothing is approximated.

Example::

    >>> defense = build_defense("finetune", model, DefenseContext(), {"epochs": 5, "lr": 1e-5})
    >>> losses, _ = defense.forward(model, (images, tokens))     # images (B, 3, H, W) in [0, 1]
    >>> losses["loss"].backward()
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from clipclean.defenses.base import Batch, Defense, DefenseConfig, register_defense

logger = logging.getLogger(__name__)


@dataclass
class FinetuneConfig(DefenseConfig):
    """FT hyper-parameters: only the shared ones of :class:`DefenseConfig`.

    Args:
        rounds: outer rounds (1; FT has nothing to do between rounds). Default 1.
        epochs: passes over the defender data per round. Default 2.
        lr: learning rate (AdamW, set by the recipe). Default 1e-4 (CleanCLIP's scale recipe uses 1e-5 for
            10 epochs on 100K pairs).
        weight_decay: AdamW weight decay. Default 0.
        tune: ``"image"`` (image tower, default) or ``"all"``.
    """


class Finetune(Defense):
    """Clean fine-tuning: ``losses["loss"] = L_clip(x, c)`` (an image classifier: ``CE(f(x), y)``).

    Args:
        model: the :class:`PixelCLIP` to clean.
        config: :class:`FinetuneConfig`.
        context: :class:`DefenseContext` (only ``rank``/``world_size`` are used, for the gathered CLIP loss).
    """

    def loss(self, model: nn.Module, batch: Batch) -> tuple[dict[str, torch.Tensor], dict]:
        images, own = batch
        (outputs,), own, scale = self.objective.forward(model, images, own)
        task_loss = self.objective.task_loss(outputs, own, scale)
        return {f"{self.objective.prefix}_clean": task_loss, "loss": task_loss}, {}

    def finish_round(self, round_index: int, batches: Iterable[Batch]) -> tuple[bool, dict]:
        # the round's mean task loss under the name FT's round reports have always used (also "mean_loss")
        return False, {"mean_clip_loss": self.round_mean("loss")}

    def method_summary(self) -> dict:
        return {"steps": self.steps}


register_defense("finetune", FinetuneConfig, Finetune)
