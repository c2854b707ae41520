"""clipclean from a built wheel, without the source checkout: ``clipclean clean --help`` and the demo (smoke size)
run from a fresh virtual environment in a folder outside the repository (the jobs are part of the package)."""

import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_clipclean_clean_runs_from_an_installed_wheel(tmp_path):
    # The wheel, built from a copy of the package sources (the checkout keeps no build/ folder, whose stale files a
    # build would ship); no build isolation, so that setuptools comes from this environment (no index is needed).
    source = tmp_path / "source"
    shutil.copytree(ROOT / "clipclean", source / "clipclean", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(wheels)]
    subprocess.run(build, check=True, capture_output=True, text=True, timeout=600)
    (wheel,) = wheels.glob("clipclean-*.whl")

    # A virtual environment that sees torch & co. from the system site, with the wheel installed over the editable
    # install of the checkout that the system site may hold.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    python, clipclean = venv / "bin" / "python", venv / "bin" / "clipclean"
    install = [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--force-reinstall", str(wheel)]
    subprocess.run(install, check=True, capture_output=True, text=True, timeout=600)

    outside = tmp_path / "elsewhere"  # not the checkout, not under it
    outside.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env |= {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONNOUSERSITE": "1", "CLIPCLEAN_SMOKE": "1"}

    def run(*command: str) -> subprocess.CompletedProcess:
        done = subprocess.run(command, cwd=outside, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done

    where = run(str(python), "-c", "import clipclean, clipclean.cli.clean_clip as job; print(clipclean.__file__)")
    assert where.stdout.strip().startswith(str(venv)), where.stdout  # the wheel's clipclean, not the checkout's

    helped = run(str(clipclean), "clean", "--help")
    assert "usage: clipclean clean" in helped.stdout and "(runs clipclean.cli.clean_clip)" in helped.stdout

    demo = run(str(clipclean), "clean", "--output-dir", "cleaned_demo", "--demo-cache", "demo_cache")
    assert (outside / "cleaned_demo" / "results.json").is_file()
    assert (outside / "cleaned_demo" / "cleaned" / "open_clip_model.safetensors").is_file(), demo.stdout[-2000:]
