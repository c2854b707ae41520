"""Activation-guided model editing (Hsieh et al., "Mitigating Backdoor Attacks using Activation-Guided Model
Editing", arXiv 2407.07662), adapted to CLIP's image encoder.

The paper unlearns a backdoor by *editing* a few weights chosen from the model's activations on a handful of
unseen clean samples, then runs a short *repair* step so the target class is not unlearned with it. Here:

1. **Trigger.** The (unknown) trigger is estimated by :class:`~clipclean.inversion.BlindInversion` (untargeted,
   or targeted when ``context.target_caption`` is known).
2. **Localisation** (``begin_round`` of round 0). On ``n_samples`` clean images ``x`` and their triggered copies
   ``T(x)``, forward hooks record the MLP hidden activations (GELU output, the input of ``c_proj``) of the last
   ``edit_blocks`` residual blocks of the ViT image tower, averaged over tokens. Each
   hidden unit is scored by ``|mean_i (a(T x_i) - a(x_i))| / (std_i a(x_i) + 1e-6)`` and the top
   ``edit_fraction`` of units of every block are selected (``n_samples`` over all processes, each taking its
   share; the statistics are summed over processes with ``context.reduce_fn``, so every process edits the same units).
3. **Edit.** Each selected unit is removed: its row of the MLP's first linear layer (weight and bias) and its column of
   the second's weight are zeroed. With ``freeze_edited`` the gradients of those entries are masked, so the
   repair cannot revive them (AdamW leaves a zero entry with zero gradient at zero).
4. **Repair** (the recipe's epochs): ``L = L_clip(x, c) + anchor_weight * ||g(x) - g_ref(x)||^2`` on clean
   pairs, with ``g_ref`` the frozen starting encoder.

On an image classifier (:class:`~clipclean.classifiers.ImageClassifier`, the paper's own setting) the units are
the output channels of the network's last ``edit_blocks`` ``Conv2d`` layers (spatially averaged; editing zeroes the
filter and its bias) and the repair loss is ``CE(f(x), y) + anchor_weight * KL(f_ref(x) || f(x))``. A CLIP with a
ResNet image tower is edited the same way, channel by channel (:func:`clipclean.units.editable_unit_layers`; a
BatchNorm after a zeroed filter still adds its shift, so there the edit dampens a unit rather than removing it).

What it assumes: a few clean samples (the recipe passes the defender set; ``n_samples`` of it are used for the
statistics), an image tower with units (:mod:`clipclean.units`: a ViT's MLP units, open_clip's or a transformers
``CLIPModel``'s ``fc1``/``fc2``; else Conv2d channels), and no knowledge of the trigger or the target.

Approximations (documented on purpose): the paper's body was not consulted; this follows its abstract. The units are
MLP hidden units of ViT blocks (zeroing) rather than the paper's exact choice of layer and edit rule, and the trigger
is an *inverted* one in the no-backdoor-knowledge setting.

Example::

    >>> defense = build_defense("age", model, DefenseContext(reference=model.fresh_copy().requires_grad_(False)))
    >>> defense.begin_round(0, batches)             # invert, score units, zero the top ones
    >>> defense.edited_units                       # {block index: [unit indices]}
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from clipclean.defenses.base import (
    Batch,
    Defense,
    DefenseConfig,
    DefenseContext,
    invert_trigger,
    register_defense,
    trigger_from_state,
    trigger_state,
)
from clipclean.inversion import InversionConfig
from clipclean.models import PixelCLIP
from clipclean.triggers import Trigger
from clipclean.units import collect_images, editable_unit_layers, record_unit_activations, top_units, unit_scores

logger = logging.getLogger(__name__)


@dataclass
class AGEConfig(DefenseConfig):
    """Activation-guided editing hyper-parameters.

    Args:
        rounds: outer rounds; the edit happens in round 0, every round's epochs repair. Default 1.
        epochs: repair passes over the defender data per round. Default 2.
        lr: repair learning rate (AdamW, set by the recipe). Default 1e-4.
        edit_blocks: how many of the last image-encoder residual blocks are edited. Default 2.
        edit_fraction: fraction of each block's MLP hidden units that are zeroed (at least one). Default 0.02.
        n_samples: clean images used for the activation statistics, over all processes (each takes its share).
            Default 64.
        anchor_weight: weight of the repair's clean feature anchor to the starting encoder. Default 1.
        freeze_edited: mask the gradients of the edited weights so the repair keeps them at zero. Default True.
        inversion: the :class:`InversionConfig` of the trigger inversion.
        verdict: run the inversion's anomaly-index verdict (needs candidates). Default False.
    """

    edit_blocks: int = 2
    edit_fraction: float = 0.02
    n_samples: int = 64
    anchor_weight: float = 1.0
    freeze_edited: bool = True
    inversion: InversionConfig = field(default_factory=InversionConfig)
    verdict: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.inversion, dict):
            self.inversion = InversionConfig(**self.inversion)
        if self.edit_blocks < 1 or self.n_samples < 2:
            raise ValueError("edit_blocks must be >= 1 and n_samples >= 2")
        if not 0 < self.edit_fraction < 1:
            raise ValueError(f"edit_fraction must be in (0, 1), got {self.edit_fraction}")
        if self.anchor_weight < 0:
            raise ValueError(f"anchor_weight must be >= 0, got {self.anchor_weight}")


class AGE(Defense):
    """Activation-guided editing of the image encoder's MLP units, then repair (see the module docstring).

    Attributes:
        edited_units: ``{block index: [hidden unit indices]}`` zeroed in round 0.
    """

    def __init__(self, model: PixelCLIP, config: AGEConfig, context: DefenseContext) -> None:
        super().__init__(model, config, context)
        if config.anchor_weight > 0 and context.reference is None:
            raise ValueError("AGE's repair anchor needs context.reference, a frozen copy of the starting model")
        self.blocks = editable_unit_layers(model)
        if config.edit_blocks > len(self.blocks):
            raise ValueError(f"edit_blocks={config.edit_blocks} but the image encoder has {len(self.blocks)} blocks")
        self.trigger: Trigger | None = None
        self.inversion_report: dict | None = None
        self.edited_units: dict[int, list[int]] = {}
        self.edit_report: dict = {}
        self._gradient_hooks: list = []

    @property
    def block_indices(self) -> list[int]:
        """Indices of the edited blocks (the last ``edit_blocks``)."""
        return list(range(len(self.blocks) - self.config.edit_blocks, len(self.blocks)))

    # ---- localisation ----------------------------------------------------------------------------------
    def hidden_activations(self, images: torch.Tensor) -> dict[int, torch.Tensor]:
        """Token-averaged MLP hidden activations ``{block: (N, hidden)}`` of ``(N, 3, H, W)`` images in [0, 1]."""
        return record_unit_activations(self.model, self.blocks, self.block_indices, images)

    def unit_scores(self, clean: torch.Tensor, triggered: torch.Tensor) -> torch.Tensor:
        """:func:`clipclean.units.unit_scores` summed over processes with ``context.reduce_fn`` (so every process
        edits the same units)."""
        return unit_scores(clean, triggered, self.context.reduce_fn)

    def _collect(self, batches: Iterable[Batch]) -> torch.Tensor:
        return collect_images(batches, self.config.n_samples, self.context.world_size).to(self.model.device)

    @torch.no_grad()
    def _target_similarity(self, images: torch.Tensor, direction: torch.Tensor) -> float:
        similarity = (self.model.encode_image(self.trigger.apply(images)).float() @ direction).mean()
        return float(self.context.reduce_fn(similarity, "mean"))

    def localise_and_edit(self, images: torch.Tensor, direction: torch.Tensor | None = None) -> dict:
        """Score the units on ``images`` and their triggered copies, zero the top ones; returns a report."""
        clean = self.hidden_activations(images)
        triggered = self.hidden_activations(self.trigger.apply(images))
        before = self._target_similarity(images, direction) if direction is not None else None
        count = self.context.reduce_fn(torch.tensor(float(images.shape[0]), device=images.device), "sum")
        report: dict = {"n_samples": int(count), "blocks": {}}
        for index in self.block_indices:
            scores = self.unit_scores(clean[index], triggered[index])
            chosen = top_units(scores, self.config.edit_fraction)
            self.edited_units[index] = chosen.tolist()
            report["blocks"][str(index)] = {
                "units": self.edited_units[index],
                "hidden_units": int(scores.numel()),
                "mean_score_edited": float(scores[chosen].mean()),
                "mean_score_all": float(scores.mean()),
            }
        self.apply_edit()
        if direction is not None:
            report["target_similarity_before_edit"] = before
            report["target_similarity_after_edit"] = self._target_similarity(images, direction)
        return report

    # ---- edit ------------------------------------------------------------------------------------------
    def apply_edit(self) -> None:
        """Zero the edited units' ``c_fc`` rows and ``c_proj`` columns; mask their gradients if configured."""
        for handle in self._gradient_hooks:
            handle.remove()
        self._gradient_hooks = []
        for index, units in self.edited_units.items():
            for parameter, keep in self.blocks[index].keep_masks(units):
                with torch.no_grad():
                    parameter.mul_(keep)
                if self.config.freeze_edited:
                    self._gradient_hooks.append(parameter.register_hook(lambda gradient, keep=keep: gradient * keep))

    def begin_round(self, round_index: int, batches: Iterable[Batch]) -> dict:
        if self.edited_units:  # edited in round 0 (or restored from a checkpoint): later rounds only repair
            return {}
        result = invert_trigger(self.model, self.config.inversion, self.context, batches, self.config.verdict)
        self.trigger = result.trigger
        self.inversion_report = result.report()
        direction = result.direction.to(self.model.device).float()
        self.edit_report = self.localise_and_edit(self._collect(batches), direction)
        logger.info(
            "AGE edited %s units; cos(g(T(x)), u): %s -> %s",
            {index: len(units) for index, units in self.edited_units.items()},
            self.edit_report.get("target_similarity_before_edit"),
            self.edit_report.get("target_similarity_after_edit"),
        )
        return {"inversion": self.inversion_report, "edit": self.edit_report}

    # ---- repair ----------------------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: Batch) -> tuple[dict[str, torch.Tensor], dict]:
        images, own = batch
        objective = self.objective
        (outputs,), own, scale = objective.forward(model, images, own)
        clean_name = f"{objective.prefix}_clean"
        losses = {clean_name: objective.task_loss(outputs, own, scale)}
        loss = losses[clean_name]
        if self.config.anchor_weight > 0:
            losses["anchor"] = objective.anchor(outputs, objective.reference_outputs(images))
            loss = loss + self.config.anchor_weight * losses["anchor"]
        losses["loss"] = loss
        return losses, {}

    def method_summary(self) -> dict:
        return {"inversion": self.inversion_report, "edit": self.edit_report}

    def trigger_for_report(self) -> Trigger | None:
        return self.trigger

    def method_state_dict(self) -> dict:
        state = {
            "edited_units": json.dumps({str(index): units for index, units in self.edited_units.items()}),
            "inversion_report": json.dumps(self.inversion_report),
            "edit_report": json.dumps(self.edit_report),
        }
        if self.trigger is not None:
            state["trigger"] = trigger_state(self.trigger)
        return state

    def load_method_state_dict(self, state: dict) -> None:
        self.edited_units = {int(index): units for index, units in json.loads(state["edited_units"]).items()}
        self.inversion_report = json.loads(state["inversion_report"])
        self.edit_report = json.loads(state["edit_report"])
        if "trigger" in state:
            self.trigger = trigger_from_state(state["trigger"], self.model.device)
        self.apply_edit()


register_defense("age", AGEConfig, AGE)
