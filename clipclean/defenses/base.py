"""The defense interface and registry shared by every backdoor-removal method.

A defense is a step-level algorithm: the recipe (``recipes/clean_clip.py``) owns the loop, the optimiser and
the ``Accelerator``; the defense says what happens before each round (``begin_round``: e.g. trigger
inversion), what one optimisation step computes (``forward(model, batch) -> (losses, report)``, where
``losses["loss"]`` is backpropagated and every term is returned by name for logging) and whether to stop
(``end_round``). Round 0's ``begin_round`` sees the model before any update.

Registering a method is one explicit line next to its class::

    register_defense("finetune", FinetuneConfig, Finetune)
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import open_clip
import torch
from torch import nn

from clipclean.defenses.objectives import feature_anchor_loss, make_objective
from clipclean.inversion import InversionConfig, InversionResult, ReduceFn, build_inverter, no_reduce
from clipclean.models import PixelCLIP
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
        rank, world_size: for open_clip's ``ClipLoss(gather_with_grad=True)``.
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
    extras: dict[str, Any] = field(default_factory=dict)

    def clip_loss(self) -> open_clip.ClipLoss:
        """Symmetric InfoNCE gathering features *with gradient* across processes."""
        return make_clip_loss(self.rank, self.world_size)


Batch = tuple[torch.Tensor, torch.Tensor]  # images (B, 3, H, W) in [0, 1], caption tokens (B, context_length)


class Defense:
    """Base class of a backdoor-removal method (see the module docstring for the protocol)."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type[DefenseConfig]] = DefenseConfig

    def __init__(self, model: PixelCLIP, config: DefenseConfig, context: DefenseContext) -> None:
        self.model = model
        self.config = config
        self.context = context
        self.objective = make_objective(model, context)
        self.clip_loss = context.clip_loss()
        self.timer = PhaseTimer()  # wall time of the defense's own phases (inversion, verdict...), for results.json

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the recipe's optimiser updates (image tower or everything, per ``config.tune``; a
        classifier's image tower is its whole network)."""
        if self.config.tune == "all":
            return [p for p in self.model.parameters() if p.requires_grad]
        return [p for p in self.objective.image_parameters(self.model) if p.requires_grad]

    def begin_round(self, round_index: int, batches: Iterable[Batch]) -> dict:
        """Work before the round's optimisation epochs (inversion, editing...); returns a report."""
        return {}

    def forward(self, model: nn.Module, batch: Batch) -> tuple[dict[str, torch.Tensor], dict]:
        """One optimisation step's losses (``losses["loss"]`` is minimised) and a report."""
        raise NotImplementedError

    def end_round(self, round_index: int, batches: Iterable[Batch]) -> tuple[bool, dict]:
        """After the round: ``(stop_early, report)``."""
        return False, {}

    def summary(self) -> dict:
        """Method-specific results for ``results.json`` (e.g. the inversion block)."""
        return {}

    def state_dict(self) -> dict:
        """Method state to checkpoint between rounds (tensors, numbers and strings only)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (called before the first resumed round)."""

    def trigger_for_report(self):
        """The (inverted/generated) trigger the method used, or ``None``."""
        return None


DEFENSES: dict[str, tuple[type[DefenseConfig], type[Defense]]] = {}


def register_defense(name: str, config_class: type[DefenseConfig], defense_class: type[Defense]) -> None:
    """Register a defense under a lowercase, unique name."""
    if name != name.lower() or not name.replace("_", "").isalnum():
        raise ValueError(f"defense names are lowercase identifiers, got {name!r}")
    if name in DEFENSES:
        raise ValueError(f"defense {name!r} is already registered")
    if not issubclass(config_class, DefenseConfig) or not issubclass(defense_class, Defense):
        raise TypeError("register_defense needs a DefenseConfig subclass and a Defense subclass")
    defense_class.name = name
    defense_class.config_class = config_class
    DEFENSES[name] = (config_class, defense_class)


def build_defense(
    name: str, model: PixelCLIP, context: DefenseContext, overrides: dict[str, Any] | None = None
) -> Defense:
    """Instantiate a registered defense with its config defaults updated by ``overrides`` (unknown keys fail)."""
    if name not in DEFENSES:
        raise ValueError(f"unknown defense {name!r}; registered: {sorted(DEFENSES)}")
    config_class, defense_class = DEFENSES[name]
    overrides = {key: value for key, value in (overrides or {}).items() if value is not None}
    unknown = set(overrides) - set(config_class.field_names())
    if unknown:
        raise ValueError(f"defense {name!r} has no option(s) {sorted(unknown)}; options: {config_class.field_names()}")
    return defense_class(model, config_class(**overrides), context)


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


Callback = Callable[[dict], None]
