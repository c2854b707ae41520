"""Row checking shared by every file-backed source: a bad row (missing or undecodable image, empty caption) raises a
:class:`~clipclean.data.pixels.DataError` naming its file and row, or is skipped with one warning."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipclean.data.pixels import DataError, ImageReference, image_missing, verify_image

logger = logging.getLogger(__name__)

IMAGE_COLUMN_CANDIDATES = ("image", "filepath", "path", "file_name", "filename", "image_path")
CAPTION_COLUMN_CANDIDATES = ("caption", "text", "title")


@dataclass
class Row:
    location: str  # "captions.csv row 3 (line 4)"
    image: ImageReference | None
    shown: str  # the image as the source wrote it, for messages
    caption: Any = None
    label: int | None = None
    index: int = -1  # position in the source (save_to_disk datasets)


class RowChecker:
    """Validates rows one by one, then raises on (or warns once about) the bad ones."""

    def __init__(self, source: str, skip_bad: bool, needs_caption: bool) -> None:
        self.source = source
        self.skip_bad = skip_bad
        self.needs_caption = needs_caption
        self.total = 0
        self.problems: list[str] = []

    def problem(self, row: Row) -> str | None:
        if row.image is None:
            return "empty image path"
        if self.needs_caption and (not isinstance(row.caption, str) or not row.caption.strip()):
            return f"empty caption for image '{row.shown}'"
        if image_missing(row.image):
            return f"image '{row.shown}' not found"
        if self.skip_bad:  # decoding every image is the price of skipping undecodable ones up front
            reason = verify_image(row.image)
            if reason is not None:
                return f"cannot decode image '{row.shown}' ({reason})"
        return None

    def reject(self, location: str, problem: str) -> None:
        """Count a row that is bad before it can even be made into a :class:`Row`."""
        self.total += 1
        self.problems.append(f"{location}: {problem}")

    def keep(self, row: Row) -> bool:
        problem = self.problem(row)
        if problem is not None:
            self.reject(row.location, problem)
            return False
        self.total += 1
        return True

    def finish(self, kept: int) -> None:
        if self.total == 0:
            raise DataError(f"{self.source}: the dataset is empty (no rows)")
        if self.problems and not self.skip_bad:
            more = len(self.problems) - 1
            suffix = f" (and {more} more bad row{'s' * (more > 1)}; skip_bad=True skips them)" if more else ""
            raise DataError(self.problems[0] + suffix)
        if self.problems:
            logger.warning(
                "%s: skipped %d bad row(s) of %d; first: %s",
                self.source,
                len(self.problems),
                self.total,
                self.problems[0],
            )
        if kept == 0:
            raise DataError(f"{self.source}: no usable rows left after skipping {len(self.problems)} bad row(s)")


def pick_column(
    columns: Sequence[str], requested: str | None, candidates: Sequence[str], where: str, kind: str
) -> str:
    """The column to use for ``kind`` ("image"/"caption"): ``requested`` or the first candidate present."""
    by_lower = {column.lower(): column for column in reversed(list(columns))}
    wanted = [requested] if requested is not None else list(candidates)
    for name in wanted:
        if name.lower() in by_lower:
            return by_lower[name.lower()]
    if requested is not None:
        raise DataError(f"{where}: no {kind} column '{requested}' (columns: {list(columns)})")
    raise DataError(
        f"{where}: no {kind} column found; looked for {list(candidates)} (case-insensitive) in columns "
        f"{list(columns)}; pass {kind}_column= to choose one"
    )


def resolve_path(value: str, base: Path) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else base / path)
