"""Tests of *complete* unlearning (docs/method.md, "Complete unlearning"): the retuning attack and re-inversion.

Functional removal (ASR ~0 after cleaning) can be superficial: a short fine-tune on a few poisoned pairs brings the
backdoor straight back (Min et al., "Towards Understanding the Superficial Safety of Backdoor Defense", NeurIPS
2024, arXiv:2410.09838). A model is *completely* cleaned when it behaves like one that never saw the poison:

* **Persistent** -- :func:`retuning_attack` fine-tunes a copy of the model for ``steps`` steps on a small clean
  subset of the defender's data in which a fraction of the pairs carry the *true* trigger and a caption naming the
  target, then measures the ASR again (RA-ASR). Complete removal means RA-ASR close to the RA-ASR of a
  never-poisoned reference model under the same retuning.
* **Not re-invertible** -- :func:`reinversion` runs the untargeted blind inversion (:class:`BlindInversion`) on the
  model and reports its best backdoor score; complete removal means a score no higher than the reference's.

:func:`measure_persistence` runs both on one model; :func:`complete_block` puts a cleaned model's and a reference's
measurements side by side in the ``"complete"`` block of ``results.json``::

    >>> cleaned = measure_persistence(model, clean, trigger, "zero", test, test.classnames, templates)
    >>> reference = measure_persistence(never_poisoned, clean, trigger, "zero", test, test.classnames, templates)
    >>> complete_block(cleaned, reference)
    {'ra_asr': 0.93, 'reference_ra_asr': 0.01, 'reinversion_score': 0.41, 'reference_score': 0.22, ...}

Everything here is single-process and never modifies the model it is given (retuning works on a deep copy).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from clipclean.evaluation import evaluate_zeroshot, zeroshot_classifier
from clipclean.inversion import BlindInversion, InversionConfig
from clipclean.models import PixelCLIP, unwrap
from clipclean.poisoning import PoisonedDataset, TemplateCaptions, dataset_captions, make_poison_manifest
from clipclean.training import (
    CaptionTokenizer,
    LoopState,
    clamp_logit_scale_,
    contrastive_step,
    make_clip_loss,
    make_optimizer,
    train_steps,
)
from clipclean.triggers import Trigger

logger = logging.getLogger(__name__)

# One persistence criterion everywhere (library flag, tests, benchmarks, README): a cleaned model re-learns the
# backdoor under the retuning attack no more than 10 points faster than a never-poisoned model.
PERSISTENCE_MARGIN = 0.10
# The targeted re-inversion test: a trigger toward the known target is "still found" when its ASR exceeds the
# reference's by more than this (chosen on the development zoo set of benchmarks/reinversion.py, 2026-12-07).
TARGETED_REINVERSION_MARGIN = 0.3
COMPLETE_KEYS = ("ra_asr", "reference_ra_asr", "reinversion_score", "reference_score")


@dataclass
class RetuningConfig:
    """The retuning attack (docs/evaluation.md, "Complete unlearning: retuning attack and re-inversion"). Defaults:
    measured to restore a superficially removed backdoor on a tiny digits CLIP to > 90% ASR while a never-poisoned one
    stays < 1%.

    Args:
        steps: fine-tuning steps ``R``.
        lr: AdamW learning rate (constant).
        weight_decay: AdamW weight decay (not on gains, biases, embeddings, logit scale).
        n_pairs: pairs of the retuning set, drawn from the defender's clean data; ``None``: 100 or 1% of the
            clean set, whichever is larger (capped at the clean set's size).
        poison_fraction: fraction of those pairs that carry the true trigger and a target caption.
        batch_size: pairs per step.
        seed: seeds the choice of pairs, the poisoned subset, their captions and the batch order.
    """

    steps: int = 60
    lr: float = 1e-4
    weight_decay: float = 0.1
    n_pairs: int | None = None
    poison_fraction: float = 0.1
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 < self.poison_fraction < 1:
            raise ValueError(f"poison_fraction must lie in (0, 1), got {self.poison_fraction}")
        if self.n_pairs is not None and self.n_pairs < 2:
            raise ValueError(f"n_pairs must be >= 2, got {self.n_pairs}")

    @classmethod
    def from_setting(cls, setting: str, seed: int = 0) -> RetuningConfig:
        """``"STEPS:POISON_FRACTION:LR"`` (e.g. ``"60:0.1:1e-4"``, the default attack) -> a config with that seed;
        ``ValueError`` on a malformed or out-of-range setting."""
        parts = setting.split(":")
        if len(parts) != 3:
            raise ValueError(f"a retuning setting is STEPS:POISON_FRACTION:LR, got {setting!r}")
        steps, fraction, lr = parts
        return cls(steps=int(steps), poison_fraction=float(fraction), lr=float(lr), seed=seed)

    def resolve_pairs(self, n_clean: int) -> int:
        """The retuning set size for a clean set of ``n_clean`` pairs."""
        wanted = self.n_pairs if self.n_pairs is not None else max(100, math.ceil(0.01 * n_clean))
        return min(wanted, n_clean)


@dataclass
class Persistence:
    """What :func:`measure_persistence` measured on one model (``None`` where a test was skipped)."""

    ra_asr: float | None = None
    ra_clean_accuracy: float | None = None
    reinversion_score: float | None = None
    reinversion_target: str | None = None
    targeted_reinversion_asr: float | None = None
    retuning: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Persistence:
        keys = ("ra_asr", "ra_clean_accuracy", "reinversion_score", "reinversion_target", "targeted_reinversion_asr")
        return cls(**{key: values.get(key) for key in keys}, retuning=values.get("retuning") or {})


def retuning_set(
    clean: Dataset, trigger: Trigger, target: str, templates: Sequence[str], config: RetuningConfig
) -> PoisonedDataset:
    """The retuning attack's data: ``config.resolve_pairs(len(clean))`` clean pairs (seeded choice), of which
    ``poison_fraction`` (at least one) carry ``trigger`` and a caption from ``templates`` filled with ``target``."""
    n_pairs = config.resolve_pairs(len(clean))
    generator = torch.Generator().manual_seed(config.seed)
    chosen = sorted(torch.randperm(len(clean), generator=generator)[:n_pairs].tolist())
    subset = Subset(clean, chosen)
    n_poison = max(1, round(config.poison_fraction * n_pairs))
    manifest = make_poison_manifest(
        dataset_captions(subset),
        TemplateCaptions(target, list(templates)),
        n_poison=n_poison,
        seed=config.seed,
        attack="retuning",
    )
    return PoisonedDataset(subset, trigger, manifest)


def retuning_attack(
    model: PixelCLIP,
    clean: Dataset,
    trigger: Trigger,
    target: str,
    eval_data: Dataset,
    classnames: Sequence[str],
    templates: Sequence[str],
    config: RetuningConfig | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Fine-tune a copy of ``model`` on a lightly poisoned clean subset and measure ASR again (RA-ASR).

    Args:
        model: the model under test (not modified).
        clean: the defender's image-caption set ``(image (3, H, W) in [0, 1], caption)``.
        trigger: the true trigger (acts on [0, 1] pixels).
        target: the target class name (one of ``classnames``); poisoned captions are ``templates`` filled with it.
        eval_data: classification set ``(image, label)`` for CA and ASR (protocol of :mod:`clipclean.evaluation`).
        classnames, templates: the zero-shot classifier's class names and templates.

    Returns:
        ``{"ra_asr", "ra_clean_accuracy", "n_pairs", "n_poisoned", "config"}``.
    """
    config = config or RetuningConfig()
    source = unwrap(model)
    data = retuning_set(clean, trigger, target, templates, config)
    retuned = source.fresh_copy().train().requires_grad_(True)
    loader = DataLoader(
        data,
        batch_size=min(config.batch_size, len(data)),
        shuffle=True,
        drop_last=True,
        collate_fn=CaptionTokenizer(retuned.tokenizer),
        generator=torch.Generator().manual_seed(config.seed),
    )
    optimizer = make_optimizer(retuned, config.lr, weight_decay=config.weight_decay)
    loss_fn = make_clip_loss()

    def contrastive_loss(batch, state: LoopState) -> torch.Tensor:
        images, tokens = batch
        return contrastive_step(retuned, images.to(retuned.device), tokens.to(retuned.device), loss_fn)

    with torch.enable_grad():
        train_steps(
            retuned,
            loader,
            optimizer,
            contrastive_loss,
            config.steps,
            on_step=lambda state: clamp_logit_scale_(retuned),
            description="retuning attack",
            progress=progress,
        )
    retuned.eval()
    classifier = zeroshot_classifier(retuned, classnames, templates)
    metrics = evaluate_zeroshot(
        retuned, eval_data, classnames, trigger=trigger, target=target, seed=config.seed, classifier=classifier
    )
    return {
        "ra_asr": metrics["asr_top1"],
        "ra_clean_accuracy": metrics["top1"],
        "n_pairs": len(data),
        "n_poisoned": len(data.poison_indices),
        "config": asdict(config),
    }


REINVERSION_DEFAULTS: dict[str, Any] = {"hypothesis_init": "diffuse"}
"""What the re-inversion test changes in :class:`InversionConfig`: diffuse starts. It compares the *best* backdoor
score the search reaches on two models, and focused starts reach strong natural universal patches on any tiny
model (measured, digits CLIPs seed 0: never-poisoned 0.64 vs backdoored BadNet 0.55), so the score stopped telling
them apart; with diffuse starts it did (0.28 vs 0.57). The verdict, which compares candidates within one model,
keeps the focused starts."""


def reinversion_config(**options: Any) -> InversionConfig:
    """The re-inversion's :class:`InversionConfig`: :data:`REINVERSION_DEFAULTS` updated with ``options``."""
    return InversionConfig(**{**REINVERSION_DEFAULTS, **options})


def reinversion(
    model: PixelCLIP,
    images: torch.Tensor,
    captions: Sequence[str],
    candidate_names: Sequence[str] | None = None,
    candidate_embeddings: torch.Tensor | None = None,
    config: InversionConfig | None = None,
) -> dict[str, Any]:
    """Run the untargeted blind inversion on ``model`` and report the best backdoor score it reaches.

    Args:
        images: ``(N, 3, H, W)`` clean images in [0, 1]; ``captions``: their captions.
        candidate_names, candidate_embeddings: optional named targets ``(C, d)`` to name the recovered direction.
        config: the inversion's configuration (default :func:`reinversion_config`; the verdict is not run).

    Returns:
        ``{"reinversion_score", "reinversion_target", "hijacked_fraction"}``.
    """
    inverter = BlindInversion(
        unwrap(model),
        config or reinversion_config(),
        candidate_names=list(candidate_names) if candidate_names is not None else None,
        candidate_embeddings=candidate_embeddings,
    )
    with torch.enable_grad():
        result = inverter.fit(images, list(captions), verdict=False)
    return {
        "reinversion_score": result.backdoor_score,
        "reinversion_target": result.recovered_target,
        "hijacked_fraction": result.hijacked_fraction,
    }


def targeted_reinversion(
    model: PixelCLIP,
    images: torch.Tensor,
    captions: Sequence[str],
    target: str,
    candidate_names: Sequence[str],
    candidate_embeddings: torch.Tensor,
    config: InversionConfig | None = None,
) -> float:
    """The ASR of a fresh targeted inversion toward the known ``target`` (the verdict's per-candidate test alone:
    :meth:`BlindInversion.targeted_rates`, default :class:`InversionConfig`, so the same budget on every model).

    Where the untargeted re-inversion asks "is there a strong trigger toward anything?" and can be outscored by a
    natural patch of the reference, this asks "can a trigger toward the target still be found?".
    """
    inverter = BlindInversion(
        unwrap(model),
        config or InversionConfig(),
        candidate_names=list(candidate_names),
        candidate_embeddings=candidate_embeddings,
    )
    with torch.enable_grad():
        return inverter.targeted_rates(images, captions, [target])[target]


def first_pairs(clean: Dataset, count: int) -> tuple[torch.Tensor, list[str]]:
    """The images ``(n, 3, H, W)`` and captions of the first ``count`` pairs of ``clean`` (all of them when fewer):
    what the re-inversion tests read."""
    count = min(count, len(clean))
    images = torch.stack([clean[index][0] for index in range(count)])
    return images, dataset_captions(Subset(clean, range(count)))


def measure_persistence(
    model: PixelCLIP,
    clean: Dataset,
    trigger: Trigger | None,
    target: str | None,
    eval_data: Dataset | None,
    classnames: Sequence[str],
    templates: Sequence[str],
    retuning: RetuningConfig | None = None,
    inversion: InversionConfig | None = None,
    max_inversion_images: int = 512,
    progress: bool = False,
    retuning_pool: Dataset | None = None,
) -> Persistence:
    """Both tests of complete unlearning on one model.

    The retuning attack needs the true ``trigger``, its ``target`` and ``eval_data``; it draws its pairs from
    ``retuning_pool`` (the attacker's data; default ``clean``, but a pool disjoint from the defender's set is the
    fair test: the cleaned model has been trained on ``clean``). Without them only re-inversion runs (its images and
    captions are the first ``max_inversion_images`` pairs of ``clean``).
    """
    persistence = Persistence()
    if trigger is not None and target is not None and eval_data is not None:
        pool = clean if retuning_pool is None else retuning_pool
        attack = retuning_attack(model, pool, trigger, target, eval_data, classnames, templates, retuning, progress)
        persistence.ra_asr = attack["ra_asr"]
        persistence.ra_clean_accuracy = attack["ra_clean_accuracy"]
        persistence.retuning = {key: attack[key] for key in ("n_pairs", "n_poisoned", "config")}
    pixel_model = unwrap(model)
    images, captions = first_pairs(clean, max_inversion_images)
    images = images.to(pixel_model.device)
    with torch.no_grad():
        embeddings = zeroshot_classifier(pixel_model, classnames, templates) if classnames else None
    found = reinversion(pixel_model, images, captions, classnames or None, embeddings, inversion)
    persistence.reinversion_score = found["reinversion_score"]
    persistence.reinversion_target = found["reinversion_target"]
    if target is not None and classnames and target in classnames:
        # the untargeted re-inversion's settings (seed, steps, --reinversion-option) with the verdict's focused starts
        targeted = replace(inversion or reinversion_config(), hypothesis_init="focused")
        persistence.targeted_reinversion_asr = targeted_reinversion(
            pixel_model, images, captions, target, classnames, embeddings, targeted
        )
    return persistence


def complete_block(cleaned: Persistence, reference: Persistence | None) -> dict[str, Any]:
    """The ``"complete"`` block of ``results.json``: the cleaned model's measurements next to the reference's.

    Keys: ``ra_asr``, ``reference_ra_asr``, ``reinversion_score``, ``reference_score`` (``None`` when not
    measured), plus ``ra_clean_accuracy``, ``reference_ra_clean_accuracy``, the re-inverted targets, the retuning
    set's size and config, and ``persistent`` / ``not_reinvertible``: whether the cleaned model is no worse than
    the reference (RA-ASR at most :data:`PERSISTENCE_MARGIN` above it; score no higher) -- ``None`` without a
    reference.
    """
    reference = reference or Persistence()
    block = {
        "ra_asr": cleaned.ra_asr,
        "reference_ra_asr": reference.ra_asr,
        "reinversion_score": cleaned.reinversion_score,
        "reference_score": reference.reinversion_score,
        "ra_clean_accuracy": cleaned.ra_clean_accuracy,
        "reference_ra_clean_accuracy": reference.ra_clean_accuracy,
        "reinversion_target": cleaned.reinversion_target,
        "reference_reinversion_target": reference.reinversion_target,
        "targeted_reinversion_asr": cleaned.targeted_reinversion_asr,
        "reference_targeted_reinversion_asr": reference.targeted_reinversion_asr,
        "retuning": cleaned.retuning,
        "persistent": None,
        "not_reinvertible": None,
        "not_reinvertible_targeted": None,
    }
    if cleaned.ra_asr is not None and reference.ra_asr is not None:
        block["persistent"] = cleaned.ra_asr <= reference.ra_asr + PERSISTENCE_MARGIN
    if cleaned.reinversion_score is not None and reference.reinversion_score is not None:
        block["not_reinvertible"] = cleaned.reinversion_score <= reference.reinversion_score
    if cleaned.targeted_reinversion_asr is not None and reference.targeted_reinversion_asr is not None:
        margin = TARGETED_REINVERSION_MARGIN
        block["not_reinvertible_targeted"] = (
            cleaned.targeted_reinversion_asr <= reference.targeted_reinversion_asr + margin
        )
    return block


def complete_caveats(block: dict[str, Any]) -> list[str]:
    """What the tests of a :func:`complete_block` do not say, as lines to print under its table.

    The untargeted re-inversion test compares the *best* score on the model with the reference's, and on the digits
    CLIPs that comparison passed backdoored models that were never cleaned (docs/evaluation.md, "Complete
    unlearning"): a natural universal patch on the reference can outscore the implanted trigger. So its pass is
    reported as weak evidence when nothing else backs it, and as a disagreement when the retuning attack contradicts
    it; a targeted re-inversion that still finds a trigger toward the target is reported whatever the other tests say.

        >>> complete_caveats({"persistent": False, "not_reinvertible": True})[0][:30]
        'the tests disagree: the retuni'
    """
    caveats = []
    if block.get("not_reinvertible_targeted") is False:
        caveats.append(
            "a trigger toward the target is still found: targeted re-inversion ASR "
            f"{100 * block['targeted_reinversion_asr']:.1f}% against the reference's "
            f"{100 * block['reference_targeted_reinversion_asr']:.1f}% (more than "
            f"{100 * TARGETED_REINVERSION_MARGIN:.0f} points over)"
        )
    if block.get("not_reinvertible"):
        if block.get("persistent") is False:
            caveats.append(
                "the tests disagree: the retuning attack brings the backdoor back (RA-ASR over the reference's by "
                f"more than {100 * PERSISTENCE_MARGIN:.0f} points) although the untargeted re-inversion found no "
                "trigger scoring above the reference's; it misses backdoors that retuning revives (docs/evaluation.md)"
            )
        elif block.get("not_reinvertible_targeted") is None:
            caveats.append(
                "the untargeted re-inversion found no trigger scoring above the reference's: weak evidence, since it "
                "has passed backdoored models that were never cleaned (docs/evaluation.md); read RA-ASR first"
            )
    return caveats


def complete_table_rows(block: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Display rows ``(test, model, reference)`` of a :func:`complete_block` (ASRs in %, scores to 3 places; the
    targeted re-inversion's row only where it was measured)."""

    def show(value: float | None, percent: bool) -> str:
        if value is None:
            return "n/a"
        return f"{100 * value:.1f}%" if percent else f"{value:.3f}"

    rows = [
        ("RA-ASR (retuning attack)", show(block["ra_asr"], True), show(block["reference_ra_asr"], True)),
        ("re-inversion score", show(block["reinversion_score"], False), show(block["reference_score"], False)),
    ]
    targeted = block.get("targeted_reinversion_asr")
    if targeted is not None:  # blocks written before the targeted test have no such key
        reference = block.get("reference_targeted_reinversion_asr")
        rows.append(("targeted re-inversion ASR", show(targeted, True), show(reference, True)))
    return rows
