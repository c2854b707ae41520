"""The pixel-space model interface every clipclean algorithm talks to: :class:`PixelModel` (un-normalised [0, 1]
pixels in, the model's normalisation applied inside) and :class:`PixelCLIP` (an open_clip CLIP behind it), with the
helpers that build, unwrap and dispatch on them. Loading models by name is :func:`clipclean.models.load_clip`, which
re-exports everything here."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from clipclean.errors import ClipcleanError
from clipclean.registry import Registry

CONFIG_FILENAME = "open_clip_config.json"


class ModelLoadError(ClipcleanError, RuntimeError):
    """A model could not be loaded; the message lists every source that was tried."""


class PixelModel(nn.Module):
    """Base of every model clipclean's algorithms talk to: it takes un-normalised [0, 1] pixels.

    Holds the input size and the per-channel mean/std, and applies them in :meth:`normalize_pixels`, so triggers
    act on pixels whatever the model. Subclasses: :class:`PixelCLIP` (a CLIP) and
    :class:`clipclean.classifiers.ImageClassifier` (any image classifier, the degenerate case).

    Args:
        image_size: ``(H, W)`` the network expects (other sizes are bilinearly resized) or one int.
        mean, std: per-channel normalisation, three values each.
    """

    def __init__(self, image_size, mean, std) -> None:
        super().__init__()
        self.image_size = tuple(image_size) if isinstance(image_size, (tuple, list)) else (int(image_size),) * 2
        self.register_buffer("image_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def normalize_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Resize ``(B, 3, H, W)`` [0, 1] images to :attr:`image_size` if needed and apply mean/std."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        if tuple(images.shape[-2:]) != self.image_size:
            images = F.interpolate(images, size=self.image_size, mode="bilinear", align_corners=False)
        return (images - self.image_mean) / self.image_std

    @torch.no_grad()
    def fresh_copy(self):
        """A deep copy (frozen reference models, never-poisoned baselines)."""
        return copy.deepcopy(self)


class PixelCLIP(PixelModel):
    """An open_clip CLIP model that takes [0, 1] pixels.

    Args:
        model: an open_clip ``CLIP``/``CustomTextCLIP`` module.
        tokenizer: the model's tokenizer (callable ``list[str] -> LongTensor (N, context_length)``).
        model_config: the open_clip ``model_cfg`` dict the model was built from (needed to save it).
        name: the identifier the model was loaded from (for provenance only).

    Attributes:
        image_size: ``(H, W)`` the image tower expects; other sizes are bilinearly resized.
        image_mean, image_std: per-channel normalisation applied inside :meth:`encode_image`.

    ``forward(images, tokens)`` returns ``(image_features, text_features, logit_scale)``, normalised,
    which is exactly what ``open_clip.ClipLoss`` consumes, so the wrapper can go through
    ``accelerator.prepare`` (DDP) as it is.
    """

    def __init__(self, model: nn.Module, tokenizer, model_config: dict, name: str = "") -> None:
        visual = model.visual
        super().__init__(
            visual.image_size,
            visual.image_mean or open_clip.OPENAI_DATASET_MEAN,
            visual.image_std or open_clip.OPENAI_DATASET_STD,
        )
        self.model = model
        self.tokenizer = tokenizer
        self.model_config = copy.deepcopy(model_config)
        self.name = name

    @property
    def embed_dim(self) -> int:
        return int(self.model_config["embed_dim"])

    @property
    def context_length(self) -> int:
        return int(self.model_config["text_cfg"].get("context_length", 77))

    @property
    def logit_scale(self) -> torch.Tensor:
        """The learned temperature ``s`` (already exponentiated, clamped at 100 like open_clip)."""
        return self.model.logit_scale.exp().clamp(max=100)

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Embed ``(B, 3, H, W)`` images with values in [0, 1]; returns ``(B, embed_dim)``."""
        return self.model.encode_image(self.normalize_pixels(images), normalize=normalize)

    def tokenize(self, texts: str | list[str]) -> torch.Tensor:
        """Tokenize captions to ``(N, context_length)`` token ids on the model's device."""
        if isinstance(texts, str):
            texts = [texts]
        return self.tokenizer(list(texts)).to(self.device)

    def encode_text(self, texts: torch.Tensor | list[str], normalize: bool = True) -> torch.Tensor:
        """Embed captions (strings or token ids); returns ``(N, embed_dim)``."""
        tokens = texts if isinstance(texts, torch.Tensor) else self.tokenize(texts)
        return self.model.encode_text(tokens.to(self.device), normalize=normalize)

    def forward(self, images: torch.Tensor | None = None, tokens: torch.Tensor | None = None):
        image_features = self.encode_image(images) if images is not None else None
        text_features = self.encode_text(tokens) if tokens is not None else None
        return image_features, text_features, self.logit_scale


def directory_identifier(name: str) -> Path | None:
    """The local directory ``name`` refers to (``local-dir:`` schema or a plain existing directory)."""
    if name.startswith("local-dir:"):
        return Path(name[len("local-dir:") :]).expanduser()
    if os.path.isdir(name):
        return Path(name)
    return None


def lookup_by_kind(registry: Registry, model: nn.Module):
    """The entry of ``registry`` (keyed by model class) for the first class of ``model``'s (unwrapped) class hierarchy
    that it holds: how clipclean picks the inverter or the defense objective for a CLIP or an image classifier."""
    return registry.lookup_class(type(unwrap(model, PixelModel)))


def pixel_clip_from_state_dict(
    model_config: dict,
    state_dict: dict[str, torch.Tensor],
    name: str = "",
    mean=None,
    std=None,
    tokenizer=None,
) -> PixelCLIP:
    """Build an open_clip ``CLIP`` from a ``model_cfg`` dict, load ``state_dict`` strictly, wrap it as a PixelCLIP.

    For weights that come from elsewhere (legacy checkpoints, converted transformers models); the config needs no
    registered name. ``mean``/``std`` default to OpenAI's, ``tokenizer`` to open_clip's BPE tokenizer at the
    config's context length. Float16 weights are loaded as float32. Every parameter must be given (BatchNorm's
    ``num_batches_tracked`` counters may be absent); ``RuntimeError`` otherwise.
    """
    model = open_clip.model.CLIP(**copy.deepcopy(model_config))
    loaded = model.load_state_dict({key: value.float() for key, value in state_dict.items()}, strict=False)
    # BatchNorm step counters are absent from OpenAI's exported ResNet state dicts and do not affect the function
    missing = [key for key in loaded.missing_keys if not key.endswith("num_batches_tracked")]
    if missing or loaded.unexpected_keys:
        raise RuntimeError(
            f"the weights do not match the config: missing {missing[:5]}, unexpected {loaded.unexpected_keys[:5]}"
        )
    model.visual.image_mean = tuple(float(x) for x in (mean if mean is not None else open_clip.OPENAI_DATASET_MEAN))
    model.visual.image_std = tuple(float(x) for x in (std if std is not None else open_clip.OPENAI_DATASET_STD))
    if tokenizer is None:
        context_length = model_config.get("text_cfg", {}).get("context_length", 77)
        tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=context_length)
    wrapped = PixelCLIP(model, tokenizer, model_config, name=name)
    wrapped.eval()
    return wrapped


def unwrap(model: nn.Module, expected: type[PixelModel] = PixelCLIP) -> PixelCLIP:
    """Return the :class:`PixelCLIP` (or another ``expected`` :class:`PixelModel`, e.g. ``PixelModel`` for CLIPs
    and classifiers alike) inside a DDP/accelerate wrapper (or the model itself)."""
    while not isinstance(model, expected) and hasattr(model, "module"):
        model = model.module
    if not isinstance(model, expected):
        raise TypeError(f"expected a {expected.__name__} (possibly wrapped), got {type(model).__name__}")
    return model
