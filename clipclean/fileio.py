"""Atomic file writes and JSON conversion: the one place every output of clipclean goes through."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(temporary_path)`` then rename the result onto ``path``: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        write(temporary)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp creates 0600 files; honour the umask instead
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return path


def to_jsonable(value: Any) -> Any:
    """Convert dataclasses, tensors, numpy values and paths (recursively) to plain JSON values."""
    if is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(asdict(value))
    if isinstance(value, dict):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # torch / numpy arrays and scalars
        return value.tolist()
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return None
    return value


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    text = json.dumps(to_jsonable(data), indent=2, sort_keys=False)
    return atomic_write(path, lambda temporary: Path(temporary).write_text(text + "\n", encoding="utf-8"))


def write_csv(path: str | Path, rows: list[dict], columns: Sequence[str]) -> Path:
    """Write ``rows`` (dicts keyed by ``columns``) as a CSV file with a header row, atomically."""

    def write(temporary: str) -> None:
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(columns))
            writer.writeheader()
            writer.writerows(rows)

    return atomic_write(path, write)


# ---- resumable state without pickle ----------------------------------------------------------------------------
STATE_TENSOR_KEY = "__tensor__"
STATE_TUPLE_KEY = "__tuple__"
STATE_ITEMS_KEY = "__items__"
_STATE_RESERVED = (STATE_TENSOR_KEY, STATE_TUPLE_KEY, STATE_ITEMS_KEY)


def _encode_state(value: Any, tensors: dict[str, Any]) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = value.detach().cpu().contiguous().clone()
        return {STATE_TENSOR_KEY: name}
    if isinstance(value, tuple):
        return {STATE_TUPLE_KEY: [_encode_state(item, tensors) for item in value]}
    if isinstance(value, list):
        return [_encode_state(item, tensors) for item in value]
    if isinstance(value, dict):
        if all(isinstance(key, str) and key not in _STATE_RESERVED for key in value):
            return {key: _encode_state(item, tensors) for key, item in value.items()}
        items = []
        for key, item in value.items():
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise TypeError(f"state keys must be str, int, float, bool or None, got {type(key).__name__}")
            items.append([key, _encode_state(item, tensors)])
        return {STATE_ITEMS_KEY: items}
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise TypeError(
        f"cannot save a {type(value).__name__} in resumable state: only tensors, numbers, strings, None, lists, "
        "tuples and dicts (no pickle)"
    )


def _decode_state(value: Any, tensors: dict[str, Any]) -> Any:
    if isinstance(value, list):
        return [_decode_state(item, tensors) for item in value]
    if not isinstance(value, dict):
        return value
    if STATE_TENSOR_KEY in value:
        return tensors[value[STATE_TENSOR_KEY]]
    if STATE_TUPLE_KEY in value:
        return tuple(_decode_state(item, tensors) for item in value[STATE_TUPLE_KEY])
    if STATE_ITEMS_KEY in value:
        return {key: _decode_state(item, tensors) for key, item in value[STATE_ITEMS_KEY]}
    return {key: _decode_state(item, tensors) for key, item in value.items()}


def save_state_tree(folder: str | Path, name: str, tree: Any) -> tuple[Path, Path]:
    """Save a nested state (dicts, lists, tuples, tensors, numbers, strings, None) without pickle: the tensors in
    ``folder/NAME.safetensors``, the structure in ``folder/NAME.json`` (both written atomically).

    Dict keys may be ints (an optimizer's state) and tuples stay tuples, so :func:`load_state_tree` returns a tree
    equal to ``tree`` (tensors on the CPU). Anything else (an arbitrary object) raises ``TypeError``: resumable
    state never needs code to read back.

    Example::

        >>> save_state_tree("ckpt", "defense", {"step": 3, "optimizer": optimizer.state_dict()})
        >>> optimizer.load_state_dict(load_state_tree("ckpt", "defense")["optimizer"])
    """
    from safetensors.torch import save_file

    tensors: dict[str, Any] = {}
    structure = _encode_state(tree, tensors)
    folder = Path(folder)
    tensor_path = atomic_write(folder / f"{name}.safetensors", lambda temporary: save_file(tensors, temporary))
    text = json.dumps({"format": "clipclean-state", "state": structure}, indent=1) + "\n"
    json_path = atomic_write(folder / f"{name}.json", lambda temporary: Path(temporary).write_text(text))
    return json_path, tensor_path


def load_state_tree(folder: str | Path, name: str) -> Any:
    """Read back :func:`save_state_tree` (JSON + safetensors; nothing is unpickled or imported)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    document = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
    if not isinstance(document, dict) or document.get("format") != "clipclean-state":
        raise ValueError(f"{folder / (name + '.json')} is not a clipclean state file")
    return _decode_state(document["state"], load_file(str(folder / f"{name}.safetensors")))
