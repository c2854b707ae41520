"""Zero-shot clean accuracy and attack success rate: clipclean's one evaluation protocol.

Protocol (written out in ``docs/evaluation.md``):

* Zero-shot classifier: for each class, embed every template filled with the class name, L2-normalise
  each embedding, average them and renormalise: ``open_clip.build_zero_shot_classifier``, with open_clip's
  80 OpenAI ImageNet templates and 1,000 OpenAI class names (``open_clip.zero_shot_metadata``).
* **CA**: top-1 and top-5 accuracy on clean images.
* **ASR**: apply the trigger to every image whose label is *not* the target class (after the same resize
  as training: triggers act on the model's input resolution), and count predictions of the target class
  (top-1; also top-10: the target is among the 10 highest logits). Random-location triggers draw their
  placements from a generator seeded with ``seed`` (per process under distributed evaluation).

Example::

    >>> from clipclean import load_clip
    >>> from clipclean.data import load_classification_dataset
    >>> model = load_clip("clipclean-tiny")
    >>> data = load_classification_dataset("digits", image_size=32, split="test")
    >>> evaluate_zeroshot(model, data, data.classnames, trigger=trigger, target="zero")
    {'top1': ..., 'top5': ..., 'asr_top1': ..., 'asr_top10': ..., 'n_images': 400, 'n_asr_images': 360, ...}
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import open_clip
import torch
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from clipclean.models import PixelCLIP, PixelModel, unwrap
from clipclean.triggers import Trigger

logger = logging.getLogger(__name__)

PROTOCOL = "clipclean-zeroshot-v1"


def openai_imagenet_templates() -> list[str]:
    """The 80 OpenAI ImageNet prompt templates, with ``{c}`` where the class name goes.

    open_clip's ``OPENAI_IMAGENET_TEMPLATES`` (callables ``c -> prompt``) written out as template strings.
    """
    return [template("{c}") for template in OPENAI_IMAGENET_TEMPLATES]


def imagenet_classnames() -> list[str]:
    """The 1,000 OpenAI ImageNet class names, in ImageNet index order (sorted synsets): open_clip's
    ``IMAGENET_CLASSNAMES``."""
    return list(IMAGENET_CLASSNAMES)


def load_templates(path: str | Path | None = None) -> list[str]:
    """Templates from a file (JSON list, or one template per line), or the OpenAI ImageNet set by default.

    A template contains ``{c}`` or ``{}`` where the class name goes.
    """
    if path is None:
        return openai_imagenet_templates()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"templates file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            templates = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from error
        if not isinstance(templates, list) or not all(isinstance(template, str) for template in templates):
            raise ValueError(f"{path} must hold a JSON list of template strings")
    else:
        templates = [line.strip() for line in text.splitlines()]
    templates = [template for template in templates if template.strip()]
    if not templates:
        raise ValueError(f"no templates in {path}")
    bad = [template for template in templates if "{c}" not in template and "{}" not in template]
    if bad:
        raise ValueError(f"templates without a '{{c}}' or '{{}}' placeholder in {path}: {bad[:3]}")
    return templates


def fill_template(template: str, classname: str) -> str:
    """``fill_template("a photo of a {c}.", "dog") == "a photo of a dog."`` (``{}`` works too)."""
    return template.replace("{c}", classname).replace("{}", classname)


@torch.no_grad()
def zeroshot_classifier(
    model: PixelCLIP, classnames: Sequence[str], templates: Sequence[str], batch_size: int = 256
) -> torch.Tensor:
    """Class embeddings ``(C, d)``: per class, the renormalised mean of normalised template embeddings.

    Computed by ``open_clip.build_zero_shot_classifier`` (which returns the transpose, ``(d, C)``).

    Args:
        model: a :class:`PixelCLIP` (possibly wrapped by DDP).
        classnames: the ``C`` class names, in label order.
        templates: prompt templates with ``{c}`` (or ``{}``) where the class name goes.
        batch_size: prompts per text-encoder forward (whole classes, at least one class per forward).

    Returns:
        ``FloatTensor (C, d)`` with unit-norm rows.
    """
    model = unwrap(model)
    if not classnames:
        raise ValueError("zero-shot classification needs at least one class name")
    if not templates:
        raise ValueError("zero-shot classification needs at least one template")
    weights = open_clip.build_zero_shot_classifier(
        model,  # PixelCLIP.encode_text(tokens, normalize=True) is open_clip's
        model.tokenize,
        list(classnames),
        [functools.partial(fill_template, template) for template in templates],  # "{c}" is no str.format field
        num_classes_per_batch=max(1, batch_size // len(templates)),
        device=model.device,
    )
    return weights.T.float().contiguous()


def resolve_target(target: str | int, classnames: Sequence[str]) -> int:
    """The class index of ``target`` given as a class name (case-insensitive) or an index."""
    if isinstance(target, int) or (isinstance(target, str) and target.isdigit() and target not in classnames):
        index = int(target)
        if not 0 <= index < len(classnames):
            raise ValueError(f"target index {index} is out of range for {len(classnames)} classes")
        return index
    lowered = [name.lower() for name in classnames]
    if target.lower() not in lowered:
        raise ValueError(f"target {target!r} is not a class name (e.g. {list(classnames)[:5]})")
    return lowered.index(target.lower())


@torch.no_grad()
def zeroshot_predictions(
    model: PixelCLIP,
    loader: DataLoader,
    classifier: torch.Tensor,
    trigger: Trigger | None = None,
    seed: int = 0,
    k: int = 10,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Top-``k`` class predictions on clean (and triggered) images.

    Args:
        model: a :class:`PixelCLIP` (possibly wrapped by DDP), or an image classifier
            (:class:`clipclean.classifiers.ImageClassifier`, whose ``classifier`` is its ``class_embeddings``).
        loader: yields ``(images (B, 3, H, W) in [0, 1], labels (B,))``.
        classifier: ``(C, d)`` class embeddings from :func:`zeroshot_classifier`.
        trigger: if given, also predict on triggered images.
        seed: seed of the generator used for random trigger placement.
        k: how many top classes to keep (clipped to ``C``).
        gather: cross-process gather (``accelerator.gather_for_metrics``); identity when ``None``.

    Returns:
        ``{"labels": (N,), "topk": (N, k)}`` plus ``"trigger_topk": (N, k)`` when a trigger is given.
    """
    pixel_model = unwrap(model, PixelModel)
    was_training = pixel_model.training
    pixel_model.eval()
    device = pixel_model.device
    classifier = classifier.to(device)
    k = min(k, classifier.shape[0])
    generator = torch.Generator().manual_seed(seed)
    gather = gather or (lambda tensor: tensor)
    outputs: dict[str, list[torch.Tensor]] = {"labels": [], "topk": [], "trigger_topk": []}
    for images, labels in tqdm(loader, desc="zero-shot eval", disable=not progress, leave=False):
        images, labels = images.to(device), torch.as_tensor(labels, device=device)
        logits = pixel_model.encode_image(images).float() @ classifier.T
        if not torch.isfinite(logits).all():  # top-k of NaNs is arbitrary: no CA or ASR at all rather than a wrong one
            raise ValueError("the model's logits are NaN or infinite: its weights (or class embeddings) are damaged")
        outputs["labels"].append(gather(labels).cpu())
        outputs["topk"].append(gather(logits.topk(k, dim=-1).indices).cpu())
        if trigger is not None:
            triggered = trigger.apply(images, generator=generator)
            if not torch.isfinite(triggered).all():
                raise ValueError(f"the trigger makes NaN or infinite pixels ({trigger.family}): check the trigger")
            trigger_logits = pixel_model.encode_image(triggered).float() @ classifier.T
            outputs["trigger_topk"].append(gather(trigger_logits.topk(k, dim=-1).indices).cpu())
    pixel_model.train(was_training)
    if not outputs["labels"]:
        raise ValueError("the evaluation data is empty")
    return {name: torch.cat(values) for name, values in outputs.items() if values}


def zeroshot_metrics(
    labels: torch.Tensor,
    topk: torch.Tensor,
    trigger_topk: torch.Tensor | None = None,
    target: int | None = None,
) -> dict[str, float | int | None]:
    """CA and ASR from predictions (see the module docstring for the protocol).

    Returns ``{"top1", "top5", "asr_top1", "asr_top10", "n_images", "n_asr_images"}``; ASR keys are
    ``None`` when no trigger/target is given.
    """
    metrics: dict[str, float | int | None] = {
        "top1": float((topk[:, 0] == labels).float().mean()),
        "top5": float((topk[:, :5] == labels[:, None]).any(dim=1).float().mean()),
        "asr_top1": None,
        "asr_top10": None,
        "n_images": int(labels.numel()),
        "n_asr_images": 0,
    }
    if trigger_topk is not None and target is not None:
        keep = labels != target
        if not keep.any():
            raise ValueError("every evaluation image belongs to the target class: ASR is undefined")
        metrics["asr_top1"] = float((trigger_topk[keep, 0] == target).float().mean())
        metrics["asr_top10"] = float((trigger_topk[keep, :10] == target).any(dim=1).float().mean())
        metrics["n_asr_images"] = int(keep.sum())
    return metrics


def evaluate_zeroshot(
    model: PixelCLIP,
    data: Dataset | DataLoader,
    classnames: Sequence[str],
    templates: Sequence[str] | None = None,
    trigger: Trigger | None = None,
    target: str | int | None = None,
    batch_size: int = 256,
    seed: int = 0,
    classifier: torch.Tensor | None = None,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: bool = False,
) -> dict[str, float | int | None]:
    """Zero-shot CA (and ASR when ``trigger`` and ``target`` are given) of ``model`` on ``data``.

    Args:
        model: a :class:`PixelCLIP`.
        data: a classification dataset yielding ``(image (3, H, W) in [0, 1], label)`` or a loader of batches.
        classnames: class names, index-aligned with the labels.
        templates: prompt templates (default: the 80 OpenAI ImageNet templates).
        trigger, target: the trigger and target class (name or index) for ASR.
        classifier: precomputed ``(C, d)`` class embeddings (skips building them).
        gather: cross-process gather for distributed evaluation (``accelerator.gather_for_metrics``).

    Returns:
        ``{"top1", "top5", "asr_top1", "asr_top10", "n_images", "n_asr_images", "protocol"}``.
    """
    if (trigger is None) != (target is None):
        raise ValueError("ASR needs both a trigger and a target (give both or neither)")
    target_index = resolve_target(target, classnames) if target is not None else None
    if classifier is None:
        classifier = zeroshot_classifier(model, classnames, templates or openai_imagenet_templates())
    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=batch_size, shuffle=False)
    predictions = zeroshot_predictions(
        model, loader, classifier, trigger=trigger, seed=seed, gather=gather, progress=progress
    )
    metrics = zeroshot_metrics(
        predictions["labels"], predictions["topk"], predictions.get("trigger_topk"), target_index
    )
    metrics["protocol"] = PROTOCOL
    return metrics
