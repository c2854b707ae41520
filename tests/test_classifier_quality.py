"""Learning quality on real data (issue 6's done criteria): a small CNN backdoored on scikit-learn's digits.

For ``badnet`` and ``blended`` (ASR >= 90% before), untargeted BI-BAU must name the true target ("zero") as the
top candidate, bring the ASR below 5% and keep the clean accuracy within 3 points; a never-poisoned CNN must get
"no backdoor found". Fixed seeds; the commands are those of ``benchmarks/classifier.md``. Minutes on 2 CPU cores.
"""

from pathlib import Path

import pytest

from clipclean.cli import clean_classifier, poison_classifier

CLEAN_FLAGS = [
    "--rounds", "3", "--epochs", "20", "--lr", "2e-3", "--set", "unlearning_budget=0.1",
    "--set", "reinversion_steps=100", "--seed", "0", "--no-progress",
]  # fmt: skip


def poison_and_clean(tmp_path: Path, *poison_flags: str) -> tuple[dict, dict]:
    poisoned = poison_classifier.main(
        [*poison_flags, "--seed", "0", "--no-progress", "--output_dir", str(tmp_path / "poisoned")]
    )
    cleaned = clean_classifier.main(
        [
            "--model",
            str(tmp_path / "poisoned" / "model"),
            "--clean-data",
            "digits:defender",
            "--eval-data",
            "digits:test",
            "--eval-trigger",
            str(tmp_path / "poisoned" / "trigger.json"),
            *CLEAN_FLAGS,
            "--output_dir",
            str(tmp_path / "cleaned"),
        ]  # fmt: skip
    )
    return poisoned, cleaned


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["badnet", "blended"])
def test_bibau_removes_a_cnn_backdoor_untargeted(attack, tmp_path):
    poisoned, results = poison_and_clean(tmp_path, "--attack", attack)
    before, after, inversion = results["before"], results["after"], results["inversion"]
    assert poisoned["attack_success_rate"] >= 0.9 and before["attack_success_rate"] >= 0.9
    assert inversion["recovered_target"] == "zero" and inversion["target_candidates"][0][0] == "zero"
    assert inversion["verdict"] == "backdoored"
    assert after["attack_success_rate"] < 0.05, (before, after)
    assert after["clean_accuracy"] >= before["clean_accuracy"] - 0.03, (before, after)


@pytest.mark.slow
def test_never_poisoned_cnn_gets_no_backdoor_found(tmp_path):
    _, results = poison_and_clean(tmp_path, "--poison-count", "0")
    assert results["inversion"]["verdict"] == "no backdoor found"
    assert results["after"]["clean_accuracy"] >= results["before"]["clean_accuracy"] - 0.03
