"""Image classifiers: the degenerate case of a CLIP (docs/method.md, "Image classifiers: the degenerate case").

A classifier is a model whose "text side" is a fixed set of class embeddings: ``f(x) = softmax(s * g(x) @ W.T)``.
clipclean treats it with the same machinery as a CLIP (the same triggers, the same EM inverter and verdict, the
same defenses, the same evaluation) through one adapter, :class:`ImageClassifier`:

* ``encode_image(x)`` returns the **log-probabilities** ``log f(x)`` ``(B, C)`` -- the classifier's "embedding";
* ``encode_text(k)`` returns the **one-hot** ``e_k`` ``(C,)`` of class ``k`` (a name or an index) -- its fixed
  "text side", so ``encode_image(x) @ e_k = log p(k | x)`` and :attr:`ImageClassifier.class_embeddings` is the
  identity: the zero-shot evaluation of :mod:`clipclean.evaluation` is plain top-k accuracy.

Two kinds of classifiers sit behind it:

* any ``torch.nn.Module`` that maps normalised images to logits (a timm or torchvision model, a small CNN of
  your own, the built-in ``"small-cnn"``): ``ImageClassifier(network, classnames, image_size, mean, std)``;
* a CLIP with a zero-shot head (class names + templates): :meth:`ImageClassifier.from_clip`; cleaning it updates
  the CLIP's image tower in place (save the CLIP afterwards with :func:`clipclean.hub.save_pretrained`).

The degenerate EM (:class:`ClassifierInversion`, picked by :func:`clipclean.inversion.build_inverter`) replaces
the vMF E-step with a posterior over the unknown target class,
``r_k ∝ pi_k * exp(kappa * mean_{i: y_i != k} log p(k | T(x_i)))`` (``kappa = N`` is the untempered product
over the ``N`` images; the default ``kappa`` tempers it so a weak early trigger does not lock in a class). The prior
``pi_k ∝ exp(-kappa * mean_{i: y_i != k} log p(k | x_i))`` discounts what the *clean* images already give each class,
so the posterior follows what the trigger adds (without it, the class that is naturally second-best for most images
wins the first E-step and the M-step locks onto it: measured on a planted-backdoor classifier). The
M-step maximises ``mean_i sum_{k != y_i} r_k log p(k | T(x_i)) + log p(phi)``. Everything else (population,
budgets, verdict, distributed reductions) is :class:`~clipclean.inversion.BlindInversion`'s.

**Model format** (a folder; never pickle): ``clipclean_classifier.json`` (``{"format": "clipclean-classifier",
"architecture", "architecture_kwargs", "classnames", "image_size", "image_mean", "image_std", "metadata"}``) and
``model.safetensors`` (the network's state dict). ``architecture`` is a built-in name (see
:data:`CLASSIFIER_ARCHITECTURES`, e.g. ``"small-cnn"``), a torchvision constructor (``"torchvision.models:resnet18"``)
or a ``"package.module:factory"`` spec of your own architecture, called as
``factory(num_classes=C, **architecture_kwargs)``. Loading a folder never imports a module it names unless you
pass ``trust_code=True`` (``--trust-architecture-code``): see :func:`build_network` and docs/security.md.

Example::

    >>> network = SmallCNN(num_classes=10)                          # or torchvision.models.resnet18(num_classes=10)
    >>> model = ImageClassifier(network, DIGIT_CLASSNAMES, image_size=32, architecture="small-cnn")
    >>> model.encode_image(torch.rand(4, 3, 32, 32)).exp().sum(-1)  # probabilities over the 10 classes
    tensor([1.0000, 1.0000, 1.0000, 1.0000])
    >>> save_classifier(model, "outputs/cnn")
    >>> same = load_classifier("outputs/cnn")
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from clipclean.errors import ClipcleanError
from clipclean.fileio import atomic_write, to_jsonable
from clipclean.inversion import (
    BlindInversion,
    EStepStats,
    InversionConfig,
    InversionResult,
    free_trigger,
    process_share,
    register_inverter,
)
from clipclean.models import PixelCLIP, PixelModel, unwrap
from clipclean.registry import Registry
from clipclean.triggers import Trigger

logger = logging.getLogger(__name__)

CLASSIFIER_FORMAT = "clipclean-classifier"
CLASSIFIER_FORMAT_VERSION = 1
CLASSIFIER_CONFIG_FILENAME = "clipclean_classifier.json"
CLASSIFIER_WEIGHTS_FILENAME = "model.safetensors"
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)


# ---- architectures ------------------------------------------------------------------------------------------
class SmallCNN(nn.Module):
    """A small convolutional classifier for small images (digits, CIFAR-sized): three conv-ReLU-pool stages and a
    linear head. Takes normalised images ``(B, in_channels, H, W)``, returns logits ``(B, num_classes)``.

    Args:
        num_classes: output classes.
        width: channels of the first stage (doubled at each of the next two). Default 16.
        in_channels: input channels. Default 3.

    Example::

        >>> SmallCNN(num_classes=10)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int, width: int = 16, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


CLASSIFIER_ARCHITECTURES: Registry[str, Callable[..., nn.Module]] = Registry("architecture")


def register_classifier_architecture(name: str, factory: Callable[..., nn.Module]) -> None:
    """Register a built-in architecture: ``factory(num_classes=C, **kwargs) -> nn.Module`` returning logits."""
    CLASSIFIER_ARCHITECTURES.register(name, factory)


register_classifier_architecture("small-cnn", SmallCNN)


class UntrustedCodeError(ClipcleanError, ValueError):
    """An architecture would import code that the user has not said they trust (see :func:`build_network`)."""


def is_trusted_architecture(architecture: str) -> bool:
    """Whether building ``architecture`` runs only code clipclean vouches for, with no opt-in: a registered name
    (:data:`CLASSIFIER_ARCHITECTURES`) or a torchvision classification constructor (``"torchvision.models:NAME"``
    with ``NAME`` in ``torchvision.models.list_models(torchvision.models)``)."""
    if architecture in CLASSIFIER_ARCHITECTURES:
        return True
    module_name, _, attribute = architecture.partition(":")
    if module_name != "torchvision.models" or not attribute:
        return False
    import torchvision

    return attribute in torchvision.models.list_models(module=torchvision.models)


def build_network(architecture: str, num_classes: int, trust_code: bool = False, **kwargs: Any) -> nn.Module:
    """A freshly initialised network: a registered name, a torchvision constructor (``"torchvision.models:resnet18"``)
    or -- only with ``trust_code=True`` -- any ``"package.module:factory"`` spec (your own code), called as
    ``factory(num_classes=num_classes, **kwargs)``.

    A spec names a module to import: read from a downloaded model folder, it would run whatever that module (or a
    ``.py`` file shipped beside it) does on import. So nothing outside :func:`is_trusted_architecture` is imported
    unless the caller passes ``trust_code=True`` (the recipes' ``--trust-architecture-code``), and then the log says
    what is imported.

    Raises:
        ValueError: an unknown name or a malformed spec.
        UntrustedCodeError: a spec outside the trusted set without ``trust_code=True``.
    """
    if architecture in CLASSIFIER_ARCHITECTURES:
        return CLASSIFIER_ARCHITECTURES[architecture](num_classes=num_classes, **kwargs)
    module_name, _, attribute = architecture.partition(":")
    if not module_name or not attribute:
        raise ValueError(
            f"unknown architecture {architecture!r}: use one of {sorted(CLASSIFIER_ARCHITECTURES)}, "
            "'torchvision.models:NAME' or 'package.module:factory'"
        )
    if not is_trusted_architecture(architecture):
        if not trust_code:
            raise UntrustedCodeError(
                f"architecture {architecture!r} would import and run the module {module_name!r}; pass "
                "--trust-architecture-code (trust_code=True) only if you trust it (built-in names "
                f"{sorted(CLASSIFIER_ARCHITECTURES)} and 'torchvision.models:NAME' need no opt-in)"
            )
        logger.warning("importing %r and calling %r (trusted by --trust-architecture-code)", module_name, attribute)
    factory = getattr(importlib.import_module(module_name), attribute, None)
    if factory is None:
        raise ValueError(f"{module_name} has no attribute {attribute!r}")
    return factory(num_classes=num_classes, **kwargs)


# ---- the adapter ---------------------------------------------------------------------------------------------
class ImageClassifier(PixelModel):
    """Any logits network as the degenerate CLIP clipclean's inverter, defenses and evaluation talk to.

    Args:
        network: maps normalised images ``(B, 3, H, W)`` to logits ``(B, C)``.
        classnames: the ``C`` class names, in logit order.
        image_size: ``(H, W)`` (or one int) the network takes; [0, 1] images of other sizes are resized.
        mean, std: per-channel normalisation applied before ``network`` (default 0.5, 0.5).
        architecture, architecture_kwargs: how to rebuild ``network`` (for :func:`save_classifier`); ``None`` for a
            network that cannot be rebuilt from a name (then only its state dict can be saved).
        name: where the model came from (provenance only).

    ``forward(images)`` returns logits ``(B, C)`` of ``(B, 3, H, W)`` images in [0, 1]; ``encode_image`` the
    log-probabilities; ``encode_text`` one-hot class embeddings (see the module docstring).
    """

    def __init__(
        self,
        network: nn.Module,
        classnames: Sequence[str],
        image_size: int | Sequence[int],
        mean: Sequence[float] = DEFAULT_MEAN,
        std: Sequence[float] = DEFAULT_STD,
        architecture: str | None = None,
        architecture_kwargs: dict[str, Any] | None = None,
        name: str = "",
    ) -> None:
        super().__init__(image_size, list(mean), list(std))
        self.network = network
        self.classnames = list(classnames)
        if len(self.classnames) < 2 or len(set(self.classnames)) != len(self.classnames):
            raise ValueError("a classifier needs at least two distinct class names")
        self.architecture = architecture
        self.architecture_kwargs = dict(architecture_kwargs or {})
        self.name = name

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def embed_dim(self) -> int:
        """The degenerate embedding's size: one log-probability per class."""
        return self.num_classes

    @property
    def device(self) -> torch.device:
        return self.image_mean.device

    @property
    def logit_scale(self) -> torch.Tensor:
        """1: the logits are already scaled."""
        return torch.ones((), device=self.device)

    @property
    def class_embeddings(self) -> torch.Tensor:
        """``(C, C)`` identity: the one-hot "text embedding" of every class (the zero-shot classifier)."""
        return torch.eye(self.num_classes, device=self.device)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C)`` of ``(B, 3, H, W)`` images in [0, 1]."""
        return self.network(self.normalize_pixels(images))

    def forward(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, C)`` (``targets`` is accepted and ignored, so batches ``(images, labels)`` unpack alike)."""
        return self.logits(images)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """``log f(x)``: log-probabilities ``(B, C)`` of ``(B, 3, H, W)`` images in [0, 1]."""
        return F.log_softmax(self.logits(images).float(), dim=-1)

    def class_index(self, target: str | int) -> int:
        """Index of a class given by name or index."""
        if isinstance(target, str) and target in self.classnames:
            return self.classnames.index(target)
        index = int(target)
        if not 0 <= index < self.num_classes:
            raise ValueError(f"class {target!r} is neither a class name nor an index < {self.num_classes}")
        return index

    def encode_text(self, texts: torch.Tensor | Sequence[str | int], normalize: bool = True) -> torch.Tensor:
        """One-hot class embeddings ``(N, C)`` of class names or indices (a ``LongTensor (N,)`` of labels too)."""
        if isinstance(texts, torch.Tensor):
            indices = texts.to(self.device).long().reshape(-1)
        else:
            indices = torch.tensor([self.class_index(t) for t in texts], device=self.device, dtype=torch.long)
        return F.one_hot(indices, self.num_classes).float()

    def spec(self) -> dict[str, Any]:
        """The JSON config of :func:`save_classifier` (without metadata)."""
        return {
            "format": CLASSIFIER_FORMAT,
            "format_version": CLASSIFIER_FORMAT_VERSION,
            "architecture": self.architecture,
            "architecture_kwargs": self.architecture_kwargs,
            "classnames": self.classnames,
            "image_size": list(self.image_size),
            "image_mean": self.image_mean.flatten().tolist(),
            "image_std": self.image_std.flatten().tolist(),
        }

    @classmethod
    def from_clip(
        cls, clip: PixelCLIP, classnames: Sequence[str], templates: Sequence[str] | None = None
    ) -> ImageClassifier:
        """A CLIP with a zero-shot head: ``logits = s * normalise(g(x)) @ W.T`` with ``W`` from
        :func:`clipclean.evaluation.zeroshot_classifier` (``templates`` default: the 80 OpenAI ImageNet ones).

        The network *shares* the CLIP's image tower: cleaning the classifier cleans ``clip.model.visual``.

        Example::

            >>> model = ImageClassifier.from_clip(load_clip("clipclean-tiny"), DIGIT_CLASSNAMES, ["a {c}."])
        """
        from clipclean.evaluation import openai_imagenet_templates, zeroshot_classifier

        clip = unwrap(clip)
        weights = zeroshot_classifier(clip, classnames, templates or openai_imagenet_templates())
        head = ZeroShotHead(clip.model.visual, weights, float(clip.logit_scale.detach()))
        mean, std = clip.image_mean.flatten().tolist(), clip.image_std.flatten().tolist()
        return cls(head, classnames, clip.image_size, mean, std, name=f"zero-shot {clip.name}")


class ZeroShotHead(nn.Module):
    """``s * normalise(visual(x)) @ W.T``: a CLIP image tower with fixed class embeddings ``W (C, d)``.

    Args:
        visual: the CLIP's image tower (normalised images -> ``(B, d)``), shared, not copied.
        class_embeddings: ``(C, d)`` unit class embeddings (a buffer: the fixed "text side").
        logit_scale: the CLIP's temperature ``s``.
    """

    def __init__(self, visual: nn.Module, class_embeddings: torch.Tensor, logit_scale: float) -> None:
        super().__init__()
        self.visual = visual
        self.register_buffer("class_embeddings", class_embeddings.detach().float().clone())
        self.logit_scale = logit_scale

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = F.normalize(self.visual(images).float(), dim=-1)
        return self.logit_scale * features @ self.class_embeddings.T


# ---- files ---------------------------------------------------------------------------------------------------
def create_classifier(
    architecture: str,
    classnames: Sequence[str],
    image_size: int | Sequence[int] = 32,
    mean: Sequence[float] = DEFAULT_MEAN,
    std: Sequence[float] = DEFAULT_STD,
    trust_code: bool = False,
    **architecture_kwargs: Any,
) -> ImageClassifier:
    """A randomly initialised classifier of a built-in, torchvision or (with ``trust_code=True``) ``module:factory``
    architecture (see :func:`build_network`).

    Example::

        >>> model = create_classifier("small-cnn", DIGIT_CLASSNAMES, image_size=32, width=16)
    """
    network = build_network(architecture, len(classnames), trust_code=trust_code, **architecture_kwargs)
    return ImageClassifier(network, classnames, image_size, mean, std, architecture, architecture_kwargs, architecture)


def save_classifier(model: nn.Module, directory: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``clipclean_classifier.json`` + ``model.safetensors`` into ``directory`` (atomically per file).

    ``metadata`` is free-form provenance (attack, metrics, the cleaning method...). Returns the folder.
    """
    from clipclean.hub import safetensors_state_dict

    model = unwrap(model, ImageClassifier)
    if model.architecture is None:
        raise ValueError("this classifier has no architecture name to rebuild it from; set model.architecture")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = safetensors_state_dict(model.network)
    atomic_write(
        directory / CLASSIFIER_WEIGHTS_FILENAME,
        lambda temporary: save_file(tensors, temporary, metadata={"format": CLASSIFIER_FORMAT}),
    )
    document = {**model.spec(), "metadata": to_jsonable(metadata or {})}
    text = json.dumps(document, indent=2) + "\n"
    atomic_write(directory / CLASSIFIER_CONFIG_FILENAME, lambda temporary: Path(temporary).write_text(text))
    return directory


def is_classifier_directory(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by :func:`save_classifier`."""
    return (Path(path) / CLASSIFIER_CONFIG_FILENAME).is_file()


def read_classifier_config(directory: str | Path) -> dict[str, Any]:
    """The JSON document of a saved classifier (validated format)."""
    path = Path(directory) / CLASSIFIER_CONFIG_FILENAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory} is not a clipclean classifier folder: {CLASSIFIER_CONFIG_FILENAME} is missing"
        )
    document = json.loads(path.read_text(encoding="utf-8"))
    if document.get("format") != CLASSIFIER_FORMAT:
        raise ValueError(f"{path} is not a clipclean classifier config (format={document.get('format')!r})")
    if document.get("format_version", 0) > CLASSIFIER_FORMAT_VERSION:
        raise ValueError(f"{path} has format version {document['format_version']}; upgrade clipclean")
    return document


def load_classifier(
    directory: str | Path, device: str | torch.device = "cpu", trust_code: bool = False
) -> ImageClassifier:
    """Load a classifier saved by :func:`save_classifier` (safetensors weights, strict keys), in eval mode.

    The folder's ``architecture`` is rebuilt without importing anything it names unless ``trust_code=True``
    (:func:`build_network`): loading a downloaded folder never runs code from it by default.
    """
    document = read_classifier_config(directory)
    kwargs = document.get("architecture_kwargs", {})
    if not isinstance(document.get("architecture"), str) or not isinstance(kwargs, dict):
        raise ValueError(f"{directory}: 'architecture' must be a string and 'architecture_kwargs' an object")
    model = create_classifier(
        document["architecture"],
        document["classnames"],
        document["image_size"],
        document["image_mean"],
        document["image_std"],
        trust_code=trust_code,
        **kwargs,
    )
    model.network.load_state_dict(load_file(str(Path(directory) / CLASSIFIER_WEIGHTS_FILENAME)), strict=True)
    model.name = str(directory)
    return model.to(device).eval()


# ---- the degenerate EM ---------------------------------------------------------------------------------------
class ClassifierInversion(BlindInversion):
    """:class:`~clipclean.inversion.BlindInversion` for an :class:`ImageClassifier`: the E-step is a posterior over
    the classes, the M-step the expected log-probability of the target (see the module docstring).

    Each hypothesis' "direction" is its posterior ``r (C,)``; its backdoor score is
    ``mean_i [sum_k r_k log p(k | T x_i) - log p(y_i | T x_i)]`` and its hijacked fraction the share of images
    more likely under the target than under their own class. The candidates default to the classifier's classes.

    Args:
        model: the :class:`ImageClassifier` (only read).
        config: :class:`~clipclean.inversion.InversionConfig`; ``kappa`` tempers the posterior.
        candidate_names, candidate_embeddings: default ``model.classnames`` and the identity.
        class_hypotheses: one trigger hypothesis per class, each committed to its class (default: when untargeted
            and the classes are at most ``config.max_verdict_candidates``); the posterior over the target class is
            then ``softmax(kappa * backdoor score)`` over the hypotheses and the verdict reuses them. ``False``: a
            free population whose posteriors follow the E-step formula above.
        target_caption: targeted mode: the known target class name.
        reduce_fn, progress, world_size: as for :class:`~clipclean.inversion.BlindInversion`.

    Example::

        >>> inverter = ClassifierInversion(model, InversionConfig(rounds=3))
        >>> result = inverter.fit(images, labels)             # images (N, 3, H, W) in [0, 1], labels (N,)
        >>> result.recovered_target, result.verdict
        ('zero', 'backdoored')
    """

    # Chosen 2026-12-05 on the 50 CNNs of the CNN zoo read so far (development, held-out and first fresh set: 26
    # backdoored, 24 never-poisoned; benchmarks/README.md, "The degenerate case"), to be tested on CNNs built after
    # it. The zoo's rule (select_statistic) picks the winner's lift; the threshold is the midpoint between the lowest
    # backdoored score (the benchmark's seed-0 Blended CNN, 3.36) and the highest never-poisoned one below it (3.07):
    # every backdoored CNN read is detected, 1 of 24 never-poisoned ones is called backdoored. The rule's own
    # threshold (3.42) spares that one and misses the Blended CNN: a backdoored model called clean costs more.
    # The previous default, max-candidate-logit > 2.5 (chosen on the development half alone), called 5 of 16 held-out
    # never-poisoned CNNs backdoored; the lifts are on the CLIPs' scale but CNNs need a higher threshold than 1.29.
    default_verdict_statistic = "winner-lift"
    default_verdict_threshold = 3.22

    def __init__(
        self,
        model: ImageClassifier,
        config: InversionConfig | None = None,
        candidate_names: Sequence[str] | None = None,
        candidate_embeddings: torch.Tensor | None = None,
        class_hypotheses: bool | None = None,
        **kwargs: Any,
    ) -> None:
        classifier = unwrap(model, ImageClassifier)
        if candidate_names is None:
            candidate_names, candidate_embeddings = classifier.classnames, classifier.class_embeddings
        super().__init__(classifier, config, candidate_names, candidate_embeddings, **kwargs)
        self.clean_log_probability = torch.zeros(classifier.num_classes, device=self.device)
        classes = classifier.num_classes
        if class_hypotheses is None:
            class_hypotheses = self.target_direction is None and classes <= self.config.max_verdict_candidates
        self.class_hypotheses = class_hypotheses
        if self.class_hypotheses:  # one hypothesis per class: hypothesis k is the best trigger toward class k
            self.population = [
                free_trigger(self.model.image_size, self.mask_budget, self.config.seed * 101 + k, None).to(self.device)
                for k in range(classes)
            ]
            parameters = [p for trigger in self.population for p in trigger.parameters()]
            self.optimizer = torch.optim.Adam(parameters, lr=self.config.lr)
            # the free population's image budget per M-step, shared among the class hypotheses (over all processes)
            budget = self.config.batch_size * self.config.patch_hypotheses
            self.images_per_step = process_share(max(8, budget // classes), self.world_size)

    @torch.no_grad()
    def e_step(self, batches) -> EStepStats:
        """The E-step of :class:`~clipclean.inversion.BlindInversion` with the class posterior; first measures
        ``mean_{i: y_i != k} log p(k | x_i)`` on the *clean* images, the baseline the prior discounts."""
        batches = list(batches)
        evidence = torch.zeros(2 * self.model.num_classes, device=self.device)
        for images, labels in batches:
            features = self.model.encode_image(images.to(self.device)).float()
            own = self._text_features(labels)
            evidence += self._direction_evidence(features, own, torch.ones(images.shape[0], device=self.device))
        sums, counts = self.reduce_fn(evidence, "sum").chunk(2)
        self.clean_log_probability = sums / counts.clamp_min(1)
        return super().e_step(batches)

    def _direction_evidence(self, features: torch.Tensor, own: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``[sum_{i: y_i != k} log p(k | T x_i), #{i: y_i != k}]`` for every class ``k``: ``(2C,)``."""
        other = 1 - own
        return torch.cat([(other * features).sum(0), other.sum(0)])

    def _directions_from_evidence(self, evidence: torch.Tensor) -> torch.Tensor:
        """``r_k ∝ pi_k exp(kappa * mean_{i: y_i != k} log p(k | T x_i))``, ``(P, C)``, with the prior
        ``pi_k ∝ exp(-kappa * mean_{i: y_i != k} log p(k | x_i))`` measured on the clean images."""
        classes = evidence.shape[-1] // 2
        if self.class_hypotheses:  # hypothesis k is committed to class k
            return torch.eye(classes, device=evidence.device)[: evidence.shape[0]]
        sums, counts = evidence[..., :classes], evidence[..., classes:]
        lift = sums / counts.clamp_min(1) - self.clean_log_probability.to(evidence)
        return (self.config.kappa * lift).softmax(dim=-1)

    def _log_likelihood(self, features: torch.Tensor, own: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
        """``(P,)`` ``mean_i sum_{k != y_i} r_k log p(k | T x_i)`` with ``r`` renormalised without ``y_i``."""
        weights = directions[:, None, :] * (1 - own)[None]
        weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-12)
        return (weights * features).sum(-1).mean(dim=1)

    def _resultant_features(self, features: torch.Tensor) -> torch.Tensor:
        """Probabilities: the concentration is the mean resultant length of the triggered predictions."""
        return features.exp()

    def name_candidates(self, direction: torch.Tensor, top: int = 5) -> list[tuple[str, float]]:
        """The posterior ``r`` itself, top ``top`` classes."""
        order = direction.argsort(descending=True)[:top]
        return [(self.candidate_names[int(k)], float(direction[k])) for k in order]

    def class_posterior(self) -> torch.Tensor:
        """With one hypothesis per class: ``r_k ∝ exp(kappa * score_k)`` from the last E-step's backdoor scores
        (the mean log-odds ``log p(k | T_k x) - log p(y | T_k x)`` of class ``k``'s own best trigger)."""
        return (self.config.kappa * self.last_stats.backdoor_scores).softmax(dim=-1)

    def result(self, verdict_batches=None) -> InversionResult:
        result = super().result(verdict_batches)
        if self.class_hypotheses and result.named_by != "verdict":
            result.direction = self.class_posterior().detach().cpu()
            result.target_candidates = self.name_candidates(result.direction)
        return result

    def commit_to_target(self, direction: torch.Tensor) -> None:
        """Targeted mode toward the (most probable class of the) posterior ``direction``; the class hypotheses
        are all redirected to it."""
        super().commit_to_target(F.one_hot(direction.argmax(), self.model.num_classes).float())
        self.class_hypotheses = False

    def active_hypotheses(self) -> list[int]:
        """With one hypothesis per class, only the recovered target's: the others are (adversarial) triggers
        toward classes that are not the backdoor's."""
        if self.class_hypotheses:
            return [self.best_hypothesis()]
        return super().active_hypotheses()

    def _targeted_triggers(self, indices, stream, seed_offset: int = 0) -> list[Trigger]:
        """With one hypothesis per class the population already holds the targeted triggers (at the budget the
        search ended at): the verdict measures them instead of optimising new ones (a confirmation, with its
        ``seed_offset``, still optimises new ones)."""
        at_search_budget = self.config.verdict_budget is None and self.config.verdict_budget_scale == 1
        if self.class_hypotheses and at_search_budget and not seed_offset:
            return [self.population[k] for k in indices]
        return super()._targeted_triggers(indices, stream, seed_offset)


register_inverter(ImageClassifier, ClassifierInversion)
