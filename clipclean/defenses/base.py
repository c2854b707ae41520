"""The defense interface and registry shared by every backdoor-removal method.

A defense is a step-level algorithm: the cleaning session (:mod:`clipclean.cli.cleaning`) owns the loop, the
optimiser and the ``Accelerator``; the defense says what happens before each round (``begin_round``: e.g. trigger
inversion), what one optimisation step computes (``forward(model, batch) -> (losses, report)``, where
``losses["loss"]`` is backpropagated and every term is returned by name for logging) and whether to stop
(``end_round``). Round 0's ``begin_round`` sees the model before any update.

The base class owns what every method shares: it averages each loss term over the round's steps, writes one report
per round (``{"round", "steps", "mean_<term>"...}`` plus the method's own entries), keeps those reports in
:meth:`Defense.summary` and checkpoints them in :meth:`Defense.state_dict`. A method writes only its own idea:

* ``loss(model, batch) -> (losses, report)``: the step's loss terms (required);
* ``begin_round``: work before the round's epochs (inversion, editing...);
* ``finish_round(round_index, batches) -> (stop, entries)``: work after them, and entries for the round's report;
* ``method_summary``, ``method_state_dict``/``load_method_state_dict``: the method's own results and state.

A new defense is one file in this package holding its config, its class and one registration line::

    register_defense("finetune", FinetuneConfig, Finetune)

Every module of the package is imported with it (``clipclean/defenses/__init__.py``), so nothing else is edited.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any, ClassVar, NamedTuple

import open_clip
import torch
from torch import nn

from clipclean.defenses.objectives import feature_anchor_loss, make_objective
from clipclean.inversion import InversionConfig, InversionResult, ReduceFn, build_inverter, no_reduce
from clipclean.models import PixelCLIP
from clipclean.registry import Registry, build_config
from clipclean.timing import PhaseTimer
from clipclean.training import make_clip_loss
from clipclean.triggers import TRIGGER_FAMILIES, Trigger

logger = logging.getLogger(__name__)


@dataclass
class DefenseConfig:
    """Base of every defense config: ``rounds`` outer rounds of ``epochs`` passes over the defender data.

    Subclasses add their own hyper-parameters (defaults in exactly one place) and validate them in
    ``__post_init__`` (call ``super().__post_init__()``).
    """

    rounds: int = 1
    epochs: int = 2
    lr: float = 1e-4
    weight_decay: float = 0.0
    tune: str = "image"  # which parameters the optimiser updates: "image" tower or "all"

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.epochs < 0:
            raise ValueError(f"rounds must be >= 1 and epochs >= 0, got {self.rounds}, {self.epochs}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.tune not in ("image", "all"):
            raise ValueError(f"tune must be 'image' or 'all', got {self.tune!r}")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


@dataclass
class DefenseContext:
    """What a defense may know besides the model and the defender data.

    Attributes:
        candidate_names, candidate_embeddings: named target candidates ``(C, d)`` (class prompts/captions).
        target_caption: the known target caption (targeted mode) or ``None`` (untargeted).
        reference: a frozen copy of the starting model (anchoring/distillation).
        reduce_fn: cross-process reduction ``reduce_fn(tensor, op)`` (identity on one process).
        rank, world_size: for open_clip's ``ClipLoss(gather_with_grad=True)``, and to share the image counts of a
            config (``reset_samples``, ``n_samples``, ``verdict_batch_size``: totals over all processes) among them.
        progress: show progress bars.
    """

    candidate_names: list[str] | None = None
    candidate_embeddings: torch.Tensor | None = None
    target_caption: str | None = None
    reference: PixelCLIP | None = None
    reduce_fn: ReduceFn = no_reduce
    rank: int = 0
    world_size: int = 1
    progress: bool = False

    def clip_loss(self) -> open_clip.ClipLoss:
        """Symmetric InfoNCE gathering features *with gradient* across processes."""
        return make_clip_loss(self.rank, self.world_size)


Batch = tuple[torch.Tensor, torch.Tensor]  # images (B, 3, H, W) in [0, 1], caption tokens (B, context_length)


class Defense:
    """Base class of a backdoor-removal method (see the module docstring for the protocol).

    Attributes:
        round_reports: one report per finished round (``{"round", "steps", "mean_<term>"...}`` and the method's
            entries from :meth:`finish_round`).
        steps: optimisation steps taken, over all rounds.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[DefenseConfig]] = DefenseConfig
    report_means: ClassVar[tuple[str, ...]] = ()  # entries of the step report averaged into the round report too

    def __init__(self, model: PixelCLIP, config: DefenseConfig, context: DefenseContext) -> None:
        self.model = model
        self.config = config
        self.context = context
        self.objective = make_objective(model, context)
        self.clip_loss = context.clip_loss()
        self.timer = PhaseTimer()  # wall time of the defense's own phases (inversion, verdict...), for results.json
        self.round_reports: list[dict] = []
        self.steps = 0
        self._round_sums: dict[str, float] = {}
        self._round_steps = 0

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the recipe's optimiser updates (image tower or everything, per ``config.tune``; a
        classifier's image tower is its whole network)."""
        if self.config.tune == "all":
            return [p for p in self.model.parameters() if p.requires_grad]
        return [p for p in self.objective.image_parameters(self.model) if p.requires_grad]

    # ---- what a method writes ----------------------------------------------------------------------------------
    def begin_round(self, round_index: int, batches: Iterable[Batch]) -> dict:
        """Work before the round's optimisation epochs (inversion, editing...); returns a report."""
        return {}

    def loss(self, model: nn.Module, batch: Batch) -> tuple[dict[str, torch.Tensor], dict]:
        """One optimisation step's loss terms by name (``losses["loss"]`` is minimised) and a report."""
        raise NotImplementedError

    def finish_round(self, round_index: int, batches: Iterable[Batch]) -> tuple[bool, dict]:
        """Work after the round's epochs: ``(stop_early, entries for the round's report)``."""
        return False, {}

    def method_summary(self) -> dict:
        """The method's own results, merged into :meth:`summary`."""
        return {}

    def method_state_dict(self) -> dict:
        """The method's own state to checkpoint between rounds (tensors, numbers and strings only)."""
        return {}

    def load_method_state_dict(self, state: dict) -> None:
        """Restore :meth:`method_state_dict` (``state`` is the whole checkpointed dict)."""

    def trigger_for_report(self):
        """The (inverted/generated) trigger the method used, or ``None``."""
        return None

    # ---- what the base owns -------------------------------------------------------------------------------------
    def round_mean(self, name: str) -> float | None:
        """The mean of loss term (or ``report_means`` entry) ``name`` over the current round's steps so far."""
        return self._round_sums[name] / self._round_steps if name in self._round_sums else None

    def forward(self, model: nn.Module, batch: Batch) -> tuple[dict[str, torch.Tensor], dict]:
        """:meth:`loss`, with every term (and the ``report_means`` entries of the report) added to the round's
        running sums."""
        losses, report = self.loss(model, batch)
        values = {name: float(value.detach()) for name, value in losses.items()}
        values.update({name: float(report[name]) for name in self.report_means})
        for name, value in values.items():
            self._round_sums[name] = self._round_sums.get(name, 0.0) + value
        self._round_steps += 1
        self.steps += 1
        return losses, report

    def end_round(self, round_index: int, batches: Iterable[Batch]) -> tuple[bool, dict]:
        """:meth:`finish_round`, then the round's report: ``{"round", <the method's entries>, "steps",
        "mean_<term>"...}`` (means over this process's steps), kept in :attr:`round_reports`. Returns
        ``(stop_early, report)``."""
        stop, entries = self.finish_round(round_index, batches)
        report = {"round": round_index, **entries, "steps": self._round_steps}
        report.update({f"mean_{name}": total / self._round_steps for name, total in self._round_sums.items()})
        self.round_reports.append(report)
        self._round_sums, self._round_steps = {}, 0
        return stop, report

    def summary(self) -> dict:
        """Results for ``results.json`` and ``inversion/report.json``: the method's (:meth:`method_summary`) and the
        round reports under ``"rounds"``."""
        return {**self.method_summary(), "rounds": self.round_reports}

    def state_dict(self) -> dict:
        """State to checkpoint between rounds: the round reports, the step count and the method's state."""
        return {**self.method_state_dict(), "round_reports": json.dumps(self.round_reports), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (called before the first resumed round)."""
        self.round_reports = json.loads(state["round_reports"])
        self.steps = int(state.get("steps", state.get("step", 0)))  # "step": checkpoints written before 2026-12-03
        self.load_method_state_dict(state)


class DefenseSpec(NamedTuple):
    """A registered defense: ``DEFENSES[name] -> (config_class, defense_class)``."""

    config_class: type[DefenseConfig]
    defense_class: type[Defense]


DEFENSES: Registry[str, DefenseSpec] = Registry("defense")


def register_defense(name: str, config_class: type[DefenseConfig], defense_class: type[Defense]) -> None:
    """Register a defense under a lowercase, unique name (one line in the defense's own file)."""
    if not (isinstance(config_class, type) and issubclass(config_class, DefenseConfig)):
        raise TypeError("register_defense needs a DefenseConfig subclass and a Defense subclass")
    if not (isinstance(defense_class, type) and issubclass(defense_class, Defense)):
        raise TypeError("register_defense needs a DefenseConfig subclass and a Defense subclass")
    DEFENSES.register(name, DefenseSpec(config_class, defense_class))
    defense_class.name = name
    defense_class.config_class = config_class


def build_defense(
    name: str, model: PixelCLIP, context: DefenseContext, overrides: dict[str, Any] | None = None
) -> Defense:
    """Instantiate a registered defense with its config defaults updated by ``overrides`` (``None`` values keep the
    default; unknown keys fail with the valid ones, :func:`clipclean.registry.build_config`)."""
    config_class, defense_class = DEFENSES[name]
    return defense_class(model, build_config(config_class, overrides, f"defense {name!r}"), context)


__all__ = ["feature_anchor_loss"]  # re-exported: defined with the other objective pieces


def invert_trigger(
    model: PixelCLIP,
    config: InversionConfig,
    context: DefenseContext,
    batches: Iterable[Batch],
    verdict: bool = False,
) -> InversionResult:
    """Run the blind inversion (:func:`~clipclean.inversion.build_inverter`: a CLIP's or a classifier's) once for a
    defense that needs a trigger and a target.

    Untargeted (the E-step estimates the target direction) unless ``context.target_caption`` is set; the
    anomaly-index verdict runs when ``verdict`` and the context has candidates. The result's trigger is a frozen
    copy (``requires_grad=False``) that acts on ``(B, 3, H, W)`` images in [0, 1].
    """
    inverter = build_inverter(
        model,
        config,
        candidate_names=context.candidate_names,
        candidate_embeddings=context.candidate_embeddings,
        target_caption=context.target_caption,
        reduce_fn=context.reduce_fn,
        progress=context.progress,
        world_size=context.world_size,
    )
    inverter.run_em(batches)
    result = inverter.result(batches if verdict and context.candidate_names is not None else None)
    result.trigger = copy.deepcopy(result.trigger).requires_grad_(False)
    return result


def trigger_state(trigger: Trigger) -> dict:
    """A trigger as checkpointable state (strings and tensors): family, JSON config and saved tensors."""
    tensors = {name: value.detach().cpu() for name, value in trigger.tensors().items()}
    return {"family": trigger.family, "config": json.dumps(trigger.config()), "tensors": tensors}


def trigger_from_state(state: dict, device: torch.device | str = "cpu") -> Trigger:
    """Rebuild a trigger saved with :func:`trigger_state` (the same function of the images)."""
    family = TRIGGER_FAMILIES[state["family"]]
    return family.from_saved(json.loads(state["config"]), state["tensors"]).to(device).requires_grad_(False)
