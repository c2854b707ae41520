"""Table files: CSV / TSV in the CleanCLIP format and JSONL (an image-path column and a caption column; relative
paths resolve against the file's folder). Also what an imagefolder's ``metadata.jsonl``/``metadata.csv`` is read with
(:mod:`clipclean.data.imagefolder`)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from clipclean.data.dataset import ImageCaptionDataset
from clipclean.data.pixels import DataError
from clipclean.data.rows import (
    CAPTION_COLUMN_CANDIDATES,
    IMAGE_COLUMN_CANDIDATES,
    Row,
    RowChecker,
    pick_column,
    resolve_path,
)


def _read_table(path: Path) -> tuple[list[str], list[tuple[str, dict[str, Any] | None]]]:
    """``(columns, [(location, record or None if unparsable), ...])`` of a .csv, .tsv or .jsonl file."""
    records: list[tuple[str, dict[str, Any] | None]] = []
    try:
        if path.suffix.lower() == ".jsonl":
            columns: dict[str, None] = {}
            with path.open(encoding="utf-8-sig") as f:
                for line_number, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    location = f"{path} row {len(records) + 1} (line {line_number})"
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        record = None
                    if not isinstance(record, dict):
                        records.append((location, None))
                        continue
                    columns.update(dict.fromkeys(record))
                    records.append((location, record))
            return list(columns), records
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            header = list(reader.fieldnames or [])
            for row_number, record in enumerate(reader, start=1):
                records.append((f"{path} row {row_number} (line {reader.line_num})", record))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the file ({type(exc).__name__}: {exc})") from exc
    if not header:
        raise DataError(f"{path}: the dataset is empty (no header row)")
    return header, records


def load_table_pairs(
    path: Path,
    image_size: int | tuple[int, int],
    skip_bad: bool,
    image_column: str | None,
    caption_column: str | None,
) -> ImageCaptionDataset:
    columns, records = _read_table(path)
    if not records:
        raise DataError(f"{path}: the dataset is empty (no rows)")
    image_column = pick_column(columns, image_column, IMAGE_COLUMN_CANDIDATES, str(path), "image")
    caption_column = pick_column(columns, caption_column, CAPTION_COLUMN_CANDIDATES, str(path), "caption")
    checker = RowChecker(str(path), skip_bad, needs_caption=True)
    kept: list[Row] = []
    for location, record in records:
        if record is None:
            checker.reject(location, "not a JSON object")
            continue
        value = record.get(image_column)
        shown = "" if value is None else str(value).strip()
        caption = record.get(caption_column)
        row = Row(location, resolve_path(shown, path.parent) if shown else None, shown, caption)
        if checker.keep(row):
            kept.append(row)
    checker.finish(len(kept))
    return ImageCaptionDataset(
        [row.image for row in kept],
        [row.caption.strip() for row in kept],
        source=str(path),
        image_size=image_size,
        locations=[row.location for row in kept],
    )
