"""Learning quality of BI-BAU on real digits (slow: trains tiny CLIPs from scratch; run with ``-m slow``).

Done-means of the BI-BAU issue: for each attack, the untargeted run names the true target and says "backdoored";
after unlearning the true trigger's ASR is < 10% with clean accuracy within 3 points of the backdoored model; on a
never-poisoned model it says "no backdoor found" and changes clean accuracy by < 2 points. The models are the
shared ``digits_clips`` of conftest.py (recipe defaults, seed 0); benchmarks/README.md has the same runs.

Known failure, left failing on purpose (2026-12-07): the BadCLIP case. On that 2% model (ASR 97.5%) the search names
"eight", the targeted inversion toward "zero" reaches 86.8% but the score is 0.73 (threshold 1.29), so the verdict
says "no backdoor found" and nothing is unlearned: a backdoored model called clean, the miss the zoo's 2% sets
measure (README.md, "What the held-out models say"). It passes when the verdict finds this backdoor.
"""

import pytest

from clipclean.cli import clean_clip


def clean(folder, trigger, output, *extra: str) -> dict:
    return clean_clip.main(
        [
            "--model", str(folder / "model"), "--clean-data", "digits:defender", "--eval-data", "digits:test",
            "--eval-trigger", str(trigger), "--eval-target", "zero", "--output_dir", str(output), "--no-progress",
            *extra,
        ]
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["badnet", "blended", "badclip"])
def test_bibau_removes_the_backdoor_untargeted(digits_clips, attack, tmp_path):
    folder, _ = digits_clips(attack)
    results = clean(folder, folder / "trigger.json", tmp_path / "cleaned")
    assert results["inversion"]["recovered_target"] == "zero"
    assert results["inversion"]["verdict"] == "backdoored"
    assert results["before"]["attack_success_rate"] >= 0.9
    assert results["after"]["attack_success_rate"] < 0.10
    assert results["after"]["clean_accuracy"] >= results["before"]["clean_accuracy"] - 0.03


@pytest.mark.slow
def test_bibau_on_never_poisoned_model(digits_clips, tmp_path):
    folder, _ = digits_clips("none")
    badnet, _ = digits_clips("badnet")
    results = clean(folder, badnet / "trigger.json", tmp_path / "cleaned")
    assert results["inversion"]["verdict"] == "no backdoor found"
    assert abs(results["after"]["clean_accuracy"] - results["before"]["clean_accuracy"]) < 0.02
