"""recipes/clean_clip.py: in-process smoke run, results.json schema, outputs, resume, two real CPU processes."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch

from clipclean.hub import save_pretrained
from clipclean.models import load_clip
from clipclean.triggers import PatchBlendTrigger, save_trigger

ROOT = Path(__file__).resolve().parents[1]
RESULT_KEYS = {"defense", "before", "after", "inversion", "inverted_trigger_asr", "wall_time_s", "config"}
INVERSION_KEYS = {"verdict", "recovered_target", "target_candidates", "backdoor_score", "anomaly_index"}


def load_recipe():
    spec = importlib.util.spec_from_file_location("clean_clip_recipe", ROOT / "recipes" / "clean_clip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clean_recipe")
    torch.manual_seed(0)
    save_pretrained(load_clip("clipclean-tiny"), folder / "model")
    save_trigger(
        PatchBlendTrigger.patch(32, 4, "bottom-right", "white"), folder / "trigger", metadata={"target": "zero"}
    )
    return folder


def tiny_args(setup, output, *extra):
    return [
        "--model",
        str(setup / "model"),
        "--clean-data",
        "digits:defender",
        "--eval-data",
        "digits:test",
        "--eval-trigger",
        str(setup / "trigger.json"),
        "--max-clean-pairs",
        "64",
        "--batch-size",
        "32",
        "--rounds",
        "2",
        "--epochs",
        "1",
        "--set",
        "inversion.rounds=1",
        "--set",
        "inversion.steps_per_round=3",
        "--set",
        "inversion.verdict_steps=2",
        "--set",
        "reinversion_steps=2",
        "--no-progress",
        "--output_dir",
        str(output),
        *extra,
    ]


def test_recipe_in_process_writes_every_output(setup, tmp_path):
    results = load_recipe().main(tiny_args(setup, tmp_path / "run"))
    assert RESULT_KEYS <= set(results)
    assert results["defense"] == "bibau" and results["world_size"] == 1
    for phase in ("before", "after"):
        assert set(results[phase]) >= {"clean_accuracy", "attack_success_rate"}
        assert 0 <= results[phase]["clean_accuracy"] <= 1 and 0 <= results[phase]["attack_success_rate"] <= 1
    assert INVERSION_KEYS <= set(results["inversion"])
    assert results["inversion"]["verdict"] in ("backdoored", "no backdoor found")
    assert results["trigger_identical_across_ranks"] is True
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk["defense"] == "bibau" and on_disk["inversion"]["recovered_target"] in [
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
    ]
    for name in ("trigger.json", "trigger.safetensors", "trigger.png", "report.json"):
        assert (tmp_path / "run" / "inversion" / name).is_file()
    cleaned = tmp_path / "run" / "cleaned"
    card = (cleaned / "README.md").read_text()
    assert "before" in card and "after" in card
    # plain open_clip loads the cleaned checkpoint
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{cleaned}")
    assert model.visual.image_size in ((32, 32), 32)
    assert json.loads((cleaned / "clipclean.json").read_text())["provenance"]["method"] == "bibau"


def test_recipe_resume_continues_after_the_saved_round(setup, tmp_path):
    recipe = load_recipe()
    output = tmp_path / "run"
    first = recipe.main(tiny_args(setup, output, "--rounds", "1"))
    assert first["rounds_done"] == 1
    resumed = recipe.main(tiny_args(setup, output, "--rounds", "2", "--resume_from_checkpoint", "latest"))
    assert resumed["rounds_done"] == 2
    assert len(resumed["rounds"]) == 2
    assert resumed["inversion"]["recovered_target"] == first["inversion"]["recovered_target"]
    assert resumed["inversion"]["backdoor_score"] == pytest.approx(first["inversion"]["backdoor_score"])


def test_recipe_rejects_bad_arguments(setup, tmp_path):
    recipe = load_recipe()
    with pytest.raises(SystemExit):
        recipe.main(["--model", str(setup / "model"), "--defense", "no-such-defense"])
    with pytest.raises(ValueError, match="no option"):
        recipe.main(tiny_args(setup, tmp_path / "bad", "--set", "no_such_field=1"))


def test_recipe_with_two_real_cpu_processes(setup, tmp_path):
    output = tmp_path / "ddp"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        str(ROOT / "recipes" / "clean_clip.py"), *tiny_args(setup, output, "--rounds", "1"),
    ]  # fmt: skip
    completed = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((output / "results.json").read_text())
    assert results["world_size"] == 2
    assert results["trigger_identical_across_ranks"] is True
    assert INVERSION_KEYS <= set(results["inversion"])
    assert results["after"]["clean_accuracy"] is not None
