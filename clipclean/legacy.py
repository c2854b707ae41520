"""Convert the CLIP backdoor literature's checkpoints (CleanCLIP / BadCLIP code) to open_clip.

The CleanCLIP codebase (Bansal et al., ICCV 2023, arXiv 2303.03323) and the code built on it (BadCLIP, Liang et al.,
CVPR 2024) save ``torch.save({"epoch": ..., "name": ..., "state_dict": model.state_dict(), "optimizer": ...})``
where the model is OpenAI's CLIP implementation (RN50 or ViT-B/32), the keys carry a ``module.`` prefix when it was
trained with DistributedDataParallel, and some tensors may be float16. OpenAI's layout is open_clip's layout
(open_clip builds its ``CLIP`` module with the same parameter names), so conversion is: load safely, strip the
prefix, read the architecture off the tensor shapes, build the open_clip model with QuickGELU (OpenAI's activation)
and load the weights strictly. Known architectures get their open_clip config name (``RN50-quickgelu``,
``ViT-B-32-quickgelu``, ...); others keep the inferred config.

**Safety.** Files are read with ``torch.load(weights_only=True)`` only: tensors, numbers, strings and containers.
A checkpoint that needs code to be unpickled (a pickled module or optimizer class, a TorchScript archive such as
OpenAI's original ``ViT-B-32.pt``) is refused with :class:`LegacyCheckpointError` explaining why -- unpickling
runs arbitrary code. Attention heads are not stored in a state dict; OpenAI's convention (width / 64) is used.

Example::

    >>> from clipclean.legacy import convert_legacy_checkpoint
    >>> from clipclean.hub import save_pretrained
    >>> model = convert_legacy_checkpoint("cleanclip/epoch_64.pt")        # a PixelCLIP, open_clip inside
    >>> model.name
    'ViT-B-32-quickgelu'
    >>> save_pretrained(model, "out/cleanclip-vit-b-32", provenance={"converted_from": "cleanclip/epoch_64.pt"})
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import open_clip
import torch

from clipclean.errors import ClipcleanError
from clipclean.models import PixelCLIP, pixel_clip_from_state_dict, register_model_configs

logger = logging.getLogger(__name__)

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
"""Where training checkpoints keep the weights, in the order they are tried (the file itself may be the dict)."""
NON_PARAMETER_KEYS = ("input_resolution", "context_length", "vocab_size")
"""Scalars OpenAI's JIT-exported state dicts carry next to the weights."""
KNOWN_CONFIGS = ("RN50-quickgelu", "RN101-quickgelu", "RN50x4-quickgelu", "ViT-B-32-quickgelu", "ViT-B-16-quickgelu")
HEAD_WIDTH = 64  # OpenAI CLIP: heads = width // 64


class LegacyCheckpointError(ClipcleanError, ValueError):
    """A checkpoint that cannot be converted (unsafe to load, or not an OpenAI-layout CLIP); says why."""


def _count(state_dict: Mapping[str, torch.Tensor], pattern: str) -> int:
    regex = re.compile(pattern)
    return len({match.group(1) for key in state_dict if (match := regex.match(key))})


def infer_open_clip_config(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """The open_clip ``model_cfg`` of an OpenAI-layout CLIP state dict (ViT or ModifiedResNet image tower).

    Raises:
        LegacyCheckpointError: keys of an OpenAI-layout CLIP are missing.
    """
    required = ("text_projection", "positional_embedding", "token_embedding.weight", "ln_final.weight")
    missing = [key for key in required if key not in state_dict]
    if missing:
        sample = sorted(state_dict)[:5]
        raise LegacyCheckpointError(
            f"not an OpenAI-layout CLIP state dict: missing {missing} (first keys: {sample}); CleanCLIP/BadCLIP "
            "checkpoints hold OpenAI CLIP's parameter names, optionally prefixed with 'module.'"
        )
    if "visual.proj" in state_dict:
        conv = state_dict["visual.conv1.weight"]
        width, patch = int(conv.shape[0]), int(conv.shape[-1])
        grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        vision_cfg = {
            "image_size": patch * grid,
            "layers": _count(state_dict, r"visual\.transformer\.resblocks\.(\d+)\."),
            "width": width,
            "patch_size": patch,
        }
        if width % HEAD_WIDTH:
            vision_cfg["head_width"] = width  # tiny widths: one head
    elif "visual.layer1.0.conv1.weight" in state_dict:
        positions = state_dict["visual.attnpool.positional_embedding"].shape[0]
        output_width = round((positions - 1) ** 0.5)
        vision_cfg = {
            "image_size": output_width * 32,
            "layers": [_count(state_dict, rf"visual\.layer{b}\.(\d+)\.") for b in (1, 2, 3, 4)],
            "width": int(state_dict["visual.layer1.0.conv1.weight"].shape[0]),
            "patch_size": None,
        }
    else:
        raise LegacyCheckpointError("the image tower is neither a ViT (visual.proj) nor a ResNet (visual.layer1)")
    text_width = int(state_dict["ln_final.weight"].shape[0])
    return {
        "embed_dim": int(state_dict["text_projection"].shape[1]),
        "quick_gelu": True,
        "vision_cfg": vision_cfg,
        "text_cfg": {
            "context_length": int(state_dict["positional_embedding"].shape[0]),
            "vocab_size": int(state_dict["token_embedding.weight"].shape[0]),
            "width": text_width,
            "heads": max(1, text_width // HEAD_WIDTH),
            "layers": _count(state_dict, r"transformer\.resblocks\.(\d+)\."),
        },
    }


def _canonical(config: dict) -> dict:
    """A config with open_clip's defaults filled in, for comparing an inferred config with a registered one."""
    vision = {"head_width": HEAD_WIDTH, "mlp_ratio": 4.0, **config["vision_cfg"]}
    vision["layers"] = list(vision["layers"]) if isinstance(vision["layers"], (list, tuple)) else vision["layers"]
    text = {"mlp_ratio": 4.0, **config["text_cfg"]}
    return {"embed_dim": config["embed_dim"], "vision_cfg": vision, "text_cfg": text}


def known_config_name(config: dict) -> str | None:
    """The open_clip config name (``RN50-quickgelu``, ``ViT-B-32-quickgelu``...) whose architecture is ``config``."""
    register_model_configs()
    wanted = _canonical(config)
    for name in KNOWN_CONFIGS:
        candidate = open_clip.get_model_config(name)
        if candidate is not None and _canonical(candidate) == wanted:
            return name
    return None


def _explain_unsafe(path: Path, error: Exception) -> LegacyCheckpointError:
    torchscript = False
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            torchscript = any("/code/" in name or name.endswith("constants.pkl") for name in archive.namelist())
    if torchscript:
        reason = (
            "it is a TorchScript archive (compiled code, e.g. OpenAI's original release). Load OpenAI's weights with "
            "open_clip instead (load_clip('ViT-B-32-quickgelu', pretrained='openai'))"
        )
    else:
        reason = (
            "it stores Python objects (classes or functions) that can only be rebuilt by running code from the file, "
            "and unpickling untrusted files runs arbitrary code. In a trusted environment, re-save only the weights: "
            "torch.save({'state_dict': checkpoint['state_dict']}, 'weights.pt')"
        )
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    detail = f"it needs {found.group(1)}" if found else " ".join(str(error).split())[:200]
    return LegacyCheckpointError(f"refusing to load {path} with torch.load(weights_only=True): {reason} ({detail})")


def _looks_like_torch_file(path: Path) -> bool:
    """A zip archive (``torch.save`` since 1.6) or a pickle (protocol 2+ starts with ``0x80``; the pre-1.6 format)."""
    with path.open("rb") as handle:
        head = handle.read(4)
    return zipfile.is_zipfile(path) or head[:1] == b"\x80"


def _needs_code(error: Exception) -> bool:
    """Whether ``weights_only`` refused a file because it names a class or function (a ``GLOBAL`` to import), not
    because it is damaged (``Unsupported operand``: bytes that are no valid pickle)."""
    return "global" in str(error).lower()


def _damaged(path: Path, error: Exception) -> LegacyCheckpointError:
    found = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(error))  # torch's long text, the reason in it
    reason = found.group(1) if found else " ".join(str(error).split())[:200] or type(error).__name__
    return LegacyCheckpointError(f"cannot read {path}: damaged, truncated or not a PyTorch checkpoint ({reason})")


def load_legacy_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The OpenAI-layout weights of a CleanCLIP/BadCLIP-style checkpoint, read with ``weights_only=True``.

    Accepts a dict holding ``state_dict`` (or ``model_state_dict`` / ``model``) or a bare state dict; strips
    ``module.`` prefixes (DistributedDataParallel) and OpenAI's non-parameter scalars; converts to float32.

    Raises:
        LegacyCheckpointError: the file needs code to unpickle, or holds no tensor state dict.
        FileNotFoundError: no such file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not _looks_like_torch_file(path):
        raise LegacyCheckpointError(
            f"{path} is not a PyTorch checkpoint, or a truncated one (neither a complete zip archive, torch.save's "
            "format, nor a pickle): check the path and the copy; clipclean convert reads CleanCLIP/BadCLIP epoch_*.pt"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if _needs_code(error):
            raise _explain_unsafe(path, error) from error
        raise _damaged(path, error) from error
    except RuntimeError as error:
        if "TorchScript" in str(error) or "constants.pkl" in str(error):
            raise _explain_unsafe(path, error) from error
        raise _damaged(path, error) from error
    except (EOFError, KeyError, ValueError, OSError, AttributeError, IndexError) as error:  # torch's format readers
        raise _damaged(path, error) from error
    if not isinstance(checkpoint, Mapping):
        raise LegacyCheckpointError(f"{path} holds a {type(checkpoint).__name__}, not a dict of weights")
    state_dict = next((checkpoint[key] for key in STATE_DICT_KEYS if isinstance(checkpoint.get(key), Mapping)), None)
    if state_dict is None:
        state_dict = checkpoint
    tensors = {}
    for key, value in state_dict.items():
        key = key[len("module.") :] if key.startswith("module.") else key
        if key in NON_PARAMETER_KEYS:
            continue
        if not isinstance(value, torch.Tensor):
            raise LegacyCheckpointError(
                f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor "
                f"(top-level keys: {sorted(checkpoint)})"
            )
        tensors[key] = value.float() if value.is_floating_point() else value
    return tensors


def convert_legacy_checkpoint(path: str | Path) -> PixelCLIP:
    """Load a CleanCLIP/BadCLIP checkpoint as an open_clip CLIP (QuickGELU) wrapped in a :class:`PixelCLIP`.

    The model's ``name`` is the matching open_clip config (``"RN50-quickgelu"``, ``"ViT-B-32-quickgelu"``) when the
    architecture is a known one, else ``"legacy:<file name>"``; its ``model_config`` is what
    :func:`clipclean.hub.save_pretrained` writes, so the saved folder loads with plain open_clip.

    Raises:
        LegacyCheckpointError: unsafe or unrecognised checkpoint; the message says why.
    """
    state_dict = load_legacy_state_dict(path)
    config = infer_open_clip_config(state_dict)
    name = known_config_name(config)
    if name is not None:
        config = open_clip.get_model_config(name)
    try:
        model = pixel_clip_from_state_dict(config, state_dict, name=name or f"legacy:{Path(path).name}")
    except RuntimeError as error:  # load_state_dict(strict=True): missing/unexpected keys or shapes
        raise LegacyCheckpointError(f"{path}: the weights do not fit the inferred architecture: {error}") from error
    logger.info("converted %s to open_clip (%s)", path, model.name)
    return model
