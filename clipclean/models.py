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

import json
import logging
import os
import re
from importlib import resources
from pathlib import Path

import open_clip
import torch

from clipclean.pixel_model import (
    CONFIG_FILENAME,
    ModelLoadError,
    PixelCLIP,
    PixelModel,
    directory_identifier,
    lookup_by_kind,
    pixel_clip_from_state_dict,
    unwrap,
)
from clipclean.transformers_clip import load_transformers_clip, transformers_source

logger = logging.getLogger(__name__)

__all__ = [  # the pixel-space interface is defined in clipclean.pixel_model and re-exported here
    "CONFIG_FILENAME",
    "ModelLoadError",
    "PixelCLIP",
    "PixelModel",
    "load_clip",
    "lookup_by_kind",
    "pixel_clip_from_state_dict",
    "register_model_configs",
    "unwrap",
]

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth")  # what open_clip looks for in a local-dir folder
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # org/repo, as the Hugging Face Hub names repos
_TINY_CONFIG_DIR = Path(str(resources.files("clipclean") / "model_configs"))


def register_model_configs() -> list[str]:
    """Register clipclean's tiny model configs with open_clip (idempotent) and return their names."""
    names = sorted(p.stem for p in _TINY_CONFIG_DIR.glob("*.json"))
    if not all(name in open_clip.list_models() for name in names):
        open_clip.add_model_config(_TINY_CONFIG_DIR)
    return names


register_model_configs()  # on import, so that open_clip knows "clipclean-tiny" wherever clipclean loads models


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
    hf_source = transformers_source(name, cache_dir)
    if hf_source is not None:  # a transformers CLIPModel folder or Hub repo (config.json with model_type "clip")
        return load_transformers_clip(hf_source, device=device, cache_dir=cache_dir, name=name)
    directory = directory_identifier(name)
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
