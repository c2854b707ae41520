"""Blind trigger inversion with EM: clipclean's formulation of BI-BAU's inversion (docs/method.md, "Blind inversion
with EM").

This is *clipclean's formulation of BI-BAU, reconstructed from the published abstract* (arXiv 2606.14078);
the paper's body is not available.

Backdoor signature: triggered images collapse toward one point ``u`` of the embedding space (the target
caption's embedding) whatever their content, and drift away from their own captions. With ``u`` unknown
(untargeted), EM alternates

* **E-step**: ``u = normalise(sum_i w_i g(T(x_i)))`` — the von Mises-Fisher mean of the triggered image
  embeddings weighted by the responsibilities ``w_i = sigmoid(kappa * (cos(g(T x_i), u) - cos(g(T x_i), h(c_i))))``;
  the posterior over named candidates (class prompts or captions) is ``softmax(s * u @ H.T)``.
* **M-step**: ``K`` gradient steps on the MAP objective with the model frozen,
  ``Q(phi) = mean_i log sigmoid(kappa * (cos(g(T x_i), u) - cos(g(T x_i), h(c_i))))
  - lambda_1 |m|_1 - lambda_2 TV(p)``,
  over a small population of trigger hypotheses (free patch/blend masks from several initialisations, an
  additive perturbation), each under a hard mask budget that starts small and grows only while no collapse
  is found (the minimal-trigger principle: a large mask can collapse embeddings on any model and names a
  wrong target).

The **verdict** needs no clean reference model: short *targeted* inversions toward every candidate at a small
budget give one attack success rate per candidate; the anomaly index ``(ASR_w - median) / (1.4826 * MAD)`` of
the untargeted E-step's winner ``w`` flags a backdoor when it exceeds the threshold (Neural Cleanse's rule is "the
largest index exceeds 2 and agrees with the winner"; scoring the winner itself makes it robust to a second,
naturally easy class tying with the target; docs/method.md, "Blind inversion with EM", has the measurements).

Image classifiers are the degenerate case (:class:`clipclean.classifiers.ClassifierInversion`): the same EM with
the E-step's evidence, directions and likelihood replaced (a posterior over the classes instead of the vMF mean);
:func:`build_inverter` picks the inverter for a model's kind.

Distributed use: every statistic the E-step sums and every trigger gradient goes through ``reduce_fn``
(set it to ``lambda t, op: accelerator.reduce(t, reduction=op)``), so all ranks hold the same ``u`` and the
same trigger parameters. Give ``world_size`` too: the image counts of the config (``verdict_batch_size``) are totals
over all processes, each process taking its share (:func:`process_share`), so that N processes fed the per-process
batches of a global batch ``B`` search as one process fed batches of ``B`` does.

Example::

    >>> inverter = BlindInversion(model, InversionConfig(), candidate_names=names, candidate_embeddings=W)
    >>> result = inverter.fit(images, captions)        # images (N, 3, H, W) in [0, 1]
    >>> result.verdict, result.recovered_target, result.trigger
    ('backdoored', 'zero', PatchBlendTrigger(...))
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from clipclean.models import PixelCLIP, PixelModel, lookup_by_kind, unwrap
from clipclean.registry import Registry
from clipclean.triggers import AdditiveTrigger, PatchBlendTrigger, Trigger

logger = logging.getLogger(__name__)

ReduceFn = Callable[[torch.Tensor, str], torch.Tensor]


def no_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """The single-process reduction (identity)."""
    return tensor


def process_share(total: int, world_size: int = 1) -> int:
    """One process's share of ``total`` samples counted over all ``world_size`` processes: ``ceil(total /
    world_size)``, at least 1. The processes together take ``total`` (rounded up to a multiple of ``world_size``),
    and the statistics they reduce with ``reduce_fn`` are then those of one process taking ``total``.

    Example::

        >>> process_share(32, 2), process_share(32, 3), process_share(32)
        (16, 11, 32)
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    return max(1, math.ceil(total / world_size))


VERDICT_STATISTICS = (
    "winner",
    "max-candidate",
    "winner-logit",
    "max-candidate-logit",
    "winner-lift",
    "max-candidate-lift",
    "winner-or-max-lift",
    "winner-or-max-or-search-lift",
)
CONFIRM_SEED_OFFSET = 7919  # a confirmation's trigger initialisations: not the first verdict's (seed * 31 + k)
LOGIT_EPSILON = 0.005  # log-odds statistics clip an ASR to [eps, 1 - eps] (about one image in 200) before log-odds
# The threshold of each statistic when ``InversionConfig.anomaly_threshold`` is not given. The anomaly indices keep
# Neural Cleanse's scale (2.5); the lifts are in log-odds units (benchmarks/README.md, "Model zoo").
DEFAULT_VERDICT_THRESHOLDS = {
    "winner": 2.5,
    "max-candidate": 2.5,
    "winner-logit": 2.5,
    "max-candidate-logit": 2.5,
    "winner-lift": 1.29,
    "max-candidate-lift": 1.29,
    "winner-or-max-lift": 1.29,
    "winner-or-max-or-search-lift": 1.29,
}


@dataclass
class InversionConfig:
    """Hyper-parameters of the blind inversion (defaults tuned on tiny CLIPs, 32x32 digits).

    Args:
        rounds: EM rounds (E-step + M-step each); the trigger is warm-started across rounds.
        steps_per_round: gradient steps ``K`` of the trigger M-step per round.
        lr: Adam learning rate on the trigger parameters (logits for patch/blend, delta for additive).
        kappa: vMF concentration in the likelihood.
        mask_budgets: the growing hard bound on the mask mean (fraction of the image). On the 2% digits CLIPs the
            search almost always stops at the first, 0.004 (about 4 pixels of 32x32, less than a 3x3 patch); the
            levels without it, ``(0.008, 0.016, 0.03)``, detected more backdoors on development models but failed
            the test on models built afterwards: there the targeted triggers reach every candidate and the verdict
            loses its contrast (benchmarks/README.md, "The search's smallest budget").
        collapse_fraction: a collapse is "found" when at least this fraction of triggered images is closer to
            ``u`` than to its own caption; the budget grows only while none is found.
        lambda_mask, lambda_tv: prior weights (L1 of the mask mean, total variation of the pattern).
        patch_hypotheses: number of free patch/blend initialisations in the population.
        hypothesis_init: ``"focused"`` (default): hypothesis ``j`` starts as a soft square at the ``j``-th of
            :data:`FOCUS_POINTS` (centre, then opposite corners), the remaining ones diffuse; ``"diffuse"``: every
            hypothesis starts as a faint full-image mask. Measured on the BadCLIP digits model: diffuse starts all
            fell into a natural universal patch ("eight", backdoor score 0.45) while focused starts found the
            implanted target ("zero", 0.61-0.74; the true trigger scores 0.83).
        additive_eps: L-inf budget of an additive hypothesis (0, the default, leaves it out: on tiny CLIPs an
            8/255 additive hypothesis is a universal adversarial perturbation that names a wrong target).
        verdict_budget, verdict_steps: budget and steps of the per-candidate targeted inversions; the budget
            defaults to the one the untargeted search ended at (the smallest that collapsed the embeddings).
        verdict_budget_scale: without ``verdict_budget``, the verdict's budget is this fraction of the one the
            search ended at (default 1). A smaller one asks which class a trigger smaller than the search's
            reaches: an implanted trigger may still, a natural universal patch less so. At 0.5 it was tried on
            the 2% development models and not adopted: no false alarm, but two backdoors missed more
            (benchmarks/README.md, "A smaller verdict budget and fewer verdict steps").
        verdict_batch_size: images per step and per candidate in the verdict's targeted inversions, over all
            processes (each takes its :func:`process_share`; at most the batch it is fed).
        anomaly_threshold: the verdict statistic's score above which a backdoor is declared; ``None`` (default):
            the statistic's own (:data:`DEFAULT_VERDICT_THRESHOLDS`, :meth:`threshold_for`): 2.5 for the anomaly
            indices (Neural Cleanse uses 2), 1.29 for the lifts.
        verdict_statistic: what the verdict scores (:func:`verdict_score`); ``None`` (default): the inverter's
            default, ``"winner-or-max-or-search-lift"`` for a CLIP (:class:`BlindInversion`), ``"winner"`` for an
            image classifier.
            ``"winner"``: the anomaly index of the untargeted winner's targeted ASR among all candidates' (dividing
            by the candidates' spread, it scores a modest lead high on a model where every class is hard to reach);
            ``"max-candidate"``: the anomaly index of the largest targeted ASR, and when it declares a backdoor the
            target is that candidate (with its targeted trigger), even if the untargeted search named another class;
            ``"-logit"``: the same on the log-odds of the ASRs; ``"-lift"``: the scored candidate's log-odds minus
            the median candidate's; ``"winner-or-max-lift"``: the winner's lift or the largest lift minus ``ln(K)``,
            whichever is larger (and then that candidate is the target); ``"winner-or-max-or-search-lift"``: that,
            or the untargeted search's own trigger's lift minus ``ln(K)``, measured toward the winner on the
            verdict's images (:func:`verdict_score`). The CLIP default, ``"winner-or-max-or-search-lift"`` at 1.29,
            was chosen by a rule fixed beforehand on a development population of digits CLIPs and tested on models
            built afterwards; how, and how it does: benchmarks/README.md, "Model zoo".
        lift_handicap: what the largest targeted lift and the search trigger's lift pay in the combined lift
            statistics for being chosen after the fact among ``K`` candidates (:func:`verdict_score`); ``None``
            (default): ``ln(K)``. A smaller one was tried on development models (5% and 2% poisoned; benchmarks/
            README.md, "A lower poison rate"): it detected no backdoor more and added false alarms.
        confirm_top: re-test this many candidates other than the untargeted winner, those with the largest
            targeted ASRs, each with a fresh targeted inversion (another initialisation, the next batches) whose
            ASR is measured on the next images; its *confirmed lift* (log-odds minus the first measurement's median
            candidate) is scored like the winner's, without the ``ln(K)`` handicap, since the candidate was chosen
            on other measurements (:meth:`BlindInversion.confirm`). 0 (default): no re-test. Tried at 1 on
            development models (2% poisoned; benchmarks/README.md, "Ten more never-poisoned models"): it found
            backdoors the default missed and added more false alarms, since a never-poisoned model's next-easiest
            class reproduces too.
        verdict_holdout: the fraction of images (chosen by a hash of their pixels, :func:`holdout_mask`, so the
            same images whatever the batch order or process) the verdict's targeted inversions never fit and on
            which alone their ASRs (and the search trigger's) are measured. 0 (default): fit and measured on the
            same images, where a natural universal patch fitted to a small defender set can score as high as a
            backdoor's trigger. (The untargeted search still fits every image.) Tried at 0.25 on the same
            development models: at the threshold best for it, it cut false alarms but missed more backdoors.
        max_verdict_candidates: candidates tested by the verdict (the untargeted winner plus a seeded sample).
        micro_batch: at most this many triggered images per forward/backward pass in the M-step (also BI-BAU's
            re-fit and re-inversion, which are M-steps) and the verdict's targeted inversions: exact gradient
            accumulation over groups of triggers times chunks of the batch (the same gradient, less memory; the
            verdict stacks ``candidates x verdict_batch_size`` images, 640 on ImageNet-sized candidate sets, about
            20 GB of autograd graph on a ViT-B/32). The E-step and the verdict's ASR passes run without gradient.
            ``None`` (default): the whole batch in one pass.
        batch_size: images per batch of :meth:`BlindInversion.fit` (single process, in-memory data). A recipe's
            inversion takes the cleaning loader's batches instead: its M-steps use the whole per-process batch, so
            a step of N processes sees the recipe's global batch. (An image classifier's class hypotheses share
            ``batch_size x patch_hypotheses`` images per M-step, over all processes.)
        seed: seeds trigger initialisations and the verdict's candidate sample.
    """

    rounds: int = 4
    steps_per_round: int = 60
    lr: float = 0.1
    kappa: float = 10.0
    mask_budgets: tuple[float, ...] = (0.004, 0.008, 0.016, 0.03)
    collapse_fraction: float = 0.5
    lambda_mask: float = 0.01
    lambda_tv: float = 0.001
    patch_hypotheses: int = 3
    hypothesis_init: str = "focused"
    additive_eps: float = 0.0
    verdict_budget: float | None = None
    verdict_budget_scale: float = 1.0
    verdict_steps: int = 150
    anomaly_threshold: float | None = None
    verdict_statistic: str | None = None
    lift_handicap: float | None = None
    confirm_top: int = 0
    verdict_holdout: float = 0.0
    max_verdict_candidates: int = 20
    verdict_batch_size: int = 32
    micro_batch: int | None = None
    online_direction: bool = True
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.steps_per_round < 1 or self.verdict_steps < 1:
            raise ValueError("rounds, steps_per_round and verdict_steps must be >= 1")
        if not self.mask_budgets or any(not 0 < b <= 1 for b in self.mask_budgets):
            raise ValueError(f"mask_budgets must be non-empty values in (0, 1], got {self.mask_budgets}")
        if list(self.mask_budgets) != sorted(self.mask_budgets):
            raise ValueError("mask_budgets must grow")
        self.mask_budgets = tuple(float(b) for b in self.mask_budgets)
        if self.patch_hypotheses < 1:
            raise ValueError("patch_hypotheses must be >= 1")
        if not 0 <= self.verdict_holdout < 1:
            raise ValueError(f"verdict_holdout must be in [0, 1), got {self.verdict_holdout}")
        if not 0 < self.verdict_budget_scale <= 1:
            raise ValueError(f"verdict_budget_scale must be in (0, 1], got {self.verdict_budget_scale}")
        if self.confirm_top < 0:
            raise ValueError(f"confirm_top must be >= 0, got {self.confirm_top}")
        if self.lift_handicap is not None and self.lift_handicap < 0:
            raise ValueError(f"lift_handicap must be >= 0 (or None for ln K), got {self.lift_handicap}")
        if self.hypothesis_init not in ("focused", "diffuse"):
            raise ValueError(f"hypothesis_init must be 'focused' or 'diffuse', got {self.hypothesis_init!r}")
        if self.kappa <= 0 or self.lr <= 0:
            raise ValueError("kappa and lr must be > 0")
        if not 0 < self.collapse_fraction <= 1:
            raise ValueError("collapse_fraction must be in (0, 1]")
        if self.verdict_statistic is not None and self.verdict_statistic not in VERDICT_STATISTICS:
            raise ValueError(f"verdict_statistic must be one of {VERDICT_STATISTICS}, got {self.verdict_statistic!r}")
        if self.micro_batch is not None and self.micro_batch < 1:
            raise ValueError(f"micro_batch must be >= 1 or None, got {self.micro_batch}")

    def threshold_for(self, statistic: str) -> float:
        """The score of ``statistic`` above which the verdict declares a backdoor: ``anomaly_threshold`` when
        given, else the statistic's default (:data:`DEFAULT_VERDICT_THRESHOLDS`)."""
        if self.anomaly_threshold is not None:
            return float(self.anomaly_threshold)
        return DEFAULT_VERDICT_THRESHOLDS[statistic]

    def verdict_budget_for(self, search_budget: float) -> float:
        """The budget of the verdict's targeted triggers when the untargeted search ended at ``search_budget``:
        ``verdict_budget`` when given, else ``verdict_budget_scale`` times ``search_budget``."""
        return self.verdict_budget or search_budget * self.verdict_budget_scale


@dataclass
class EStepStats:
    """What one E-step estimated, per hypothesis ``j`` of the population (tensors of length ``P``)."""

    directions: torch.Tensor  # (P, d) unit target directions u_j
    backdoor_scores: torch.Tensor  # (P,) mean cos(g(Tx), u) - cos(g(Tx), h(c))
    concentrations: torch.Tensor  # (P,) mean resultant length of triggered embeddings
    hijacked_fractions: torch.Tensor  # (P,) fraction of images closer to u than to their own caption
    responsibilities: torch.Tensor  # (P,) mean w_i
    n_images: int


@dataclass
class InversionResult:
    """The inverted trigger and everything the inversion found."""

    trigger: Trigger
    direction: torch.Tensor
    backdoor_score: float
    concentration: float
    hijacked_fraction: float
    mask_budget: float | None
    target_candidates: list[tuple[str, float]] = field(default_factory=list)
    recovered_target: str | None = None
    verdict: str | None = None
    anomaly_index: float | None = None  # the verdict's score (an anomaly index or a lift: ``verdict_statistic``)
    candidate_asr: dict[str, float] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    named_by: str = "untargeted search"  # or "verdict": the per-candidate test named another target
    verdict_statistic: str | None = None
    verdict_threshold: float | None = None
    untargeted_winner: str | None = None  # the untargeted search's target, kept when the verdict names another
    # the untargeted search's own trigger's ASR toward its winner, on the verdict's images (BlindInversion.verdict)
    search_trigger_asr: float | None = None
    lift_handicap: float | None = None  # InversionConfig.lift_handicap (None: ln K)
    confirmed_lifts: dict[str, float] = field(default_factory=dict)  # candidate -> confirmed lift (confirm_top)

    def report(self) -> dict:
        """JSON-ready summary (the ``inversion`` block of ``results.json``)."""
        return {
            "verdict": self.verdict,
            "recovered_target": self.recovered_target,
            "target_candidates": [[name, round(prob, 6)] for name, prob in self.target_candidates],
            "backdoor_score": self.backdoor_score,
            "concentration": self.concentration,
            "hijacked_fraction": self.hijacked_fraction,
            "anomaly_index": self.anomaly_index,
            "verdict_statistic": self.verdict_statistic,
            "verdict_threshold": self.verdict_threshold,
            "untargeted_winner": self.untargeted_winner,
            "candidate_asr": self.candidate_asr,
            "search_trigger_asr": self.search_trigger_asr,
            "lift_handicap": self.lift_handicap,
            "confirmed_lifts": self.confirmed_lifts,
            "named_by": self.named_by,
            "mask_budget": self.mask_budget,
            "trigger": self.trigger.describe(),
            "history": self.history,
        }


def total_variation(pattern: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels of a ``(C, H, W)`` tensor."""
    return (pattern[:, 1:, :] - pattern[:, :-1, :]).abs().mean() + (
        pattern[:, :, 1:] - pattern[:, :, :-1]
    ).abs().mean()


def trigger_prior(trigger: Trigger, lambda_mask: float, lambda_tv: float) -> torch.Tensor:
    """``log p(phi)`` up to a constant (<= 0): sparsity of the mask and smoothness of the pattern."""
    if isinstance(trigger, PatchBlendTrigger):
        return -lambda_mask * trigger.patch_mask.mean() - lambda_tv * total_variation(trigger.patch_pattern)
    return torch.zeros((), device=next(trigger.parameters()).device)


def cycle(batches: Iterable) -> Iterator:
    """Iterate over ``batches`` forever (re-iterating a loader starts a new epoch)."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise ValueError("the inversion data is empty")


FOCUS_POINTS: tuple[tuple[float, float], ...] = ((0.5, 0.5), (0.15, 0.15), (0.85, 0.85), (0.15, 0.85), (0.85, 0.15))
"""Relative ``(row, column)`` centres of the focused starts of the population: the centre, then opposite corners."""


def free_trigger(image_size, budget: float, seed: int, focus: tuple[float, float] | None) -> PatchBlendTrigger:
    """A free patch/blend hypothesis under the mask ``budget`` (see :meth:`PatchBlendTrigger.free`)."""
    return PatchBlendTrigger.free(image_size, mask_budget=budget, seed=seed, focus=focus)


def anomaly_index(values: Sequence[float], position: int | None = None) -> tuple[float, int]:
    """``((value - median) / (1.4826 * MAD), position)``: the Neural-Cleanse anomaly index of ``values[position]``
    (default: of the largest value).

    For an odd number of values this is the robust z-score ``(value - median) / median_abs_deviation(values,
    scale="normal")`` of scipy (whose constant is 1.482602...). For an even number both medians (of the values and of
    their deviations) are the *lower* of the two middle values (``torch.median``), not their mean: the verdict's
    threshold and every anomaly index in the docs were measured that way (on ten digit classes scipy's convention
    gives, e.g., 5.37 where this gives 6.38).
    """
    tensor = torch.tensor(list(values), dtype=torch.float64)
    median = tensor.median()
    mad = (tensor - median).abs().median()
    best = int(tensor.argmax()) if position is None else position
    spread = 1.4826 * mad
    if spread < 1e-6:  # most candidates identical: fall back to a small floor so the index stays finite
        spread = torch.tensor(max(float(spread), 0.01))
    return float((tensor[best] - median) / spread), best


def verdict_score(
    rates: Sequence[float],
    statistic: str,
    winner: int | None,
    search_rate: float | None = None,
    handicap: float | None = None,
) -> tuple[float, int]:
    """``(score, position)`` of the verdict ``statistic`` (one of :data:`VERDICT_STATISTICS`) over the candidates'
    targeted ASRs ``rates``; ``position`` is the scored candidate's: the untargeted ``winner`` for the ``"winner"``
    statistics, the largest rate for the ``"max-candidate"`` ones (and for all of them without a winner).

    * ``"winner"``, ``"max-candidate"``: the anomaly index (:func:`anomaly_index`) of the scored rate;
    * ``"-logit"``: the same on the log-odds ``log(p / (1 - p))`` of the rates, ``p`` clipped to
      ``[LOGIT_EPSILON, 1 - LOGIT_EPSILON]``;
    * ``"-lift"``: the scored candidate's log-odds minus the median candidate's (the lower middle one for an even
      count, as :func:`anomaly_index`), not divided by a spread: how much easier a small trigger reaches this class
      than a typical one. An anomaly index divides by the candidates' spread, so on a model where every class is
      hard to reach (a small spread) a modest lead scores high; the lift does not.
    * ``"winner-or-max-lift"``: the larger of the winner's lift and the largest lift minus ``ln(K)`` for ``K``
      candidates, with the position of the term that is larger. The untargeted search can name a wrong winner while
      the targeted inversion toward the true target reaches a high ASR; the largest of ``K`` lifts is the largest of
      ``K`` draws, hence the ``ln(K)`` (log-odds) handicap against the winner, a single pre-named candidate.
    * ``"winner-or-max-or-search-lift"``: the larger of ``"winner-or-max-lift"`` and the lift of ``search_rate``
      (the untargeted search's own trigger's ASR toward the winner, on the same images) minus ``ln(K)``, scored at
      the winner's position. The verdict's short targeted inversion can reach far less than the search's trigger
      (a 3-pixel BadNet patch: 37% against 98%); the search picked its target after the fact among all ``K``
      candidates, hence the same handicap as the largest lift. Without ``search_rate`` it is
      ``"winner-or-max-lift"``.

    ``handicap`` replaces ``ln(K)`` in the two combined statistics (``None``: ``ln(K)``; a smaller one trusts the
    largest lift and the search's trigger more).
    """
    if statistic not in VERDICT_STATISTICS:
        raise ValueError(f"verdict statistic must be one of {VERDICT_STATISTICS}, got {statistic!r}")
    if statistic == "winner-or-max-or-search-lift":
        best = verdict_score(rates, "winner-or-max-lift", winner, handicap=handicap)
        if search_rate is None or winner is None:
            return best
        handicapped = (search_lift(rates, search_rate) - _handicap(rates, handicap), winner)
        return best if best[0] >= handicapped[0] else handicapped
    if statistic == "winner-or-max-lift":
        by_winner = verdict_score(rates, "winner-lift", winner)
        largest, position = verdict_score(rates, "max-candidate-lift", None)
        handicapped = (largest - _handicap(rates, handicap), position)
        return by_winner if by_winner[0] >= handicapped[0] else handicapped
    values = [float(rate) for rate in rates]
    if statistic.endswith(("-logit", "-lift")):
        values = [_log_odds(rate) for rate in values]
    scored = winner if statistic.startswith("winner") else None
    if statistic.endswith("-lift"):
        position = max(range(len(values)), key=values.__getitem__) if scored is None else scored
        return values[position] - _lower_median(values), position
    return anomaly_index(values, scored)


def search_lift(rates: Sequence[float], search_rate: float) -> float:
    """The lift of the untargeted search's own trigger: the log-odds of its ASR ``search_rate`` toward the winner
    minus the median of the candidates' targeted ``rates`` (as :func:`verdict_score`'s ``"-lift"``), unhandicapped."""
    return _log_odds(search_rate) - _median_log_odds(rates)


def _handicap(rates: Sequence[float], handicap: float | None) -> float:
    """What a lift chosen after the fact among ``len(rates)`` candidates pays: ``handicap``, else ``ln(K)``."""
    return math.log(len(rates)) if handicap is None else float(handicap)


def _lower_median(values: Sequence[float]) -> float:
    """The median, the lower middle one for an even count (as :func:`anomaly_index`)."""
    return float(torch.tensor(values, dtype=torch.float64).median())


def _median_log_odds(rates: Sequence[float]) -> float:
    """The median of the rates' log-odds: the baseline every lift is measured from."""
    return _lower_median([_log_odds(rate) for rate in rates])


def take_confirmed(score: float, scored, confirmed: dict) -> tuple[float, Any]:
    """``(score, scored)`` after the confirmed lifts ``confirmed`` (candidate -> lift): the largest of ``score`` and
    the lifts, with the candidate it belongs to (``scored`` where no lift is larger); the verdict's rule for
    ``confirm_top``."""
    for candidate, lift in confirmed.items():
        if lift > score:
            score, scored = lift, candidate
    return score, scored


def _log_odds(rate: float) -> float:
    """``log(p / (1 - p))`` of an ASR, clipped to ``[LOGIT_EPSILON, 1 - LOGIT_EPSILON]`` first."""
    clipped = min(max(float(rate), LOGIT_EPSILON), 1 - LOGIT_EPSILON)
    return math.log(clipped / (1 - clipped))


HOLDOUT_MODULUS = 1_000_003  # a prime; holdout_mask hashes an image to [0, HOLDOUT_MODULUS)


def holdout_mask(images: torch.Tensor, fraction: float) -> torch.Tensor:
    """``(B,)`` booleans: which of ``images`` ``(B, C, H, W)`` in [0, 1] are held out, about ``fraction`` of them.

    The choice hashes each image's 8-bit pixel values (a fixed seeded linear hash modulo a prime), so an image is
    held out or not whatever its batch, its position, the data order or the process that reads it."""
    if fraction <= 0:
        return torch.zeros(images.shape[0], dtype=torch.bool, device=images.device)
    pixels = (images.detach().clamp(0, 1) * 255).round().to(torch.int64).flatten(1)
    generator = torch.Generator().manual_seed(HOLDOUT_MODULUS)
    weights = torch.randint(1, 2**20, (pixels.shape[1],), generator=generator).to(pixels.device)
    hashed = (pixels * weights).sum(1) % HOLDOUT_MODULUS
    return hashed < int(fraction * HOLDOUT_MODULUS)


def _select(captions: Sequence[str] | torch.Tensor, keep: torch.Tensor) -> Sequence[str] | torch.Tensor:
    """The captions (strings or token ids) of the kept images."""
    if isinstance(captions, torch.Tensor):
        return captions[keep.to(captions.device)]
    return [caption for caption, kept in zip(captions, keep.tolist()) if kept]


def micro_batch_layout(triggers: int, images: int, micro_batch: int) -> tuple[int, int]:
    """``(triggers per pass, images per pass)`` with at most ``micro_batch`` triggered images per pass and the fewest
    passes over ``triggers x images`` (ties: the most triggers per pass)."""
    best = None
    for group in range(1, min(triggers, micro_batch) + 1):
        chunk = min(images, micro_batch // group)
        passes = math.ceil(triggers / group) * math.ceil(images / chunk)
        if best is None or passes <= best[0]:
            best = (passes, group, chunk)
    return best[1], best[2]


class BlindInversion:
    """EM blind inversion of a CLIP backdoor trigger (untargeted, or targeted with ``target_caption``).

    Args:
        model: the (possibly backdoored) :class:`PixelCLIP`; it is only read, never updated.
        config: :class:`InversionConfig`.
        candidate_names: names of the target candidates (class names, captions) used to *name* the recovered
            target and for the verdict; optional for the E-step itself.
        candidate_embeddings: ``(C, d)`` unit embeddings of the candidates (e.g. zero-shot class embeddings).
        target_caption: targeted mode: ``u = h(target_caption)`` is fixed instead of estimated.
        reduce_fn: ``reduce_fn(tensor, op)`` with ``op`` in ``{"sum", "mean"}``: the cross-process reduction.
        world_size: the number of processes ``reduce_fn`` reduces over (1: one process). The config's image
            counts are totals over them (:func:`process_share`).
        progress: show progress bars.
    """

    # The verdict statistic when the config names none: chosen on the development half of the CLIP zoo by the zoo's
    # fixed rule (benchmarks/README.md, "Model zoo"); an image classifier keeps its own (ClassifierInversion).
    default_verdict_statistic = "winner-or-max-or-search-lift"
    # The threshold of the default statistic when the config gives none; ``None``: the statistic's own
    # (DEFAULT_VERDICT_THRESHOLDS). An image classifier's scores live on another scale and have their own.
    default_verdict_threshold: float | None = None

    @property
    def verdict_statistic(self) -> str:
        """The statistic the verdict scores: the config's, or this inverter's default."""
        return self.config.verdict_statistic or self.default_verdict_statistic

    @property
    def verdict_threshold(self) -> float:
        """The score above which the verdict declares a backdoor: the config's ``anomaly_threshold`` when given;
        else this inverter's ``default_verdict_threshold`` when it scores its default statistic; else the
        statistic's default (:meth:`InversionConfig.threshold_for`)."""
        own = self.default_verdict_threshold
        if self.config.anomaly_threshold is None and own is not None:
            if self.verdict_statistic == self.default_verdict_statistic:
                return float(own)
        return self.config.threshold_for(self.verdict_statistic)

    def __init__(
        self,
        model: PixelCLIP,
        config: InversionConfig | None = None,
        candidate_names: Sequence[str] | None = None,
        candidate_embeddings: torch.Tensor | None = None,
        target_caption: str | None = None,
        reduce_fn: ReduceFn = no_reduce,
        progress: bool = False,
        world_size: int = 1,
    ) -> None:
        self.model = unwrap(model, PixelModel)
        self.config = config or InversionConfig()
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        self.world_size = world_size
        if (candidate_names is None) != (candidate_embeddings is None):
            raise ValueError("give candidate_names and candidate_embeddings together")
        if candidate_embeddings is not None and len(candidate_names) != candidate_embeddings.shape[0]:
            raise ValueError("candidate_names and candidate_embeddings must have the same length")
        self.candidate_names = list(candidate_names) if candidate_names is not None else None
        self.candidate_embeddings = candidate_embeddings
        self.reduce_fn = reduce_fn
        self.progress = progress
        self.device = self.model.device
        image_size = self.model.image_size
        self.budget_level = 0
        budget = self.config.mask_budgets[0]
        self.population: list[Trigger] = [
            free_trigger(image_size, budget, self.config.seed * 101 + j, self._focus(j)).to(self.device)
            for j in range(self.config.patch_hypotheses)
        ]
        if self.config.additive_eps > 0:
            self.population.append(
                AdditiveTrigger.random(image_size, eps=self.config.additive_eps, seed=self.config.seed * 101 + 97).to(
                    self.device
                )
            )
        self.optimizer = torch.optim.Adam(
            [p for trigger in self.population for p in trigger.parameters()], lr=self.config.lr
        )
        self.target_direction = None
        if target_caption is not None:
            with torch.no_grad():
                self.target_direction = self.model.encode_text([target_caption]).float()[0]
        self.directions: torch.Tensor | None = None
        self.images_per_step: int | None = None  # M-step images per hypothesis and process (None: the whole batch)
        self.verdict_triggers: dict[int, Trigger] = {}  # candidate index -> its targeted trigger (last verdict)
        self.search_asr: float | None = None  # the search trigger's ASR toward the winner (last verdict)
        self.confirmed_lifts: dict[int, float] = {}  # candidate index -> confirmed lift (last verdict, confirm_top)
        self.last_stats: EStepStats | None = None
        self.history: list[dict] = []

    def _focus(self, j: int) -> tuple[float, float] | None:
        """Where hypothesis ``j`` starts (:data:`FOCUS_POINTS`), or None for a diffuse start."""
        focused = self.config.hypothesis_init == "focused" and j < len(FOCUS_POINTS)
        return FOCUS_POINTS[j] if focused else None

    # ---- shared pieces ------------------------------------------------------------------------------
    def _text_features(self, captions: Sequence[str] | torch.Tensor) -> torch.Tensor:
        """Own-caption embeddings ``h(c)`` from caption strings or token ids ``(B, L)``."""
        with torch.no_grad():
            texts = captions if isinstance(captions, torch.Tensor) else list(captions)
            return self.model.encode_text(texts).float()

    def _triggered_features(self, trigger: Trigger, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(trigger.apply(images)).float()

    # ---- the pieces a degenerate case (clipclean.classifiers.ClassifierInversion) replaces ---------------
    def _direction_evidence(self, features: torch.Tensor, own: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """One batch's contribution ``(E,)`` to the estimate of ``u``: ``sum_i w_i g(T x_i)`` (summed over batches
        and processes, then turned into directions by :meth:`_directions_from_evidence`)."""
        return (weights[:, None] * features).sum(0)

    def _directions_from_evidence(self, evidence: torch.Tensor) -> torch.Tensor:
        """``(P, E)`` summed evidence -> ``(P, d)`` target directions: the vMF mean ``normalise(sum_i w_i g)``."""
        return F.normalize(evidence, dim=-1)

    def _log_likelihood(self, features: torch.Tensor, own: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
        """``(P,)`` mean log-likelihood of hijacking for features ``(P, B, d)``, own side ``(B, d)``, ``u (P, d)``."""
        margin = torch.einsum("pbd,pd->pb", features, directions) - (features * own[None]).sum(-1)
        return F.logsigmoid(self.config.kappa * margin).mean(dim=1)

    def _resultant_features(self, features: torch.Tensor) -> torch.Tensor:
        """What the concentration (mean resultant length) is measured on: the unit embeddings themselves."""
        return features

    @property
    def mask_budget(self) -> float:
        return self.config.mask_budgets[self.budget_level]

    def _set_budget(self, level: int) -> None:
        self.budget_level = level
        self.set_mask_budget(self.mask_budget)

    # ---- E-step -------------------------------------------------------------------------------------
    @torch.no_grad()
    def e_step(self, batches: Iterable[tuple[torch.Tensor, Sequence[str]]]) -> EStepStats:
        """Estimate the target direction of every hypothesis from ``(images, captions)`` batches."""
        previous = self.directions
        population = len(self.population)
        embed_dim = self.model.embed_dim
        evidence: list[torch.Tensor] = [torch.zeros((), device=self.device) for _ in range(population)]
        weight_sums = torch.zeros(population, device=self.device)
        resultant = torch.zeros(population, embed_dim, device=self.device)
        margin_parts: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(population)]
        count = torch.zeros((), device=self.device)
        for images, captions in batches:
            images = images.to(self.device)
            text = self._text_features(captions)
            count += images.shape[0]
            for j, trigger in enumerate(self.population):
                features = self._triggered_features(trigger, images)
                if self.target_direction is not None:
                    direction = self.target_direction
                elif previous is not None:
                    direction = previous[j]
                else:
                    direction = None
                if direction is None:
                    weights = torch.ones(images.shape[0], device=self.device)
                else:
                    own = (features * text).sum(-1)
                    weights = torch.sigmoid(self.config.kappa * (features @ direction - own))
                evidence[j] = evidence[j] + self._direction_evidence(features, text, weights)
                weight_sums[j] += weights.sum()
                resultant[j] += self._resultant_features(features).sum(0)
                margin_parts[j].append((features, text))
        sums, weight_sums = self.reduce_fn(torch.stack(evidence), "sum"), self.reduce_fn(weight_sums, "sum")
        resultant, count = self.reduce_fn(resultant, "sum"), self.reduce_fn(count, "sum")
        if float(count) == 0:
            raise ValueError("the E-step saw no images")
        if self.target_direction is not None:
            directions = self.target_direction[None].expand(population, -1).clone()
        else:
            directions = self._directions_from_evidence(sums)
        scores = torch.zeros(population, device=self.device)
        hijacked = torch.zeros(population, device=self.device)
        for j in range(population):
            for features, text in margin_parts[j]:
                margin = features @ directions[j] - (features * text).sum(-1)
                scores[j] += margin.sum()
                hijacked[j] += (margin > 0).float().sum()
        scores, hijacked = self.reduce_fn(scores, "sum") / count, self.reduce_fn(hijacked, "sum") / count
        stats = EStepStats(
            directions=directions,
            backdoor_scores=scores,
            concentrations=resultant.norm(dim=-1) / count,
            hijacked_fractions=hijacked,
            responsibilities=weight_sums / count,
            n_images=int(count),
        )
        self.directions = directions
        self.last_stats = stats
        return stats

    # ---- M-step -------------------------------------------------------------------------------------
    def objective(self, trigger: Trigger, images: torch.Tensor, text: torch.Tensor, direction: torch.Tensor):
        """``Q(phi)`` on one batch: mean log-likelihood of hijacking plus the log-prior (to maximise)."""
        return self.population_objective([trigger], images, text, direction[None])[0]

    def population_objective(
        self,
        triggers: Sequence[Trigger],
        images: torch.Tensor,
        text: torch.Tensor,
        directions: torch.Tensor | None,
    ) -> torch.Tensor:
        """``Q`` of every trigger in one forward pass: ``(P,)`` values for ``directions (P, d)``."""
        features = self._population_features(triggers, images)
        if directions is None:  # online E-step: the directions this batch's triggered images alone give
            directions = self._directions_from_evidence(self._online_evidence(features.detach(), text))
        return self._log_likelihood(features, text, directions) + self._population_prior(triggers)

    def _population_features(self, triggers: Sequence[Trigger], images: torch.Tensor) -> torch.Tensor:
        """``(P, B, E)`` features of every trigger applied to ``images (B, 3, H, W)``, in one forward pass."""
        stacked = torch.cat([trigger.apply(images) for trigger in triggers])
        return self.model.encode_image(stacked).float().view(len(triggers), images.shape[0], -1)

    def _online_evidence(self, features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """``(P, ...)`` direction evidence of features ``(P, B, E)`` with unit weights (additive over images)."""
        ones = torch.ones(features.shape[1], device=features.device)
        return torch.stack([self._direction_evidence(f, text, ones) for f in features])

    def _population_prior(self, triggers: Sequence[Trigger]) -> torch.Tensor:
        return torch.stack([trigger_prior(t, self.config.lambda_mask, self.config.lambda_tv) for t in triggers])

    def _objective_backward(
        self, triggers: Sequence[Trigger], images: torch.Tensor, text: torch.Tensor, directions: torch.Tensor | None
    ) -> torch.Tensor:
        """``Q`` ``(P,)`` of the batch (detached), with the gradient of ``-sum(Q)`` accumulated into the triggers.

        With ``config.micro_batch``, the ``P x B`` triggered images go through the model in passes of at most
        ``micro_batch`` images (:func:`micro_batch_layout`: groups of triggers times chunks of the batch; the
        verdict's 20 candidates with ``micro_batch`` 8 take 8 candidates x 1 image). Each pass's mean
        log-likelihood is weighted by its share of the batch and back-propagated on its own, so ``Q`` and its
        gradient equal the whole batch's (the terms of different triggers are independent; online directions are
        first summed over every pass without gradient) while the autograd graph holds one pass at a time.
        """
        size, population = images.shape[0], len(triggers)
        micro_batch = self.config.micro_batch
        if micro_batch is None or micro_batch >= size * population:
            objective = self.population_objective(triggers, images, text, directions)
            (-objective.sum()).backward()
            return objective.detach()
        group, chunk = micro_batch_layout(population, size, micro_batch)
        groups = [slice(start, min(start + group, population)) for start in range(0, population, group)]
        parts = [slice(start, min(start + chunk, size)) for start in range(0, size, chunk)]
        if directions is None:
            with torch.no_grad():
                evidence = torch.cat(
                    [
                        sum(
                            self._online_evidence(self._population_features(triggers[g], images[part]), text[part])
                            for part in parts
                        )
                        for g in groups
                    ]
                )
            directions = self._directions_from_evidence(evidence)
        total = self._population_prior(triggers)
        (-total.sum()).backward()
        total = total.detach()
        for g in groups:
            for part in parts:
                features = self._population_features(triggers[g], images[part])
                share = (part.stop - part.start) / size
                weighted = self._log_likelihood(features, text[part], directions[g]) * share
                (-weighted.sum()).backward()
                total[g] += weighted.detach()
        return total

    def _ascend(
        self,
        triggers: Sequence[Trigger],
        optimizer: torch.optim.Optimizer,
        directions: torch.Tensor,
        batches: Iterator[tuple[torch.Tensor, Sequence[str]]],
        steps: int,
        description: str,
        max_images: int | None = None,
        holdout: float = 0.0,
    ) -> torch.Tensor:
        """``steps`` projected Adam ascent steps of ``triggers`` on ``Q`` with the model frozen (on the images that
        :func:`holdout_mask` does not hold out at ``holdout``)."""
        requires_grad = [p.requires_grad for p in self.model.parameters()]
        self.model.requires_grad_(False)
        values = torch.zeros(len(triggers))
        try:
            for _ in tqdm(range(steps), desc=description, disable=not self.progress, leave=False):
                images, captions = next(batches)
                while holdout > 0:  # the held-out images only (the next batch if it held out every image)
                    keep = ~holdout_mask(images, holdout)
                    if keep.any():
                        images, captions = images[keep], _select(captions, keep)
                        break
                    images, captions = next(batches)
                images, captions = images[:max_images].to(self.device), captions[:max_images]
                text = self._text_features(captions)
                optimizer.zero_grad(set_to_none=True)
                objective = self._objective_backward(triggers, images, text, directions)
                for trigger in triggers:
                    for parameter in trigger.parameters():
                        if parameter.grad is not None:
                            parameter.grad = self.reduce_fn(parameter.grad, "mean")
                optimizer.step()
                for trigger in triggers:
                    trigger.project_()
                values = self.reduce_fn(objective, "mean").cpu()
        finally:
            for parameter, flag in zip(self.model.parameters(), requires_grad):
                parameter.requires_grad_(flag)
        return values

    def m_step(self, batches: Iterator[tuple[torch.Tensor, Sequence[str]]], steps: int | None = None) -> dict:
        """``steps`` projected gradient-ascent steps of every hypothesis on ``Q`` (model frozen)."""
        if self.directions is None:
            raise RuntimeError("run e_step before m_step")
        directions = None if self.config.online_direction and self.target_direction is None else self.directions
        steps = steps or self.config.steps_per_round
        values = self._ascend(
            self.population, self.optimizer, directions, batches, steps, "M-step", max_images=self.images_per_step
        )
        return {"objective": values.tolist()}

    # ---- orchestration ------------------------------------------------------------------------------
    def best_hypothesis(self) -> int:
        """Index of the hypothesis with the highest backdoor score in the last E-step."""
        if self.last_stats is None:
            raise RuntimeError("run e_step first")
        return int(self.last_stats.backdoor_scores.argmax())

    def commit_to_target(self, direction: torch.Tensor) -> None:
        """Continue in targeted mode toward ``direction`` (e.g. the recovered target): every hypothesis becomes a
        trigger toward it (several initialisations: the trigger distribution, condition C3)."""
        self.target_direction = direction.to(self.device).float()
        self.directions = self.target_direction[None].expand(len(self.population), -1).clone()

    def set_mask_budget(self, budget: float) -> None:
        """Put every patch/blend hypothesis under the hard mask budget ``budget`` (a fraction of the image)."""
        for trigger in self.population:
            if isinstance(trigger, PatchBlendTrigger):
                trigger.mask_budget = budget

    def active_hypotheses(self) -> list[int]:
        """Hypotheses worth unlearning, best first: those with a positive backdoor score (at least the best)."""
        stats = self.last_stats
        order = stats.backdoor_scores.argsort(descending=True).tolist()
        return [j for j in order if float(stats.backdoor_scores[j]) > 0] or order[:1]

    def grow_budget_if_no_collapse(self) -> bool:
        """Raise the mask budget one level if no hypothesis collapses the embeddings; True if it grew."""
        stats = self.last_stats
        found = bool((stats.hijacked_fractions >= self.config.collapse_fraction).any())
        if not found and self.budget_level + 1 < len(self.config.mask_budgets):
            self._set_budget(self.budget_level + 1)
            return True
        return False

    def name_candidates(self, direction: torch.Tensor, top: int = 5) -> list[tuple[str, float]]:
        """Posterior ``q(k) = softmax(s * u @ H.T)`` over the candidates, top ``top`` entries."""
        if self.candidate_embeddings is None:
            return []
        logits = self.model.logit_scale.detach().float() * (self.candidate_embeddings.to(direction) @ direction)
        probabilities = logits.softmax(-1)
        order = probabilities.argsort(descending=True)[:top]
        return [(self.candidate_names[int(k)], float(probabilities[k])) for k in order]

    def run_em(self, batches: Iterable[tuple[torch.Tensor, Sequence[str]]], e_step_batches: int = 4) -> EStepStats:
        """``config.rounds`` EM rounds over ``batches`` (cycled); returns the last E-step's statistics."""
        stream = cycle(batches)
        stats = self.e_step(next(stream) for _ in range(e_step_batches))
        for round_index in range(self.config.rounds):
            self.m_step(stream)
            stats = self.e_step(next(stream) for _ in range(e_step_batches))
            best = self.best_hypothesis()
            entry = {
                "round": round_index,
                "mask_budget": self.mask_budget,
                "best_hypothesis": best,
                "backdoor_scores": [round(float(v), 4) for v in stats.backdoor_scores],
                "hijacked_fractions": [round(float(v), 4) for v in stats.hijacked_fractions],
            }
            if self.candidate_names is not None:
                entry["named"] = [self.name_candidates(direction, top=1)[0][0] for direction in stats.directions]
            self.history.append(entry)
            logger.info("inversion round %d: %s", round_index, entry)
            if round_index + 1 < self.config.rounds:
                self.grow_budget_if_no_collapse()
        return stats

    def verdict(
        self,
        batches: Iterable[tuple[torch.Tensor, Sequence[str]]],
        untargeted_winner: int | None,
        search_trigger: Trigger | None = None,
    ) -> tuple[float, dict[str, float], int]:
        """Targeted inversions toward the candidates at a small budget.

        Returns ``(score, ASR per candidate, scored candidate)``: the configured :func:`verdict_score` of the
        candidates' ASRs, with the untargeted winner as the scored candidate for the ``"winner"`` statistics (it is
        always among the tested candidates); without a winner, the score of the best candidate and that candidate.
        On the same images it also measures the untargeted search's own trigger (the best hypothesis) toward the
        winner: ``self.search_asr`` (``None`` without a winner), which ``"winner-or-max-or-search-lift"`` scores
        (``search_trigger`` replaces the best hypothesis, for a verdict on a search run earlier; with neither, the
        search term is left out).
        With ``confirm_top`` > 0 the lift statistics also take the confirmed lifts of the re-tested candidates
        (:meth:`confirm`; ``self.confirmed_lifts``): the score is the largest of the statistic's and theirs.
        """
        if self.candidate_embeddings is None:
            raise ValueError("the verdict needs candidate names and embeddings")
        total = len(self.candidate_names)
        generator = torch.Generator().manual_seed(self.config.seed + 7)
        if total <= self.config.max_verdict_candidates:
            indices = list(range(total))
        else:
            others = [k for k in torch.randperm(total, generator=generator).tolist() if k != untargeted_winner]
            indices = ([untargeted_winner] if untargeted_winner is not None else []) + others
            indices = sorted(indices[: self.config.max_verdict_candidates])
        stream = cycle(batches)
        triggers = self._targeted_triggers(indices, stream)
        self.verdict_triggers = dict(zip(indices, triggers))
        # the last slot: the search's own trigger toward the winner (measured, never used without a winner)
        searched = search_trigger
        if searched is None and self.last_stats is not None:
            searched = self.population[self.best_hypothesis()]
        toward = untargeted_winner if searched is not None else None
        measured = [*zip(triggers, indices), (searched, toward)]
        rates = self._targeted_asr(measured, stream)
        rates, search_rate = rates[:-1], float(rates[-1])
        self.search_asr = search_rate if toward is not None else None
        position = indices.index(untargeted_winner) if untargeted_winner in indices else None
        index, position = verdict_score(
            rates.tolist(), self.verdict_statistic, position, self.search_asr, self.config.lift_handicap
        )
        scored = indices[position]
        self.confirmed_lifts = {}
        if self.verdict_statistic.endswith("-lift"):  # a lift, comparable with the other lifts
            self.confirmed_lifts = self.confirm(indices, rates.tolist(), untargeted_winner, stream)
        index, scored = take_confirmed(index, scored, self.confirmed_lifts)
        asr = {self.candidate_names[k]: float(rate) for k, rate in zip(indices, rates)}
        return index, asr, scored

    def _targeted_asr(self, measured: Sequence[tuple[Trigger, int | None]], stream: Iterator) -> torch.Tensor:
        """The ASR of each ``(trigger, candidate)`` toward its candidate on the next 4 batches of ``stream`` (with
        ``verdict_holdout``, on the held-out images of the next ``ceil(4 / verdict_holdout)``), over the images not
        already predicted as that candidate (all processes' images; 0 for a ``None`` candidate)."""
        embeddings = self.candidate_embeddings.to(self.device).float()
        hits = torch.zeros(len(measured), device=self.device)
        totals = torch.zeros(len(measured), device=self.device)
        holdout = self.config.verdict_holdout
        with torch.no_grad():
            for _ in range(math.ceil(4 / holdout) if holdout > 0 else 4):
                images, _captions = next(stream)
                if holdout > 0:
                    images = images[holdout_mask(images, holdout)]
                    if images.shape[0] == 0:
                        continue
                images = images.to(self.device)
                clean_prediction = (self.model.encode_image(images).float() @ embeddings.T).argmax(-1)
                for position, (trigger, k) in enumerate(measured):
                    if k is None:
                        continue
                    prediction = (self._triggered_features(trigger, images) @ embeddings.T).argmax(-1)
                    keep = clean_prediction != k
                    hits[position] += (prediction[keep] == k).float().sum()
                    totals[position] += keep.float().sum()
        return self.reduce_fn(hits, "sum") / self.reduce_fn(totals, "sum").clamp_min(1)

    def confirm(
        self, indices: Sequence[int], rates: Sequence[float], winner: int | None, batches: Iterable
    ) -> dict[int, float]:
        """Confirmed lifts (candidate index -> lift) of the ``confirm_top`` candidates other than ``winner`` with
        the largest first targeted ASRs ``rates`` (of the candidates ``indices``).

        Each chosen candidate gets a fresh targeted inversion (a new initialisation, ``verdict_steps`` batches of
        ``batches``, which the verdict passes on where it stopped) and its ASR on the 4 batches after those; the
        confirmed lift is its log-odds minus the first measurement's median candidate's. The candidate was chosen
        on the first measurement, and the confirmation redraws the trigger's initialisation, its batches and the
        images it is measured on (they repeat only where the defender set is smaller than what the verdict
        reads), so the confirmed lift is scored as the winner's is, without the ``ln(K)`` handicap. The confirmed
        trigger replaces the candidate's in ``self.verdict_triggers``."""
        stream = batches if isinstance(batches, Iterator) else cycle(batches)
        order = sorted(range(len(indices)), key=lambda position: -rates[position])
        chosen = [indices[position] for position in order if indices[position] != winner][: self.config.confirm_top]
        if not chosen:
            return {}
        triggers = self._targeted_triggers(chosen, stream, seed_offset=CONFIRM_SEED_OFFSET)
        confirmed = self._targeted_asr(list(zip(triggers, chosen)), stream).tolist()
        median = _median_log_odds(rates)
        self.verdict_triggers.update(zip(chosen, triggers))
        return {k: _log_odds(rate) - median for k, rate in zip(chosen, confirmed)}

    def _targeted_triggers(self, indices: Sequence[int], stream: Iterator, seed_offset: int = 0) -> list[Trigger]:
        """One trigger per candidate in ``indices``, each optimised toward its candidate at the verdict budget
        (initialisations seeded by the candidate, the config's seed and ``seed_offset``)."""
        budget = self.config.verdict_budget_for(self.mask_budget)
        triggers = [
            free_trigger(self.model.image_size, budget, self.config.seed * 31 + k + seed_offset, self._focus(0)).to(
                self.device
            )
            for k in indices
        ]
        optimizer = torch.optim.Adam([p for trigger in triggers for p in trigger.parameters()], lr=self.config.lr)
        directions = self.candidate_embeddings.to(self.device).float()[list(indices)]
        steps, batch = self.config.verdict_steps, process_share(self.config.verdict_batch_size, self.world_size)
        holdout = self.config.verdict_holdout
        self._ascend(triggers, optimizer, directions, stream, steps, "verdict", max_images=batch, holdout=holdout)
        return triggers

    def result(self, verdict_batches: Iterable | None = None) -> InversionResult:
        """Package the best hypothesis; run the verdict when candidates and data are available."""
        stats = self.last_stats
        best = self.best_hypothesis()
        direction = stats.directions[best]
        trigger = self.population[best]
        candidates = self.name_candidates(direction) if self.candidate_names is not None else []
        result = InversionResult(
            trigger=trigger,
            direction=direction.detach().cpu(),
            backdoor_score=float(stats.backdoor_scores[best]),
            concentration=float(stats.concentrations[best]),
            hijacked_fraction=float(stats.hijacked_fractions[best]),
            mask_budget=trigger.mask_budget if isinstance(trigger, PatchBlendTrigger) else None,
            target_candidates=candidates,
            recovered_target=candidates[0][0] if candidates else None,
            history=list(self.history),
            untargeted_winner=candidates[0][0] if candidates else None,
        )
        if verdict_batches is not None and self.candidate_names is not None:
            winner = self.candidate_names.index(result.recovered_target)
            index, asr, named = self.verdict(verdict_batches, winner)
            result.anomaly_index = index
            result.candidate_asr = asr
            result.search_trigger_asr = self.search_asr
            result.verdict_statistic = self.verdict_statistic
            result.verdict_threshold = self.verdict_threshold
            result.lift_handicap = self.config.lift_handicap
            result.confirmed_lifts = {self.candidate_names[k]: lift for k, lift in self.confirmed_lifts.items()}
            backdoored = index > result.verdict_threshold
            result.verdict = "backdoored" if backdoored else "no backdoor found"
            if backdoored and named != winner:
                self._adopt_candidate(result, named)
        return result

    def _adopt_candidate(self, result: InversionResult, candidate: int) -> None:
        """The per-candidate test named ``candidate`` where the untargeted search named another class: the result
        takes that candidate's name, embedding and targeted trigger."""
        trigger = self.verdict_triggers[candidate]
        logger.info(
            "the verdict names %r (targeted ASR %.3f), not the untargeted winner %r",
            self.candidate_names[candidate],
            result.candidate_asr[self.candidate_names[candidate]],
            result.recovered_target,
        )
        result.recovered_target = self.candidate_names[candidate]
        result.direction = F.normalize(self.candidate_embeddings[candidate].float(), dim=-1).detach().cpu()
        result.trigger = trigger
        result.mask_budget = trigger.mask_budget if isinstance(trigger, PatchBlendTrigger) else None
        ranked = sorted(result.candidate_asr.items(), key=lambda item: -item[1])
        result.target_candidates = ranked[: len(result.target_candidates) or 5]
        result.named_by = "verdict"

    def targeted_rates(self, images: torch.Tensor, captions: Sequence[str], candidates: Sequence[str]) -> dict:
        """The verdict's per-candidate test on its own, without the untargeted search: a fresh targeted inversion
        toward each named candidate (``verdict_steps`` steps at the verdict budget of the current search budget, the
        first of ``mask_budgets`` on a new inverter) on in-memory ``images`` and ``captions``, and its ASR on the
        next 4 batches (:meth:`_targeted_asr`). Returns ``{candidate: ASR}``.
        """
        if self.candidate_names is None:
            raise ValueError("targeted rates need candidate names and embeddings")
        unknown = [name for name in candidates if name not in self.candidate_names]
        if unknown:
            raise ValueError(f"unknown candidates {unknown}; the candidates are {self.candidate_names}")
        indices = [self.candidate_names.index(name) for name in candidates]
        stream = cycle(list(_in_memory_batches(images, list(captions), self.config.batch_size, self.config.seed)))
        triggers = self._targeted_triggers(indices, stream)
        rates = self._targeted_asr(list(zip(triggers, indices)), stream)
        return {name: float(rate) for name, rate in zip(candidates, rates)}

    def fit(self, images: torch.Tensor, captions: Sequence[str], verdict: bool = True) -> InversionResult:
        """Single-process convenience: EM on in-memory ``images (N, 3, H, W)`` in [0, 1] and their captions."""
        if images.shape[0] != len(captions):
            raise ValueError(f"{images.shape[0]} images but {len(captions)} captions")
        batches = list(_in_memory_batches(images, list(captions), self.config.batch_size, self.config.seed))
        self.run_em(batches)
        return self.result(batches if verdict else None)


INVERTERS: Registry[type[PixelModel], type[BlindInversion]] = Registry("inverter")


def register_inverter(model_class: type[PixelModel], inverter_class: type[BlindInversion]) -> None:
    """Make :func:`build_inverter` use ``inverter_class`` for models of ``model_class`` (and its subclasses)."""
    if not issubclass(inverter_class, BlindInversion):
        raise TypeError(f"{inverter_class.__name__} is not a BlindInversion")
    INVERTERS.register(model_class, inverter_class)


register_inverter(PixelCLIP, BlindInversion)


def build_inverter(model: nn.Module, config: InversionConfig | None = None, **kwargs) -> BlindInversion:
    """The inverter for ``model``'s kind (a CLIP: :class:`BlindInversion`; an image classifier:
    :class:`clipclean.classifiers.ClassifierInversion`); ``kwargs`` as for :class:`BlindInversion`.

    Example::

        >>> inverter = build_inverter(model, InversionConfig(), candidate_names=names, candidate_embeddings=W)
    """
    return lookup_by_kind(INVERTERS, model)(unwrap(model, PixelModel), config, **kwargs)


def _in_memory_batches(images: torch.Tensor, captions: list[str], batch_size: int, seed: int):
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        yield images[chunk], [captions[int(i)] for i in chunk]
