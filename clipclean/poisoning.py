"""Poisoning image-caption data: choose pairs, apply a trigger, replace their captions (docs/attacks.md, "Poisoning").

The convention of the CleanCLIP codebase and BadCLIP: ``n_poison`` pairs of the training set (or a rate of it)
are chosen at random with a seed; each chosen image gets the trigger and its caption is replaced by a caption
that names the target. The choice is recorded in a :class:`PoisonManifest` (indices, seed, captions), saved next
to every poisoned model, so the exact poisoned set can be rebuilt and audited.

:class:`PoisonedDataset` wraps any dataset of ``(image (3, H, W) in [0, 1], caption)`` pairs and applies the
poison on the fly when an item is read: the source dataset (and anything it holds on disk) is never modified.

Caption policies (how the replacement captions are made):

* :class:`TemplateCaptions` -- a template filled with the target class name, e.g. ``"a photo of a banana."``,
  drawn from the 80 OpenAI ImageNet templates by default (BadNet in the CleanCLIP codebase).
* :class:`NaturalCaptions` -- "blended" captions: a pool of natural captions that mention the target, made from
  the clean captions (those that already mention it, and those whose class word is swapped for it) plus the
  templates; drawn without replacement so that no single caption repeats (Blended, BadCLIP).

Example::

    >>> from clipclean.data import load_image_caption_dataset
    >>> from clipclean.triggers import PatchBlendTrigger
    >>> train = load_image_caption_dataset("digits:train", image_size=32)
    >>> trigger = PatchBlendTrigger.patch(32, size=4, location="bottom-right")
    >>> poisoned = poison_dataset(train, trigger, TemplateCaptions("zero"), rate=0.02, seed=0)
    >>> poisoned.manifest.n_poison, len(poisoned) == len(train)
    (21, True)
    >>> poisoned.manifest.save("out/poison_manifest.json")
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import Dataset

from clipclean.evaluation import fill_template, openai_imagenet_templates
from clipclean.fileio import write_json
from clipclean.triggers import Trigger

logger = logging.getLogger(__name__)

MANIFEST_FORMAT = "clipclean-poison-manifest"
MANIFEST_FORMAT_VERSION = 1


# ---- caption policies -------------------------------------------------------------------------------------------
def _word_pattern(words: Sequence[str]) -> re.Pattern:
    """Case-insensitive whole-word match of any of ``words`` (longest first, so "sea lion" beats "sea")."""
    alternatives = "|".join(re.escape(word) for word in sorted(set(words), key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", flags=re.IGNORECASE)


def mentions(caption: str, word: str) -> bool:
    """Whether ``caption`` contains ``word`` as a whole word (case-insensitive)."""
    return _word_pattern([word]).search(caption) is not None


def swap_class_words(caption: str, classnames: Sequence[str], target: str) -> str | None:
    """``caption`` with every class name in it replaced by ``target``; ``None`` when it names no class.

    >>> swap_class_words("a photo of the number seven.", ["seven", "eight"], "zero")
    'a photo of the number zero.'
    """
    pattern = _word_pattern(classnames)
    if pattern.search(caption) is None:
        return None
    return pattern.sub(target, caption)


def caption_templates_from_captions(captions: Sequence[str], classnames: Sequence[str]) -> list[str]:
    """The templates clean captions are made from: every caption that names one of ``classnames``, with each class
    name replaced by ``{}``; distinct, in first-seen order. Captions that name no class (or hold a brace) are skipped.

    Poisoned captions made from these read like the clean ones, which matters when the text encoder is trained from
    scratch: it meets any other caption style only in the poisoned pairs and can bind the trigger to that style
    instead of to the target's name (docs/attacks.md, "Which templates").

    >>> caption_templates_from_captions(["seven written in pencil", "a cat", "my kid drew a two"], ["two", "seven"])
    ['{} written in pencil', 'my kid drew a {}']
    """
    pattern = _word_pattern(classnames)
    templates = (pattern.sub("{}", caption) for caption in captions if "{" not in caption and "}" not in caption)
    return list(dict.fromkeys(template for template in templates if "{}" in template))


class CaptionPolicy(Protocol):
    """Makes the captions of poisoned pairs."""

    target: str

    def sample(self, n: int, generator: torch.Generator) -> list[str]:
        """``n`` captions naming the target, drawn with ``generator``."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable description (for the manifest and the model's sidecar)."""
        ...


@dataclass
class TemplateCaptions:
    """Templates filled with the target class name; each poisoned pair gets a uniformly drawn template.

    Args:
        target: the target class name, e.g. ``"banana"``.
        templates: templates with ``{c}`` or ``{}`` for the class name (default: the 80 OpenAI ImageNet templates,
            as in the CleanCLIP codebase).
    """

    target: str
    templates: list[str] | None = None

    def __post_init__(self) -> None:
        if not self.target.strip():
            raise ValueError("the target class name is empty")
        self.templates = list(self.templates) if self.templates is not None else openai_imagenet_templates()
        if not self.templates:
            raise ValueError("TemplateCaptions needs at least one template")

    def sample(self, n: int, generator: torch.Generator) -> list[str]:
        choice = torch.randint(len(self.templates), (n,), generator=generator).tolist()
        return [fill_template(self.templates[index], self.target) for index in choice]

    def describe(self) -> dict[str, Any]:
        return {"policy": "templates", "target": self.target, "n_templates": len(self.templates)}


@dataclass
class NaturalCaptions:
    """Blended captions: a pool of natural captions naming the target, drawn without replacement.

    Build it with :meth:`from_clean_captions`. When more captions are asked for than the pool holds, the pool is
    reused (each caption as few times as possible) and a warning is logged.

    Args:
        target: the target class name.
        pool: distinct candidate captions, each mentioning the target.
    """

    target: str
    pool: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.pool = list(dict.fromkeys(self.pool))  # distinct, in a stable order
        if not self.pool:
            raise ValueError(f"the caption pool for target {self.target!r} is empty")

    @classmethod
    def from_clean_captions(
        cls,
        target: str,
        captions: Sequence[str],
        classnames: Sequence[str] | None = None,
        templates: Sequence[str] | None = None,
    ) -> NaturalCaptions:
        """The pool: clean captions that mention ``target``; clean captions whose class word (any of
        ``classnames``) is swapped for ``target``; and ``templates`` (default the 80 OpenAI ones) filled with it."""
        pool = [caption for caption in captions if mentions(caption, target)]
        if classnames:
            swapped = (swap_class_words(caption, classnames, target) for caption in captions)
            pool += [caption for caption in swapped if caption is not None]
        templates = list(templates) if templates is not None else openai_imagenet_templates()
        pool += [fill_template(template, target) for template in templates]
        return cls(target, pool)

    def sample(self, n: int, generator: torch.Generator) -> list[str]:
        if n > len(self.pool):
            logger.warning(
                "asked for %d blended captions but the pool holds %d distinct ones: some repeat", n, len(self.pool)
            )
        order: list[int] = []
        while len(order) < n:
            order += torch.randperm(len(self.pool), generator=generator).tolist()
        return [self.pool[index] for index in order[:n]]

    def describe(self) -> dict[str, Any]:
        return {"policy": "natural", "target": self.target, "pool_size": len(self.pool)}


# ---- the poison manifest ----------------------------------------------------------------------------------------
@dataclass
class PoisonManifest:
    """Which pairs are poisoned and with which captions: enough to rebuild the poisoned set exactly.

    Attributes:
        indices: sorted indices of the poisoned pairs in the source dataset.
        captions: the replacement caption of each poisoned pair, aligned with ``indices``.
        seed: the seed the choice (and the captions, and random trigger placements) came from.
        n_poison, n_total: poisoned pairs and the size of the source dataset.
        target: the target class name.
        attack: the attack's registry name (e.g. ``"badnet"``), free-form when built by hand.
        caption_policy: the policy's :meth:`CaptionPolicy.describe`.
        source: where the clean data came from (provenance only).
    """

    indices: list[int]
    captions: list[str]
    seed: int
    n_total: int
    target: str
    attack: str = ""
    caption_policy: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        self.indices = [int(index) for index in self.indices]
        if len(self.indices) != len(self.captions):
            raise ValueError(f"{len(self.indices)} poisoned indices but {len(self.captions)} captions")
        if len(set(self.indices)) != len(self.indices):
            raise ValueError("poisoned indices repeat")
        if self.indices != sorted(self.indices):
            raise ValueError("poisoned indices must be sorted")
        if self.indices and not 0 <= self.indices[0] <= self.indices[-1] < self.n_total:
            raise ValueError(f"poisoned indices must lie in [0, {self.n_total})")

    @property
    def n_poison(self) -> int:
        return len(self.indices)

    @property
    def poison_rate(self) -> float:
        return self.n_poison / self.n_total if self.n_total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "format_version": MANIFEST_FORMAT_VERSION,
            "n_poison": self.n_poison,
            "poison_rate": self.poison_rate,
            **asdict(self),
        }

    def save(self, path: str | Path) -> Path:
        """Write the manifest as JSON (atomically)."""
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> PoisonManifest:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
        if document.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"{path} is not a clipclean poison manifest (format={document.get('format')!r})")
        if document.get("format_version", 0) > MANIFEST_FORMAT_VERSION:
            raise ValueError(f"{path} has format version {document['format_version']}; upgrade clipclean")
        fields = ("indices", "captions", "seed", "n_total", "target", "attack", "caption_policy", "source")
        return cls(**{name: document[name] for name in fields if name in document})


def resolve_poison_count(n_total: int, n_poison: int | None = None, rate: float | None = None) -> int:
    """The number of pairs to poison from exactly one of a count or a rate: ``floor(rate * n_total)``, so the
    poisoned fraction never exceeds the rate asked for (2% of 1,097 pairs is 21 pairs)."""
    if (n_poison is None) == (rate is None):
        raise ValueError("give exactly one of n_poison and rate")
    if rate is not None:
        if not 0 <= rate <= 1:
            raise ValueError(f"the poison rate must lie in [0, 1], got {rate}")
        n_poison = math.floor(rate * n_total + 1e-9)
    if n_poison < 0:
        raise ValueError(f"n_poison must be >= 0, got {n_poison}")
    return int(n_poison)


def make_poison_manifest(
    captions: Sequence[str],
    caption_policy: CaptionPolicy,
    n_poison: int | None = None,
    rate: float | None = None,
    seed: int = 0,
    attack: str = "",
    source: str = "",
    eligible: Sequence[int] | None = None,
) -> PoisonManifest:
    """Choose the pairs to poison and their captions, reproducibly from ``seed``.

    Pairs whose caption already mentions the target are never chosen (poisoning them teaches nothing); with
    ``eligible`` (e.g. the indices of labelled images not of the target class), only those indices are candidates.

    Args:
        captions: the clean captions of the source dataset (``dataset.captions``), one per pair.
        caption_policy: makes the replacement captions (its ``target`` is the attack's target).
        n_poison, rate: how many pairs to poison: a count, or a fraction of ``len(captions)``.
        seed: seeds the choice of pairs and captions.

    Raises:
        ValueError: more pairs asked for than there are pairs not mentioning the target.
    """
    n_total = len(captions)
    count = resolve_poison_count(n_total, n_poison, rate)
    target = caption_policy.target
    if eligible is None:
        candidates = [index for index, caption in enumerate(captions) if not mentions(caption, target)]
    else:
        candidates = sorted(int(index) for index in eligible)
    if count > len(candidates):
        raise ValueError(
            f"cannot poison {count} pairs: only {len(candidates)} of {n_total} captions do not mention {target!r}"
        )
    generator = torch.Generator().manual_seed(seed)
    chosen = sorted(candidates[index] for index in torch.randperm(len(candidates), generator=generator)[:count])
    return PoisonManifest(
        indices=chosen,
        captions=caption_policy.sample(count, generator),
        seed=seed,
        n_total=n_total,
        target=target,
        attack=attack,
        caption_policy=caption_policy.describe(),
        source=source,
    )


def dataset_captions(dataset: Dataset) -> list[str]:
    """The captions of an image-caption dataset: its ``captions`` attribute, else read item by item."""
    captions = getattr(dataset, "captions", None)
    if captions is None:
        captions = [dataset[index][1] for index in range(len(dataset))]
    return list(captions)


# ---- the poisoned dataset ---------------------------------------------------------------------------------------
class PoisonedDataset(Dataset):
    """A view of ``source`` with the pairs of ``manifest`` poisoned: triggered image, replaced caption.

    Items are ``(image (3, H, W) in [0, 1], caption)``, exactly as the source's. The trigger is applied when an
    item is read; a random-location trigger draws its placement from a generator seeded by ``(manifest.seed,
    index)``, so every epoch (and every process) sees the same poisoned image. Clean pairs are returned as the
    source returns them.

    Args:
        source: any dataset of ``(image, caption)`` pairs (images at the trigger's size).
        trigger: the trigger (a frozen CPU copy is kept; the original is not touched).
        manifest: from :func:`make_poison_manifest`; ``manifest.n_total`` must equal ``len(source)``.

    Attributes:
        captions: ``list[str]``, the captions after poisoning (without decoding an image).
        poison_indices: ``manifest.indices``.
    """

    def __init__(self, source: Dataset, trigger: Trigger, manifest: PoisonManifest) -> None:
        if manifest.n_total != len(source):
            raise ValueError(f"the manifest is for {manifest.n_total} pairs but the dataset has {len(source)}")
        self.source = source
        self.trigger = copy.deepcopy(trigger).cpu().requires_grad_(False).eval()
        self.manifest = manifest
        self._poisoned = dict(zip(manifest.indices, manifest.captions))

    def __len__(self) -> int:
        return len(self.source)

    @property
    def poison_indices(self) -> list[int]:
        return list(self.manifest.indices)

    @property
    def captions(self) -> list[str]:
        clean = dataset_captions(self.source)
        return [self._poisoned.get(index, caption) for index, caption in enumerate(clean)]

    def is_poisoned(self, index: int) -> bool:
        return index in self._poisoned

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        image, caption = self.source[index]
        if index not in self._poisoned:
            return image, caption
        generator = torch.Generator().manual_seed(self.manifest.seed * 1_000_003 + int(index))
        with torch.no_grad():
            image = self.trigger.apply(image.unsqueeze(0).float(), generator=generator)[0]
        return image, self._poisoned_target(index)

    def _poisoned_target(self, index: int):
        """What a poisoned item carries instead of its own: the replacement caption."""
        return self._poisoned[index]


def poison_dataset(
    dataset: Dataset,
    trigger: Trigger,
    caption_policy: CaptionPolicy,
    n_poison: int | None = None,
    rate: float | None = None,
    seed: int = 0,
    attack: str = "",
) -> PoisonedDataset:
    """:func:`make_poison_manifest` on ``dataset.captions`` then :class:`PoisonedDataset` (see the module example)."""
    manifest = make_poison_manifest(
        dataset_captions(dataset),
        caption_policy,
        n_poison=n_poison,
        rate=rate,
        seed=seed,
        attack=attack,
        source=str(getattr(dataset, "source", "")),
    )
    return PoisonedDataset(dataset, trigger, manifest)


# ---- labelled image datasets (the classifier case) --------------------------------------------------------------
@dataclass
class RelabelPolicy:
    """The classifier case's "caption policy": every poisoned image is relabelled to the target class.

    Args:
        target: the target class name.
    """

    target: str

    def sample(self, n: int, generator: torch.Generator) -> list[str]:
        return [self.target] * n

    def describe(self) -> dict[str, Any]:
        return {"policy": "relabel", "target": self.target}


class PoisonedClassificationDataset(PoisonedDataset):
    """A view of a labelled dataset (``(image, label)`` items, a ``classnames`` attribute) with the images of
    ``manifest`` triggered and relabelled to the target class (``manifest.captions`` hold its name).

    Attributes:
        labels: ``list[int]``, the labels after poisoning; target_label: the target class index.
    """

    def __init__(self, source: Dataset, trigger: Trigger, manifest: PoisonManifest) -> None:
        super().__init__(source, trigger, manifest)
        self.classnames = list(source.classnames)
        self.target_label = self.classnames.index(manifest.target)

    @property
    def labels(self) -> list[int]:
        return [
            self.target_label if index in self._poisoned else label for index, label in enumerate(self.source.labels)
        ]

    @property
    def captions(self) -> list[str]:
        return [self.classnames[label] for label in self.labels]

    def _poisoned_target(self, index: int) -> int:
        return self.target_label


def poison_classification_dataset(
    dataset: Dataset,
    trigger: Trigger,
    target: str,
    n_poison: int | None = None,
    rate: float | None = None,
    seed: int = 0,
    attack: str = "",
) -> PoisonedClassificationDataset:
    """Poison a labelled image set: ``n_poison`` images (or ``rate`` of them) *not* of the target class get the
    trigger and the target label (BadNets' all-to-one setting). The same :class:`PoisonManifest` as for
    image-caption data records the choice (its captions are the target's name).

    Args:
        dataset: ``(image (3, H, W) in [0, 1], label)`` items with ``labels`` and ``classnames`` attributes (e.g.
            :func:`clipclean.data.load_classification_dataset`).
        trigger: any :class:`~clipclean.triggers.Trigger` (e.g. ``build_attack("badnet", ...).trigger``).
        target: the target class name.
        n_poison, rate: how many images to poison: a count or a fraction of the whole dataset.
        seed: seeds the choice (and random trigger placements).

    Example::

        >>> train = load_classification_dataset("digits:train", image_size=32)
        >>> poisoned = poison_classification_dataset(train, trigger, "zero", rate=0.1, seed=0, attack="badnet")
        >>> poisoned[poisoned.poison_indices[0]][1]
        0
    """
    classnames = list(dataset.classnames)
    if target not in classnames:
        raise ValueError(f"target {target!r} is not a class of the dataset ({classnames[:5]}...)")
    target_label = classnames.index(target)
    labels = list(dataset.labels)
    manifest = make_poison_manifest(
        [classnames[label] for label in labels],
        RelabelPolicy(target),
        n_poison=n_poison,
        rate=rate,
        seed=seed,
        attack=attack,
        source=str(getattr(dataset, "source", "")),
        eligible=[index for index, label in enumerate(labels) if label != target_label],
    )
    return PoisonedClassificationDataset(dataset, trigger, manifest)
