"""Learning quality of BI-BAU on real digits (slow: trains tiny CLIPs from scratch; run with ``-m slow``).

Done-means of the BI-BAU issue: untargeted inversion names the true target and says "backdoored"; after unlearning
the true trigger's ASR is < 10% with clean accuracy within 3 points of the backdoored model; on a never-poisoned
model it says "no backdoor found" and changes clean accuracy by < 2 points.
"""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def recipe(name):
    spec = importlib.util.spec_from_file_location(f"{name}_quality", ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bibau_quality")
    poison = recipe("poison_clip")
    backdoored = poison.main(
        ["--attack", "badnet", "--seed", "0", "--output_dir", str(folder / "badnet"), "--no-progress"]
    )
    reference = poison.main(
        ["--poison-count", "0", "--seed", "0", "--output_dir", str(folder / "none"), "--no-progress"]
    )
    assert backdoored["attack_success_rate"] >= 0.9
    return folder, backdoored, reference


def clean(folder: Path, source: str, output: str, *extra: str) -> dict:
    return recipe("clean_clip").main(
        [
            "--model", str(folder / source / "model"), "--clean-data", "digits:defender", "--eval-data", "digits:test",
            "--eval-trigger", str(folder / "badnet" / "trigger.json"), "--eval-target", "zero",
            "--output_dir", str(folder / output), "--no-progress", *extra,
        ]
    )  # fmt: skip


@pytest.mark.slow
def test_bibau_removes_badnet_untargeted(models):
    folder, backdoored, _ = models
    results = clean(folder, "badnet", "cleaned_badnet")
    assert results["inversion"]["recovered_target"] == "zero"
    assert results["inversion"]["verdict"] == "backdoored"
    assert results["before"]["attack_success_rate"] >= 0.9
    assert results["after"]["attack_success_rate"] < 0.10
    assert results["after"]["clean_accuracy"] >= results["before"]["clean_accuracy"] - 0.03


@pytest.mark.slow
def test_bibau_on_never_poisoned_model(models):
    folder, _, _ = models
    results = clean(folder, "none", "cleaned_none")
    assert results["inversion"]["verdict"] == "no backdoor found"
    assert abs(results["after"]["clean_accuracy"] - results["before"]["clean_accuracy"]) < 0.02
