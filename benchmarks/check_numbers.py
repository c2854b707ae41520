"""Check the benchmark numbers quoted in the docs against the committed files they come from.

Numbers typed by hand disagree with their source sooner or later. A quoted table names its source in an HTML comment
on a line of its own just above it (blank lines between are allowed), and every number of the table is then checked:

    <!-- source: benchmarks/results/results.csv -->
    <!-- source: benchmarks/results/mechanisms.csv; rename: no unit reset=ablation_no_reset; earlier=old -->

How a table is matched, with no per-table column map: a column whose every cell equals a text value of one source
column (``badnet``, ``bibau``; after ``rename``) is a *key*, and so is a column headed ``seed`` when the source has
one (``NUMERIC_KEYS``); a column header naming such a value (``BadNet: 60
steps``) keys that column (a pivot). Each row's keys select its source rows; each number in every other cell must
equal, at the precision shown, a value of those rows (as is, or x100 for a percentage), and the same source column
(and, when a cell draws on several source rows, the same one of them) in every row of the table. A number that
disagrees is reported with what the source holds. ``benchmarks/results/NAME.md`` files are generated from the CSV of
the same name (``table.md`` from ``results.csv``) and checked without a comment.

A paragraph can name sources too (``<!-- source: A.csv, B.csv -->`` above it): each of its percentages and decimal
numbers must be a value of one of them at the precision shown (a weaker check: any column). A table or paragraph whose
numbers no committed file holds is history: mark it ``<!-- history: DATE, commit, command -->`` above it, or date it
in its text. A table of aggregates that a script computed from a committed file (counts, rates, intervals, ROC-AUC)
is marked ``<!-- derived: FILE, by SCRIPT -->``: not checked cell by cell (the script is tested), not unsourced.
A block whose numbers are not measurements at all (defaults, sizes, definitions, arithmetic on them) says so with
``<!-- settings -->``; a measured number must not sit in such a block. Everything else with measured-looking numbers
(a decimal point or a percent sign) is listed as unsourced.

    python benchmarks/check_numbers.py              # exit 1 on a number that disagrees with its source
    python benchmarks/check_numbers.py --unsourced  # also list the unsourced tables and paragraphs
    python benchmarks/check_numbers.py --strict     # exit 1 on an unsourced, undated number as well
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "docs/*.md", "benchmarks/*.md", "benchmarks/results/*.md")
GENERATED_FROM = {"table": "results"}  # benchmarks/results/<md stem> -> <csv stem> when they differ
SOURCE = re.compile(r"<!--\s*source:\s*(?P<body>.*?)\s*-->")
HISTORY = re.compile(r"<!--\s*history:.*?-->")
DERIVED = re.compile(r"<!--\s*derived:.*?-->")
SETTINGS = re.compile(r"<!--\s*settings\s*-->")
DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")
NUMBER = re.compile(r"(?<![\w.])(?:[-−](?=\d))?\d[\d,]*(?:\.\d+)?(?P<percent>\s?%)?")
SCALES = (1, 100)
# numeric source columns that identify a run, not measure it: a table column so headed is a key
NUMERIC_KEYS = ("seed",)


@dataclass
class Block:
    """A table or a paragraph of a markdown file, with the comment lines just above it."""

    path: Path
    line: int
    lines: list[str]
    comments: list[str] = field(default_factory=list)

    @property
    def is_table(self) -> bool:
        return self.lines[0].startswith("|")

    def where(self, offset: int = 0) -> str:
        return f"{self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path}:{self.line + offset}"


@dataclass
class Report:
    cells_checked: int = 0
    tables_checked: int = 0
    paragraphs_checked: int = 0
    mismatches: list[str] = field(default_factory=list)
    unsourced: list[str] = field(default_factory=list)
    history: int = 0
    settings: int = 0


def numbers(text: str) -> list[tuple[float, int, bool]]:
    """``(value, decimals shown, is a percentage)`` of every number in ``text`` (``1,404`` is 1404)."""
    found = []
    for match in NUMBER.finditer(text.replace("−", "-")):
        token = match.group(0).rstrip("% ").replace(",", "")
        decimals = len(token.split(".")[1]) if "." in token else 0
        found.append((float(token), decimals, bool(match["percent"])))
    return found


NOT_MEASURED = re.compile(
    r"`[^`]*`"  # code: flags, defaults, file names
    r"|\]\([^)]*\)"  # link targets
    r"|arXiv[\s:]*\d{4}\.\d{4,5}"  # paper ids
    r"|\d+\.\d+\.\d+"  # versions
    r"|[<>]=?\s*\d[\d.]*"  # thresholds and requirements (>= 2.6, <= 2%)
)


def measured_numbers(text: str) -> list[tuple[float, int, bool]]:
    """The numbers that look measured: a decimal point or a percent sign, outside code, links, paper ids, versions
    and comparisons (``60 steps``, ``seed 1``, ``--lr 2e-3``, ``torch >= 2.6`` do not)."""
    return [number for number in numbers(NOT_MEASURED.sub(" ", text)) if number[1] > 0 or number[2]]


def shows(value: float, shown: float, decimals: int) -> bool:
    """Whether ``value`` printed with ``decimals`` decimals reads ``shown`` (either rounding of a tie)."""
    return abs(value - shown) <= 0.5 * 10**-decimals + 1e-9


def read_source(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _float(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _clean(cell: str) -> str:
    return re.sub(r"[*`]", "", cell).strip()


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def split_blocks(path: Path) -> list[Block]:
    """Tables and paragraphs of ``path`` outside code fences, each with the HTML comments above it."""
    blocks, comments, current, fenced = [], [], None, False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.startswith("```"):
            fenced, current = not fenced, None
            continue
        if fenced:
            continue
        stripped = line.strip()
        if stripped.startswith("<!--"):
            comments.append(stripped)
            current = None
            continue
        if not stripped or stripped.startswith("#"):
            current = None
            if stripped.startswith("#"):
                comments = []
            continue
        kind = stripped.startswith("|")
        if current is None or current.is_table != kind:
            current = Block(path, number, [], comments)
            blocks.append(current)
            comments = []
        current.lines.append(stripped)
    return blocks


def _sources(block: Block) -> tuple[list[Path], dict[str, str]]:
    for comment in block.comments:
        match = SOURCE.search(comment)
        if match:  # "FILE[, FILE...][; rename: SHOWN=VALUE[; SHOWN=VALUE...]]"
            files, *pairs = match["body"].split(";")
            rename = {}
            for pair in pairs:
                shown, _, value = pair.strip().removeprefix("rename:").partition("=")
                rename[shown.strip().lower()] = value.strip().lower()
            return [ROOT / name.strip() for name in files.split(",")], rename
    results = ROOT / "benchmarks" / "results"
    # a generated table: the CSV it was written from (a derived one holds aggregates of it)
    derived = any(DERIVED.search(comment) for comment in block.comments)
    if block.is_table and block.path.parent == results and not derived:
        generated = results / f"{GENERATED_FROM.get(block.path.stem, block.path.stem)}.csv"
        if generated.is_file():
            return [generated], {}
    return [], {}


def _resolve_keys(
    possible: dict[int, set[str]], body: list[list[str]], rows: list[dict[str, str]], rename: dict[str, str]
) -> dict[int, str]:
    """One source column per key column of a table. Where several source columns hold every value a table column
    shows (a "named" column whose classes also appear as another column's values), the one that agrees, row by row,
    with the source rows picked by the unambiguous keys wins; a tie goes to the first by name."""
    keys = {index: next(iter(common)) for index, common in possible.items() if len(common) == 1}

    def shown(cells: list[str], index: int) -> str:
        text = _clean(cells[index]).lower() if index < len(cells) else ""
        return rename.get(text, text)

    ambiguous = [index for index in possible if index not in keys]
    if not ambiguous:
        return keys
    matched = []  # each table row's source rows, by the unambiguous keys
    for cells in body:
        constraint = {keys[i]: shown(cells, i) for i in keys if shown(cells, i) not in ("", "-")}
        matched.append([row for row in rows if all(row[c].strip().lower() == v for c, v in constraint.items())])
    for index in ambiguous:

        def agreement(column: str, index: int = index) -> int:
            pairs = [(shown(cells, index), found) for cells, found in zip(body, matched)]
            return sum(any(row[column].strip().lower() == value for row in found) for value, found in pairs
                       if value not in ("", "-"))  # fmt: skip

        keys[index] = max(sorted(possible[index]), key=agreement)
    return keys


def check_table(block: Block, rows: list[dict[str, str]], rename: dict[str, str], report: Report) -> None:
    """Every number of a quoted table against its source rows (see the module docstring)."""
    header, body = _cells(block.lines[0]), [_cells(line) for line in block.lines[2:]]
    columns = list(rows[0]) if rows else []
    text_values = {
        column: {row[column].strip().lower() for row in rows if row[column].strip()}
        for column in columns
        if any(row[column].strip() and _float(row[column]) is None for row in rows)
    }
    numeric = [column for column in columns if column not in text_values]

    def key_columns(text: str) -> set[str]:
        value = rename.get(_clean(text).lower(), _clean(text).lower())
        return {column for column, values in text_values.items() if value in values}

    # table column -> source column: most cells name its values, the others no numbers
    possible: dict[int, set[str]] = {}
    for index in range(len(header)):
        cells = [cells[index] for cells in body if index < len(cells)]
        candidates = [key_columns(cell) for cell in cells if key_columns(cell)]
        common = set.intersection(*candidates) if candidates else set()
        others = [cell for cell in cells if not key_columns(cell)]
        if common and 2 * len(candidates) >= len(cells) and not any(numbers(cell) for cell in others):
            possible[index] = common
        named = _clean(header[index]).lower()
        if index not in possible and named in NUMERIC_KEYS and named in numeric:
            possible[index] = {named}  # a seed the source lacks is then reported: "no row of the source has ..."
    keys = _resolve_keys(possible, body, rows, rename)
    pivots: dict[int, tuple[str, str]] = {}  # table column -> (source column, value) named by its header
    for index, title in enumerate(header):
        if index in keys:
            continue
        for word in re.findall(r"[\w-]+", title.lower()):
            word = rename.get(word, word)
            named = [c for c, values in text_values.items() if word in values and c not in keys.values()]
            if named:
                pivots[index] = (named[0], word)
                break

    labels: dict[tuple[int, int], list[tuple[int, tuple[float, int], set, dict]]] = {}
    for row_number, cells in enumerate(body):
        where = block.where(row_number + 2)
        shown = {i: _clean(cells[i]).lower() for i in keys if _clean(cells[i]) not in ("", "-")}  # "-": any
        constraint = {keys[i]: rename.get(text, text) for i, text in shown.items()}
        matched = [row for row in rows if all(row[c].strip().lower() == v for c, v in constraint.items())]
        if not matched:
            report.mismatches.append(f"{where}: no row of the source has {constraint}")
            continue
        for index, cell in enumerate(cells):
            if index in keys:
                continue
            candidates = matched
            if index in pivots:
                column, value = pivots[index]
                candidates = [row for row in matched if row[column].strip().lower() == value]
            varying = [c for c in text_values if len({row[c] for row in candidates}) > 1]  # e.g. the setting
            for position, (shown, decimals, _) in enumerate(numbers(_clean(cell))):
                found, values = set(), {}
                for row in candidates:
                    tag = tuple(row[c] for c in varying) if len(candidates) > 1 else ()
                    for column in numeric:
                        for scale in SCALES:
                            values[(tag, column, scale)] = row[column]
                        value = _float(row[column])
                        for scale in SCALES:
                            if value is not None and shows(value * scale, shown, decimals):
                                found.add((tag, column, scale))
                labels.setdefault((index, position), []).append((row_number, (shown, decimals), found, values))
                report.cells_checked += 1
    for (index, _), entries in labels.items():
        votes = Counter(label for _, _, found, _ in entries for label in found)
        best = votes.most_common(1)[0][0] if votes else None
        for row_number, (shown, decimals), found, values in entries:
            if best is None or best not in found:
                said = f"{header[index]!r} shows {shown:.{decimals}f}"
                if best is None or values.get(best) is None:
                    problem = f"{said}; no value of its source rows reads so"
                else:
                    value = _float(values[best])
                    held = "empty" if value is None else f"{value * best[2]:.{decimals}f}"
                    problem = f"{said}; the source's {best[1]}{' x100' if best[2] == 100 else ''} is {held}"
                report.mismatches.append(f"{block.where(row_number + 2)}: {problem}")
    report.tables_checked += 1


def check_paragraph(block: Block, sources: list[list[dict[str, str]]], report: Report) -> None:
    """Each percentage and decimal number of a paragraph is a value of its sources at the precision shown."""
    values = [_float(value) for rows in sources for row in rows for value in row.values()]
    values = [value for value in values if value is not None]
    for offset, line in enumerate(block.lines):
        for shown, decimals, _ in measured_numbers(line):
            report.cells_checked += 1
            if not any(shows(value * scale, shown, decimals) for value in values for scale in SCALES):
                report.mismatches.append(f"{block.where(offset)}: {shown:.{decimals}f} is in none of the sources")
    report.paragraphs_checked += 1


def check(paths: list[Path]) -> Report:
    report = Report()
    for path in paths:
        for block in split_blocks(path):
            sources, rename = _sources(block)
            if sources:
                missing = [str(source) for source in sources if not source.is_file()]
                if missing:
                    report.mismatches.append(f"{block.where()}: source not found: {', '.join(missing)}")
                elif block.is_table:
                    check_table(block, [row for source in sources for row in read_source(source)], rename, report)
                else:
                    check_paragraph(block, [read_source(source) for source in sources], report)
                continue
            text = "\n".join(block.lines[2:] if block.is_table else block.lines)
            count = len(measured_numbers(text))
            if not count:
                continue
            if any(SETTINGS.search(comment) for comment in block.comments):
                report.settings += count
                continue
            marked = any(HISTORY.search(comment) or DERIVED.search(comment) for comment in block.comments)
            if marked or DATE.search(" ".join(block.lines)):
                report.history += count
            else:
                kind = "table" if block.is_table else "paragraph"
                report.unsourced.append(f"{block.where()}: {kind}, {count} numbers: {block.lines[0][:90]}")
    return report


def document_paths(root: Path = ROOT) -> list[Path]:
    return sorted({path for pattern in DOCUMENTS for path in root.glob(pattern)})


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("files", nargs="*", type=Path, help=f"markdown files (default: {', '.join(DOCUMENTS)})")
    parser.add_argument("--unsourced", action="store_true", help="list the unsourced tables and paragraphs")
    parser.add_argument("--strict", action="store_true", help="fail on unsourced, undated numbers too")
    args = parser.parse_args(argv)
    report = check([path.resolve() for path in args.files] or document_paths())
    checked = f"{report.tables_checked} sourced tables and {report.paragraphs_checked} sourced paragraphs"
    print(f"{report.cells_checked} numbers checked in {checked}: {len(report.mismatches)} disagree with their source")
    for problem in report.mismatches:
        print(f"  MISMATCH {problem}")
    print(
        f"{len(report.unsourced)} tables and paragraphs with unsourced, undated numbers; {report.history} numbers "
        f"in dated or history-marked ones; {report.settings} in blocks of settings"
    )
    if args.unsourced or args.strict:
        for entry in report.unsourced:
            print(f"  unsourced {entry}")
    return report


if __name__ == "__main__":
    result = main()
    sys.exit(1 if result.mismatches or ("--strict" in sys.argv and result.unsourced) else 0)
