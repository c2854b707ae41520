"""Loading CLIP models the open_clip way, with a pixel-space interface for triggers.

Every clipclean algorithm talks to a :class:`PixelCLIP`: an open_clip model plus its preprocessing
(mean/std, image size) and tokenizer, whose :meth:`PixelCLIP.encode_image` takes **un-normalised
images in [0, 1]** of shape ``(B, 3, H, W)`` and applies the model's normalisation itself. Triggers
therefore act on pixels, exactly as an attacker pastes a patch into an image file.

Model names follow open_clip:

* ``"ViT-B-32"`` with ``pretrained="laion2b_s34b_b79k"`` (a tag) or ``pretrained="/path/ckpt.safetensors"``;
* ``"hf-hub:org/repo"`` (honours ``HF_HUB_OFFLINE=1`` and the local Hub cache);
* ``"local-dir:/path"`` or a plain directory path holding ``open_clip_config.json`` + weights;
* clipclean's tiny configs ``"clipclean-tiny"`` / ``"clipclean-small"`` (32x32 images) for demos and tests;
* a ``transformers.CLIPModel`` folder or ``hf-hub:`` repo (``config.json`` with ``"model_type": "clip"`` and no
  ``open_clip_config.json``), wrapped by :class:`clipclean.transformers_clip.TransformersCLIP`.

Example::

    >>> from clipclean import load_clip
    >>> model = load_clip("clipclean-tiny")            # random init, 32x32 images
    >>> images = torch.rand(4, 3, 32, 32)               # [0, 1] pixels
    >>> model.encode_image(images).shape                # L2-normalised
    torch.Size([4, 64])
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from importlib import resources
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from clipclean.errors import ClipcleanError

logger = logging.getLogger(__name__)

CONFIG_FILENAME = "open_clip_config.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth")  # what open_clip looks for in a local-dir folder
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # org/repo, as the Hugging Face Hub names repos
_TINY_CONFIG_DIR = Path(str(resources.files("clipclean") / "model_configs"))


class ModelLoadError(ClipcleanError, RuntimeError):
    """A model could not be loaded; the message lists every source that was tried."""


def register_model_configs() -> list[str]:
    """Register clipclean's tiny model configs with open_clip (idempotent) and return their names."""
    names = sorted(p.stem for p in _TINY_CONFIG_DIR.glob("*.json"))
    if not all(name in open_clip.list_models() for name in names):
        open_clip.add_model_config(_TINY_CONFIG_DIR)
    return names


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


def _directory_identifier(name: str) -> Path | None:
    """The local directory ``name`` refers to (``local-dir:`` schema or a plain existing directory)."""
    if name.startswith("local-dir:"):
        return Path(name[len("local-dir:") :]).expanduser()
    if os.path.isdir(name):
        return Path(name)
    return None


def _looks_like_path(name: str) -> bool:
    """Whether a name that is neither a folder nor a model config was meant as a path (``outputs/model``,
    ``./model``, ``~/model``, ``C:\\model``) rather than an open_clip config name (``ViT-B-32``)."""
    return "/" in name or os.sep in name or name.startswith((".", "~"))


def _read_config(directory: Path) -> dict:
    path = directory / CONFIG_FILENAME
    if not path.is_file():
        raise ModelLoadError(f"'{directory}' is not an open_clip Hub-layout folder: {CONFIG_FILENAME} is missing")
    with path.open(encoding="utf-8") as f:
        config = json.load(f)
    if "model_cfg" not in config:
        raise ModelLoadError(f"{path} has no 'model_cfg' key")
    return config["model_cfg"]


def _require_weights(directory: Path) -> None:
    """open_clip only warns and initialises randomly when a folder has a config but no weights; we refuse."""
    if not any(path.suffix in _WEIGHT_SUFFIXES and path.is_file() for path in directory.iterdir()):
        raise ModelLoadError(
            f"'{directory}' has {CONFIG_FILENAME} but no weights (*.safetensors, *.bin or *.pth); "
            "refusing to return a randomly initialised model"
        )


def _hub_config(repo_id: str, cache_dir: str | None) -> dict:
    from huggingface_hub import hf_hub_download
    from open_clip.pretrained import download_pretrained_from_hf

    path = hf_hub_download(repo_id, filename=CONFIG_FILENAME, cache_dir=cache_dir)
    model_config = _read_config(Path(path).parent)
    try:  # the same lookup open_clip does, which only warns (and initialises randomly) when it fails
        download_pretrained_from_hf(repo_id, cache_dir=cache_dir)
    except FileNotFoundError as error:
        raise ModelLoadError(
            f"Hub repo '{repo_id}' has {CONFIG_FILENAME} but its open_clip weights could not be found: {error}"
        ) from error
    return model_config


def load_clip(
    name: str,
    pretrained: str | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | None = None,
) -> PixelCLIP:
    """Load a CLIP from any open_clip source and wrap it as a :class:`PixelCLIP`.

    Args:
        name: ``"ViT-B-32"``-style config name, ``"hf-hub:org/repo"``, ``"local-dir:/path"``, or a plain
            directory in open_clip Hub layout (``open_clip_config.json`` + ``open_clip_model.safetensors``). A
            folder or repo in transformers layout (``config.json`` with ``"model_type": "clip"``) gives a
            :class:`~clipclean.transformers_clip.TransformersCLIP`.
        pretrained: for config names only: an open_clip pretrained tag or a checkpoint file. ``None``
            gives a randomly initialised model (the tiny configs' normal use).
        device: where to put the model.
        cache_dir: Hugging Face cache directory (default: the ``HF_HOME`` cache).

    Returns:
        The model in eval mode.

    Raises:
        ModelLoadError: unknown name, missing files, or a Hub miss (offline or not found); the message
            says what was tried.
    """
    register_model_configs()
    from clipclean.transformers_clip import load_transformers_clip, transformers_source

    hf_source = transformers_source(name, cache_dir)
    if hf_source is not None:  # a transformers CLIPModel folder or Hub repo (config.json with model_type "clip")
        return load_transformers_clip(hf_source, device=device, cache_dir=cache_dir, name=name)
    directory = _directory_identifier(name)
    tried: list[str] = []
    try:
        if directory is not None:
            tried.append(f"local directory {directory}")
            if not directory.is_dir():
                raise ModelLoadError(f"directory not found: {directory}")
            model_config = _read_config(directory)
            _require_weights(directory)
            open_clip_name = f"local-dir:{directory}"
            pretrained = None
        elif name.startswith("hf-hub:"):
            repo_id = name[len("hf-hub:") :]
            offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
            tried.append(f"Hugging Face Hub repo '{repo_id}'" + (" (offline: local cache only)" if offline else ""))
            model_config = _hub_config(repo_id, cache_dir)
            open_clip_name = name
            pretrained = None
        else:
            tried.append(f"open_clip model config '{name}'")
            model_config = open_clip.get_model_config(name)
            if model_config is None and _looks_like_path(name):
                tried[-1] = f"local directory {name}"
                hub = f"; a Hugging Face Hub repo is written hf-hub:{name}" if _REPO_ID.match(name) else ""
                raise ModelLoadError(f"folder not found: {name} (a model folder holds {CONFIG_FILENAME}{hub})")
            if model_config is None:
                known = ", ".join(m for m in open_clip.list_models() if m.startswith("clipclean"))
                raise ModelLoadError(
                    f"unknown model name '{name}' (clipclean's own: {known}; see open_clip.list_models())"
                )
            if pretrained is not None:
                if os.path.isfile(pretrained):
                    tried.append(f"checkpoint file {pretrained}")
                elif open_clip.get_pretrained_cfg(name, pretrained):
                    tried.append(f"open_clip pretrained tag '{pretrained}'")
                else:
                    tags = open_clip.list_pretrained_tags_by_model(name)
                    raise ModelLoadError(
                        f"pretrained '{pretrained}' is neither a file nor a known tag of '{name}' (tags: {tags})"
                    )
            open_clip_name = name
        model, _, _ = open_clip.create_model_and_transforms(
            open_clip_name, pretrained=pretrained, device=device, cache_dir=cache_dir
        )
        tokenizer = open_clip.get_tokenizer(open_clip_name, cache_dir=cache_dir)
    except ModelLoadError as error:
        raise ModelLoadError(f"could not load CLIP '{name}': {error}. Tried: {'; '.join(tried)}") from error
    except Exception as error:  # open_clip / huggingface_hub raise many types; wrap them with context
        raise ModelLoadError(
            f"could not load CLIP '{name}': {type(error).__name__}: {error}. Tried: {'; '.join(tried)}"
        ) from error
    wrapped = PixelCLIP(model, tokenizer, model_config, name=name).to(device)
    wrapped.eval()
    return wrapped


def lookup_by_kind(registry: dict, model: nn.Module, what: str):
    """``registry[cls]`` for the first class ``cls`` of ``model``'s (unwrapped) class hierarchy in ``registry``: how
    clipclean picks the inverter or the defense objective for a CLIP or an image classifier."""
    pixel_model = unwrap(model, PixelModel)
    for model_class in type(pixel_model).__mro__:
        if model_class in registry:
            return registry[model_class]
    raise TypeError(f"no {what} is registered for {type(pixel_model).__name__}")


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
