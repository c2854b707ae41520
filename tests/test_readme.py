"""README.md, run top to bottom by a new user, works.

The README's runnable parts are its fenced ``bash`` and ``python`` blocks and the rows of its command tables (a table
with a ``command`` column; a ``writes`` column lists what the row leaves behind). :func:`readme_steps` extracts them
in the order they appear. What is not run, and why:

* ``pip install ...`` (the package is installed: the test runs on it) and ``python -m pytest ...`` (the test suite
  this test belongs to), wherever they appear;
* a block preceded by ``<!-- readme-test: skip (REASON) -->``: placeholders for the reader's own files.

The fast test checks the order statically: every ``outputs/...`` path a step reads was written by an earlier step.
The slow tests run every step in a fresh copy of the repository (the tree without ``outputs/``), with the copy's
package first on ``PYTHONPATH`` and ``CLIPCLEAN_SMOKE=1`` (``clipclean.cli.smoke``: one epoch, one round, 3 steps),
and check each command's exit status, the files its row says it writes and the folder of its ``--output_dir`` /
``--output``. The Python blocks run in a fresh interpreter each; ``InversionConfig()`` there is capped the way the
recipes cap it (the library itself never reads ``CLIPCLEAN_SMOKE``). The benchmark row (``python benchmarks/run.py``,
31 jobs, each its own process) reads nothing an earlier step wrote and nothing later reads what it writes, so it runs
in a test of its own. ``pytest -m slow tests/test_readme.py -s`` prints each step's time; measured on 2 CPU cores
shared with other jobs (load average 5-8): the walk-through 377 s, the benchmark row 944 s.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SKIP_MARKER = re.compile(r"<!--\s*readme-test:\s*skip\s*\((?P<reason>[^)]+)\)\s*-->")
NOT_RUN = {  # commands never run, wherever they appear: the reason
    "pip install": "installing is the setup this test runs in",
    "python -m pytest": "the test suite this test belongs to",
}
OUTPUT_FLAGS = ("--output_dir", "--output-dir", "--output")
BENCHMARK = "python benchmarks/"  # steps run by their own test (see the module docstring)
OUTPUT_PATH = re.compile(r"""(?<![\w/.-])outputs/[\w./-]*[\w-]""")
COPY_IGNORED = shutil.ignore_patterns(".git", "outputs", "runs", "build", "__pycache__", "*.egg-info", ".pytest_cache")
# The README's Python examples call InversionConfig() with the full defaults; capped like the recipes' configs.
PYTHON_PRELUDE = """\
import clipclean.inversion
from clipclean.cli.smoke import smoke_config

_InversionConfig = clipclean.inversion.InversionConfig
clipclean.inversion.InversionConfig = lambda **fields: smoke_config(_InversionConfig(**fields))
"""


@dataclass
class Step:
    """One runnable part of the README: a shell command (``bash``) or a Python block (``python``)."""

    kind: str
    text: str
    line: int
    writes: list[str] = field(default_factory=list)
    skip: str | None = None

    def outputs(self) -> list[str]:
        """What the step writes: its row's ``writes`` paths and the values of its output flags."""
        found = list(self.writes)
        if self.kind == "bash":
            words = shlex.split(self.text, comments=True)
            found += [words[i + 1] for i, word in enumerate(words[:-1]) if word in OUTPUT_FLAGS]
        else:
            found += re.findall(r"""(?:save_pretrained|save_classifier)\([^"']*["'](outputs/[^"']+)["']""", self.text)
        return found

    def reads(self) -> list[str]:
        """The ``outputs/...`` paths the step names that are not its own outputs."""
        own = self.outputs()
        return [path for path in OUTPUT_PATH.findall(self.text) if not any(_under(path, out) for out in own)]


def _under(path: str, folder: str) -> bool:
    path, folder = path.rstrip("/"), folder.rstrip("/")
    return path == folder or path.startswith(folder + "/")


def _not_run_reason(command: str) -> str | None:
    return next((reason for prefix, reason in NOT_RUN.items() if command.startswith(prefix)), None)


def _shell_commands(block: str, line: int, skip: str | None) -> list[Step]:
    """A bash block's commands (continuation lines joined); ``a && b`` is split so that an install is left out."""
    steps = []
    for command in re.sub(r"\\\n\s*", " ", block).splitlines():
        command = command.strip()
        if not command or command.startswith("#"):
            continue
        for part in command.split(" && "):
            steps.append(Step("bash", part.strip(), line, skip=skip or _not_run_reason(part.strip())))
    return steps


def _table_rows(lines: list[str], start: int) -> tuple[list[Step], int]:
    """The rows of the command table whose header is ``lines[start]``; returns them and the first line after it."""
    header = [cell.strip().lower() for cell in lines[start].strip().strip("|").split("|")]
    command_column = header.index("command")
    writes_column = header.index("writes") if "writes" in header else None
    steps, index = [], start + 2
    while index < len(lines) and lines[index].startswith("|"):
        cells = [cell.strip() for cell in lines[index].strip().strip("|").split("|")]
        command = re.findall(r"`([^`]+)`", cells[command_column])
        assert len(command) == 1, f"README.md:{index + 1}: a command row needs one `command`, got {command}"
        writes = re.findall(r"`([^`]+)`", cells[writes_column]) if writes_column is not None else []
        steps.append(Step("bash", command[0], index + 1, writes=writes, skip=_not_run_reason(command[0])))
        index += 1
    return steps, index


def readme_steps(text: str) -> list[Step]:
    """The README's commands, table rows and Python blocks, in order (see the module docstring)."""
    lines = text.splitlines()
    steps, index, skip = [], 0, None
    while index < len(lines):
        line = lines[index]
        marker = SKIP_MARKER.search(line)
        if marker:
            skip = marker["reason"]
        elif line.startswith("```"):
            language = line[3:].strip()
            end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
            block = "\n".join(lines[index + 1 : end])
            if language == "bash":
                steps += _shell_commands(block, index + 1, skip)
            elif language == "python":
                steps.append(Step("python", block, index + 1, skip=skip))
            index, skip = end + 1, None
            continue
        elif line.startswith("|") and "| command |" in line.lower() + " ":
            rows, index = _table_rows(lines, index)
            steps += rows
            skip = None
            continue
        elif line.strip():
            skip = None if not line.startswith("<!--") else skip
        index += 1
    return steps


STEPS = readme_steps(README.read_text(encoding="utf-8"))


def test_the_readme_creates_everything_a_later_step_reads():
    """Static: every ``outputs/...`` path a step reads was written by an earlier step (the new user's
    ``outputs/never_poisoned/model``, which nothing in the README made)."""
    rows = [step for step in STEPS if step.writes]
    assert len(rows) >= 6 and all(step.kind == "bash" and not step.skip for step in rows)
    written: list[str] = []
    for step in STEPS:
        if step.skip:
            continue
        missing = [path for path in step.reads() if not any(_under(path, out) for out in written)]
        assert not missing, f"README.md:{step.line}: `{step.text[:80]}` reads {missing}, which no earlier step writes"
        written += step.outputs()
    benchmarks = [step for step in STEPS if step.text.startswith(BENCHMARK)]
    assert len(benchmarks) == 1 and not benchmarks[0].reads(), "the benchmark row runs on its own: it reads nothing"
    later_reads = [path for step in STEPS for path in step.reads()]
    assert not any(_under(path, out) for path in later_reads for out in benchmarks[0].outputs())
    skipped = {step.skip for step in STEPS if step.skip}
    assert skipped <= {*NOT_RUN.values(), "placeholders for your own data, checkpoint and Hub repo"}, skipped
    run = [step for step in STEPS if not step.skip]
    assert sum(step.kind == "python" for step in run) == 2 and len(run) >= 14


def test_the_smoke_switch_caps_every_run_length_and_nothing_else(monkeypatch):
    import argparse

    from clipclean.cli.smoke import SMOKE_VARIABLE, smoke_arguments, smoke_cache, smoke_config, smoke_overrides
    from clipclean.complete import RetuningConfig
    from clipclean.defenses import DEFENSES

    bibau = DEFENSES["bibau"][0]
    monkeypatch.delenv(SMOKE_VARIABLE, raising=False)
    assert smoke_overrides(bibau, {"epochs": 9}) == {"epochs": 9} and smoke_cache("outputs/demo").name == "demo"
    monkeypatch.setenv(SMOKE_VARIABLE, "1")
    config = bibau(**smoke_overrides(bibau, {"epochs": 9, "lr": 1e-3, "inversion": {"verdict_steps": 2}}))
    assert (config.rounds, config.epochs, config.reinversion_steps, config.lr) == (1, 1, 3, 1e-3)
    inversion = config.inversion
    assert (inversion.rounds, inversion.steps_per_round, inversion.verdict_steps) == (1, 3, 2)
    assert inversion.max_verdict_candidates == 20 and inversion.batch_size == 64  # sizes, not lengths: unchanged
    assert smoke_config(RetuningConfig()).steps == 3
    args = smoke_arguments(argparse.Namespace(epochs=40, max_steps=None, warmup_steps=50, batch_size=128, seed=7))
    assert vars(args) == {"epochs": 1, "max_steps": None, "warmup_steps": 3, "batch_size": 128, "seed": 7}
    assert smoke_cache("outputs/demo").name == "demo-smoke"


def _fresh_copy(destination: Path) -> Path:
    """The repository as a new user's clone has it: the tree without outputs, caches or benchmark run folders."""

    def ignored(folder: str, names: list[str]) -> set[str]:
        result = set(COPY_IGNORED(folder, names))
        if Path(folder) == ROOT / "benchmarks" / "results":  # run folders (git-ignored), not the committed files
            result |= {name for name in names if (Path(folder) / name).is_dir()}
        return result

    return Path(shutil.copytree(ROOT, destination, ignore=ignored))


def _run(step: Step, checkout: Path, env: dict[str, str], number: int) -> subprocess.CompletedProcess:
    if step.kind == "bash":
        command = ["bash", "-c", step.text]
    else:
        script = checkout / f"readme_python_{number}.py"
        script.write_text(PYTHON_PRELUDE + step.text + "\n", encoding="utf-8")
        command = [sys.executable, str(script)]
    return subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True, timeout=1800)


def _run_in_a_fresh_copy(steps: list[Step], tmp_path: Path) -> None:
    """Run ``steps`` in order in a fresh copy of the repository at the smoke size; assert each one's exit status and
    outputs."""
    checkout = _fresh_copy(tmp_path / "clipclean")
    env = {**os.environ, "CLIPCLEAN_SMOKE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(checkout), env.get("PYTHONPATH", "")])
    started = time.time()
    for number, step in enumerate(steps):
        if step.skip:
            print(f"README.md:{step.line}: not run ({step.skip}): {step.text.splitlines()[0][:90]}")
            continue
        begun = time.time()
        completed = _run(step, checkout, env, number)
        where = f"README.md:{step.line}: `{step.text.splitlines()[0][:120]}`"
        assert completed.returncode == 0, f"{where} exited {completed.returncode}:\n{completed.stderr[-4000:]}"
        for path in step.outputs():
            assert (checkout / path).exists(), f"{where} did not write {path}"
            assert not path.endswith("/") or (checkout / path).is_dir(), f"{where}: {path} is not a folder"
        print(f"{time.time() - begun:6.1f} s  {where}")
    print(f"ran in {time.time() - started:.0f} s")


@pytest.mark.slow
def test_every_readme_step_runs_in_order_in_a_fresh_copy(tmp_path):
    _run_in_a_fresh_copy([step for step in STEPS if not step.text.startswith(BENCHMARK)], tmp_path)


@pytest.mark.slow
def test_the_readme_benchmark_row_runs_in_a_fresh_copy(tmp_path):
    _run_in_a_fresh_copy([step for step in STEPS if step.text.startswith(BENCHMARK)], tmp_path)
