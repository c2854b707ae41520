"""Hugging Face ``transformers`` CLIP models behind clipclean's pixel-space model interface.

A folder (or Hub repo) written by ``transformers.CLIPModel.save_pretrained`` -- ``config.json`` with
``"model_type": "clip"``, ``model.safetensors``, the tokenizer files and ``preprocessor_config.json`` -- is
recognised by :func:`clipclean.models.load_clip` and loaded as a :class:`TransformersCLIP`: a
:class:`~clipclean.models.PixelCLIP` whose :meth:`encode_image` takes **un-normalised [0, 1] pixels**
``(B, 3, H, W)`` and applies the processor's mean/std itself, whose :meth:`encode_text` takes captions or token
ids, and whose ``model`` exposes the open_clip-style surface the inverter, the defenses and the evaluation use
(``encode_image``, ``encode_text``, ``visual`` -- the image tower's parameters --, ``logit_scale``). So blind
inversion, unlearning (``recipes/clean_clip.py --model <folder>``) and evaluation run on it unchanged.

The cleaned model is saved back in transformers format (:meth:`TransformersCLIP.save_transformers`, used by
:func:`clipclean.hub.save_pretrained`), or converted to open_clip (:meth:`TransformersCLIP.to_open_clip`; the two
architectures compute the same function, weights are re-arranged exactly, see :func:`open_clip_state_dict`).

Recognition rule (documented in ``docs/ecosystem.md``): a directory, or a ``hf-hub:org/repo`` name, that has no
``open_clip_config.json`` but a ``config.json`` whose ``model_type`` is ``"clip"``. open_clip's layout wins when
both are present. Nothing is executed from the folder (no ``trust_remote_code``); weights come from safetensors
(or a ``pytorch_model.bin`` that transformers reads with ``torch.load(weights_only=True)``).

Example::

    >>> from clipclean.models import load_clip
    >>> model = load_clip("path/to/clip-vit-base-patch32")     # a transformers folder, or "hf-hub:openai/..."
    >>> model.encode_image(torch.rand(2, 3, 224, 224)).shape   # [0, 1] pixels in, L2-normalised out
    torch.Size([2, 512])
    >>> model.save_transformers("out/cleaned")                  # CLIPModel.from_pretrained("out/cleaned") loads it
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from clipclean.pixel_model import (
    CONFIG_FILENAME,
    ModelLoadError,
    PixelCLIP,
    PixelModel,
    directory_identifier,
    pixel_clip_from_state_dict,
)

logger = logging.getLogger(__name__)

TRANSFORMERS_CONFIG_FILENAME = "config.json"
TRANSFORMERS_MODEL_TYPE = "clip"
_PROBE_TEXT = "a photo of a dog"


def _read_model_type(config_path: str | os.PathLike) -> str | None:
    try:
        with open(config_path, encoding="utf-8") as f:
            return json.load(f).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def transformers_source(name: str, cache_dir: str | None = None) -> str | None:
    """What ``transformers`` should load for ``name`` (a folder or a Hub repo id), or ``None`` when ``name`` is not a
    transformers CLIP (open_clip layout, a config name, a missing folder...).

    A directory (plain path or ``local-dir:``) or a ``hf-hub:`` repo counts when it has no ``open_clip_config.json``
    and its ``config.json`` says ``"model_type": "clip"``. Hub repos are looked up in the local cache only when
    ``HF_HUB_OFFLINE=1``.
    """
    directory = directory_identifier(name)
    if directory is not None:
        if not directory.is_dir() or (directory / CONFIG_FILENAME).is_file():
            return None
        config = directory / TRANSFORMERS_CONFIG_FILENAME
        return str(directory) if _read_model_type(config) == TRANSFORMERS_MODEL_TYPE else None
    if not name.startswith("hf-hub:"):
        return None
    from huggingface_hub import hf_hub_download

    repo_id = name[len("hf-hub:") :]
    try:
        hf_hub_download(repo_id, filename=CONFIG_FILENAME, cache_dir=cache_dir)
        return None  # open_clip layout: open_clip's loader handles it
    except Exception:  # not found, an offline cache miss, no such repo: try the transformers layout
        pass
    try:
        config = hf_hub_download(repo_id, filename=TRANSFORMERS_CONFIG_FILENAME, cache_dir=cache_dir)
    except Exception:  # neither layout: open_clip's loader reports the miss with its context
        return None
    return repo_id if _read_model_type(config) == TRANSFORMERS_MODEL_TYPE else None


class TransformersTokenizer:
    """``list[str] -> LongTensor (N, context_length)``: a transformers tokenizer padded/truncated the CLIP way.

    Padding uses the tokenizer's pad token (``<|endoftext|>`` for CLIP); the text tower pools at the first
    end-of-text token and attends causally, so padding never changes an embedding. Picklable (DataLoader workers).
    """

    def __init__(self, tokenizer, context_length: int) -> None:
        self.tokenizer = tokenizer
        self.context_length = int(context_length)

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        encoded = self.tokenizer(
            texts, padding="max_length", truncation=True, max_length=self.context_length, return_tensors="pt"
        )
        return encoded["input_ids"]


def check_tokenizer(tokenizer, vocab_size: int, source: str) -> None:
    """Raise :class:`ModelLoadError` on a tokenizer that cannot be the model's.

    ``CLIPTokenizer.from_pretrained`` silently returns a 2-token tokenizer (only ``<|startoftext|>`` and
    ``<|endoftext|>``) when the vocabulary files are missing, e.g. from an incomplete offline cache: every word then
    maps to one id and the text tower sees the same caption whatever the text. Checked: the tokenizer covers at least
    half of the text embedding table, a probe caption gives ordinary (non-special) ids, and every id fits the table.
    """
    size = len(tokenizer)
    ids = tokenizer([_PROBE_TEXT])["input_ids"][0]
    special = set(tokenizer.all_special_ids)
    ordinary = [i for i in ids if i not in special]
    hint = (
        "its vocabulary files (tokenizer.json, or vocab.json + merges.txt) are probably missing from the folder or "
        "the offline Hub cache; copy them next to config.json"
    )
    if size < max(3, vocab_size // 2) or not ordinary:
        raise ModelLoadError(
            f"the tokenizer loaded from {source} is broken: {size} tokens for a text tower with {vocab_size} token "
            f"embeddings, and {_PROBE_TEXT!r} tokenizes to {ids}; {hint}"
        )
    if max(ids) >= vocab_size:
        raise ModelLoadError(
            f"the tokenizer loaded from {source} produces id {max(ids)} but the text tower has only {vocab_size} "
            "token embeddings: tokenizer and model do not belong together"
        )


class CLIPModelTowers(nn.Module):
    """The open_clip-style surface of a ``transformers.CLIPModel`` (what :class:`PixelCLIP` calls ``model``).

    Args:
        clip: a ``transformers.CLIPModel``.

    ``encode_image`` takes *normalised* pixel values ``(B, 3, H, W)`` (the wrapper normalises), ``encode_text`` token
    ids ``(N, L)``; both return ``(·, projection_dim)`` features, L2-normalised when ``normalize``. ``visual`` is the
    image tower (vision transformer + projection), ``logit_scale`` the log-temperature parameter.
    """

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip

    @property
    def visual(self) -> nn.ModuleDict:
        return nn.ModuleDict(
            {"vision_model": self.clip.vision_model, "visual_projection": self.clip.visual_projection}
        )

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.clip.logit_scale

    def encode_image(self, pixel_values: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        pooled = self.clip.vision_model(pixel_values=pixel_values).pooler_output
        features = self.clip.visual_projection(pooled)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, input_ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        pooled = self.clip.text_model(input_ids=input_ids).pooler_output
        features = self.clip.text_projection(pooled)
        return F.normalize(features, dim=-1) if normalize else features


class TransformersCLIP(PixelCLIP):
    """A ``transformers.CLIPModel`` that takes [0, 1] pixels: the :class:`PixelCLIP` interface.

    Args:
        clip: the ``transformers.CLIPModel``.
        tokenizer: its transformers tokenizer (checked with :func:`check_tokenizer`).
        image_processor: its ``CLIPImageProcessor`` (mean/std; saved with the model), or ``None`` for OpenAI's
            mean/std.
        name: where the model was loaded from (provenance only).

    Attributes:
        image_size: ``(H, W)`` of the vision config; other sizes are bilinearly resized.
        model_config: the equivalent open_clip ``model_cfg`` (:func:`open_clip_model_config`), or ``None`` when the
            architecture has no open_clip counterpart.
    """

    def __init__(self, clip: nn.Module, tokenizer, image_processor=None, name: str = "") -> None:
        vision = clip.config.vision_config
        mean = getattr(image_processor, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
        std = getattr(image_processor, "image_std", None) or open_clip.OPENAI_DATASET_STD
        PixelModel.__init__(self, int(vision.image_size), list(mean), list(std))
        text = clip.config.text_config
        check_tokenizer(tokenizer, int(text.vocab_size), name or "memory")
        self.model = CLIPModelTowers(clip)
        self.hf_tokenizer = tokenizer
        self.image_processor = image_processor
        self.tokenizer = TransformersTokenizer(tokenizer, int(text.max_position_embeddings))
        self.name = name
        try:
            self.model_config = open_clip_model_config(clip.config)
        except ValueError as error:
            logger.info("%s has no open_clip counterpart: %s", name or "the model", error)
            self.model_config = None

    @property
    def clip(self) -> nn.Module:
        """The wrapped ``transformers.CLIPModel``."""
        return self.model.clip

    @property
    def embed_dim(self) -> int:
        return int(self.clip.config.projection_dim)

    @property
    def context_length(self) -> int:
        return int(self.clip.config.text_config.max_position_embeddings)

    def save_transformers(self, directory: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` + tokenizer + processor files (transformers' own
        ``save_pretrained``; ``CLIPModel.from_pretrained(directory)`` loads it). Returns the folder."""
        directory = Path(directory)
        self.clip.save_pretrained(directory, safe_serialization=True)
        self.hf_tokenizer.save_pretrained(directory)
        if self.image_processor is not None:
            self.image_processor.save_pretrained(directory)
        return directory

    def to_open_clip(self) -> PixelCLIP:
        """The same network as an open_clip ``CLIP`` in a :class:`PixelCLIP` (equal embeddings up to float rounding).

        The tokenizer stays this model's transformers tokenizer in memory. A folder saved from it in open_clip
        layout is read by open_clip with open_clip's tokenizer (OpenAI's BPE vocabulary), which is right for CLIPs
        trained with that vocabulary (OpenAI, LAION, ...); a custom vocabulary would need ``hf_tokenizer_name``.

        Raises:
            ValueError: the architecture has no open_clip counterpart (see :func:`open_clip_model_config`).
        """
        model_config = open_clip_model_config(self.clip.config)
        state_dict = open_clip_state_dict(self.clip.state_dict(), model_config)
        converted = pixel_clip_from_state_dict(
            model_config, state_dict, name=self.name, mean=self.image_mean.flatten(), std=self.image_std.flatten()
        )
        converted.tokenizer = self.tokenizer
        return converted.to(self.device)


def open_clip_model_config(config) -> dict:
    """The open_clip ``model_cfg`` of a ``transformers.CLIPConfig`` (a ViT CLIP with matching activations).

    Raises:
        ValueError: different activations in the two towers, an activation other than ``quick_gelu``/``gelu``, or
            a layer-norm epsilon other than open_clip's 1e-5.
    """
    vision, text = config.vision_config, config.text_config
    activations = {vision.hidden_act, text.hidden_act}
    if len(activations) != 1 or not activations <= {"quick_gelu", "gelu"}:
        raise ValueError(f"open_clip needs one activation (quick_gelu or gelu) in both towers, got {activations}")
    if {vision.layer_norm_eps, text.layer_norm_eps} != {1e-5}:
        raise ValueError("open_clip's layer norms use eps 1e-5")
    if vision.hidden_size % vision.num_attention_heads:
        raise ValueError("vision width is not a multiple of its heads")
    return {
        "embed_dim": int(config.projection_dim),
        "quick_gelu": vision.hidden_act == "quick_gelu",
        "vision_cfg": {
            "image_size": int(vision.image_size),
            "layers": int(vision.num_hidden_layers),
            "width": int(vision.hidden_size),
            "head_width": int(vision.hidden_size // vision.num_attention_heads),
            "mlp_ratio": vision.intermediate_size / vision.hidden_size,
            "patch_size": int(vision.patch_size),
        },
        "text_cfg": {
            "context_length": int(text.max_position_embeddings),
            "vocab_size": int(text.vocab_size),
            "width": int(text.hidden_size),
            "heads": int(text.num_attention_heads),
            "layers": int(text.num_hidden_layers),
            "mlp_ratio": text.intermediate_size / text.hidden_size,
        },
    }


def _encoder_layers(source: dict[str, torch.Tensor], prefix: str, target: str, layers: int) -> dict[str, torch.Tensor]:
    """transformers ``CLIPEncoderLayer`` weights -> open_clip ``ResidualAttentionBlock`` weights."""
    converted = {}
    for i in range(layers):
        hf, oc = f"{prefix}.encoder.layers.{i}", f"{target}.resblocks.{i}"
        for kind in ("weight", "bias"):
            converted[f"{oc}.attn.in_proj_{kind}"] = torch.cat(
                [source[f"{hf}.self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")]
            )
            converted[f"{oc}.attn.out_proj.{kind}"] = source[f"{hf}.self_attn.out_proj.{kind}"]
            converted[f"{oc}.ln_1.{kind}"] = source[f"{hf}.layer_norm1.{kind}"]
            converted[f"{oc}.ln_2.{kind}"] = source[f"{hf}.layer_norm2.{kind}"]
            converted[f"{oc}.mlp.c_fc.{kind}"] = source[f"{hf}.mlp.fc1.{kind}"]
            converted[f"{oc}.mlp.c_proj.{kind}"] = source[f"{hf}.mlp.fc2.{kind}"]
    return converted


def open_clip_state_dict(source: dict[str, torch.Tensor], model_config: dict) -> dict[str, torch.Tensor]:
    """Re-arrange a ``transformers.CLIPModel`` state dict into open_clip ``CLIP`` keys (an exact copy of the values:
    q/k/v projections concatenated into ``in_proj``, projection matrices transposed)."""
    vision, text = "vision_model", "text_model"
    state = {
        "visual.class_embedding": source[f"{vision}.embeddings.class_embedding"],
        "visual.conv1.weight": source[f"{vision}.embeddings.patch_embedding.weight"],
        "visual.positional_embedding": source[f"{vision}.embeddings.position_embedding.weight"],
        "visual.proj": source["visual_projection.weight"].t(),
        "token_embedding.weight": source[f"{text}.embeddings.token_embedding.weight"],
        "positional_embedding": source[f"{text}.embeddings.position_embedding.weight"],
        "text_projection": source["text_projection.weight"].t(),
        "logit_scale": source["logit_scale"],
    }
    for kind in ("weight", "bias"):
        state[f"visual.ln_pre.{kind}"] = source[f"{vision}.pre_layrnorm.{kind}"]
        state[f"visual.ln_post.{kind}"] = source[f"{vision}.post_layernorm.{kind}"]
        state[f"ln_final.{kind}"] = source[f"{text}.final_layer_norm.{kind}"]
    state.update(_encoder_layers(source, vision, "visual.transformer", model_config["vision_cfg"]["layers"]))
    state.update(_encoder_layers(source, text, "transformer", model_config["text_cfg"]["layers"]))
    return {key: value.detach().clone().contiguous() for key, value in state.items()}


def load_transformers_clip(
    source: str, device: str | torch.device = "cpu", cache_dir: str | None = None, name: str | None = None
) -> TransformersCLIP:
    """Load a ``transformers.CLIPModel`` + tokenizer + image processor from a folder or a Hub repo id.

    Args:
        source: a folder written by ``save_pretrained`` or a Hub repo id (``HF_HUB_OFFLINE=1``: the local cache).
        device: where to put the model.
        cache_dir: Hugging Face cache directory.
        name: the identifier to record (default ``source``).

    Raises:
        ModelLoadError: missing files, or a broken tokenizer (see :func:`check_tokenizer`).
    """
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    label = name or source
    try:
        clip = CLIPModel.from_pretrained(source, cache_dir=cache_dir)
        tokenizer = AutoTokenizer.from_pretrained(source, cache_dir=cache_dir)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"could not load the transformers CLIP '{label}': {error}") from error
    try:
        image_processor = CLIPImageProcessor.from_pretrained(source, cache_dir=cache_dir)
    except OSError:
        logger.warning("%s has no preprocessor_config.json: using OpenAI CLIP's mean/std", label)
        image_processor = None
    model = TransformersCLIP(clip, tokenizer, image_processor, name=label).to(device)
    model.eval()
    return model
