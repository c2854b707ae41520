"""Class names for class folders: the rule of ``docs/evaluation.md`` (ImageNet synset folders take OpenAI's names,
a ``folder<TAB>name`` file maps folders, plain names go to the folders in sorted order unless that would relabel
another folder)."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from clipclean.data.pixels import DataError

_SYNSET_PATTERN = re.compile(r"^n\d{8}$")


@functools.lru_cache(maxsize=1)
def imagenet_synset_names() -> dict[str, str]:
    """``{wnid: OpenAI class name}`` for the 1,000 ImageNet classes.

    The names are open_clip's ``IMAGENET_CLASSNAMES`` (OpenAI's, in ImageNet index order); the synset ids, which
    open_clip does not ship, are bundled in ``clipclean/resources/imagenet_synsets.txt`` (sorted, the same order).
    """
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    text = resources.files("clipclean").joinpath("resources", "imagenet_synsets.txt").read_text(encoding="utf-8")
    return dict(zip(text.split(), IMAGENET_CLASSNAMES, strict=True))


def _read_classnames_file(path: Path) -> list[tuple[int, str]]:
    """The non-blank lines of a class-names file as ``(line number, text)``; spaces trimmed, tabs kept."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the classnames file ({type(exc).__name__}: {exc})") from exc
    return [(number, line.strip(" \r\n")) for number, line in enumerate(lines, start=1) if line.strip()]


def _classnames_mapping(lines: Sequence[tuple[int, str]], folders: Sequence[str], where: str) -> dict[str, str] | None:
    """``{folder: name}`` from ``folder<TAB>name`` (or ``folder,name``) lines; ``None`` for a list of plain names.

    A TAB anywhere makes it a mapping file (every line then needs one); without TABs, the file is a mapping only
    when every line starts with a folder name and a comma (otherwise commas belong to the names).
    """
    folder_set = set(folders)
    if any("\t" in text for _, text in lines):
        separator = "\t"
    elif lines and all(text.partition(",")[1] and text.partition(",")[0].strip() in folder_set for _, text in lines):
        separator = ","
    else:
        return None
    mapping: dict[str, str] = {}
    for number, text in lines:
        folder, found, name = text.partition(separator)
        folder, name = folder.strip(), name.strip()
        if not found:
            raise DataError(f"{where} line {number}: no TAB in '{text}' (give every line as 'folder<TAB>name')")
        if folder not in folder_set:
            raise DataError(f"{where} line {number}: '{folder}' is not a class folder (folders: {list(folders)[:5]})")
        if folder in mapping:
            raise DataError(f"{where} line {number}: folder '{folder}' is named twice")
        mapping[folder] = name
    missing = [folder for folder in folders if folder not in mapping]
    if missing:
        raise DataError(f"{where}: no class name for folder(s) {missing[:5]}")
    return mapping


def _positional_classnames(
    names: Sequence[str], folders: Sequence[str], where: str, entries: Sequence[str]
) -> list[str]:
    """Plain names (``entries`` say where each came from, e.g. ``"line 3"``) given to ``folders`` (label order)."""
    if len(names) != len(folders):
        raise DataError(f"{where}: {len(names)} class names for {len(folders)} classes")
    if sorted(names) == sorted(folders):  # the folder names themselves, in any order: each folder keeps its own
        return list(folders)
    folder_set = set(folders)
    for name, folder, entry in zip(names, folders, entries):
        if name in folder_set and name != folder:
            raise DataError(
                f"{where} {entry}: '{name}' would name folder '{folder}' (plain names go to the folders in sorted "
                f"order), but '{name}' is another class folder; write one 'folder<TAB>name' line per class"
            )
    return list(names)


def _check_distinct(names: Sequence[str], folders: Sequence[str], where: str) -> None:
    """Refuse an empty name, or two classes whose names differ only in case or spacing (their prompts would tie)."""
    seen: dict[str, str] = {}
    for name, folder in zip(names, folders):
        if not name:
            raise DataError(f"{where}: empty class name for class '{folder}'")
        key = " ".join(name.lower().split())
        if key in seen:
            raise DataError(
                f"{where}: classes '{seen[key]}' and '{folder}' are both named '{name}' (their zero-shot prompts "
                "would tie); give every class a distinct name"
            )
        seen[key] = folder


def resolve_classnames(
    folders: Sequence[str], classnames: str | os.PathLike | Sequence[str] | None, source: str = ""
) -> list[str]:
    """Class names for class ``folders`` given in label (sorted) order: the rule of ``docs/evaluation.md``.

    * ``None``: ImageNet synset folders take OpenAI's names (as published, duplicates "missile" and "sunglasses"
      included), other folders their own names with ``_`` as spaces.
    * A file of ``folder<TAB>name`` (or ``folder,name``) lines: each folder its mapped name, in any line order.
    * A file of plain names, or a list: if the names are exactly the folder names (any order), each folder keeps its
      own name; otherwise the names go to the folders in label order, and a name equal to *another* folder's name
      is an error (it would silently relabel that class).

    Raises:
        DataError: a count mismatch, a name that would mislabel a folder, a bad mapping line, an empty name, or two
            classes with the same name (case and spacing ignored).
    """
    if classnames is None:
        synset_names = imagenet_synset_names()
        if all(_SYNSET_PATTERN.match(folder) and folder in synset_names for folder in folders):
            return [synset_names[folder] for folder in folders]
        names, where = [folder.replace("_", " ") for folder in folders], source or "class folders"
    elif isinstance(classnames, (str, os.PathLike)):
        where = str(classnames)
        lines = _read_classnames_file(Path(classnames).expanduser())
        mapping = _classnames_mapping(lines, folders, where)
        if mapping is not None:
            names = [mapping[folder] for folder in folders]
        else:
            names = _positional_classnames(
                [text for _, text in lines], folders, where, [f"line {number}" for number, _ in lines]
            )
    else:
        where = "classnames"
        listed = [str(name).strip() for name in classnames]
        names = _positional_classnames(listed, folders, where, [f"entry {index}" for index in range(len(listed))])
    _check_distinct(names, folders, where)
    return names
