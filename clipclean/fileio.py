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
