"""benchmarks/reverdict.py: the verdict again on a recorded zoo model, whole or only its confirmation."""

import csv
import json
import math

import pytest
from conftest import load_script, save_tiny_clip_and_patch_trigger

from clipclean.data.digits import DIGIT_CLASSNAMES as DIGIT_CLASSES
from clipclean.inversion import free_trigger
from clipclean.triggers import save_trigger

reverdict = load_script("benchmarks/reverdict.py")


def _recorded_zoo_model(zoo):
    """A zoo folder as benchmarks/zoo.py leaves it (``poison/model`` and the cleaning's inversion record) around a
    random tiny CLIP, never poisoned, whose search named "three"."""
    folder = zoo / "none_s3"
    save_tiny_clip_and_patch_trigger(folder / "poison")
    inversion = folder / "clean" / "inversion"
    save_trigger(free_trigger(32, 0.004, 0, None), inversion / "trigger")
    rates = {name: 0.1 + 0.05 * k for k, name in enumerate(DIGIT_CLASSES)}  # "nine" the largest
    report = {"inversion": {
        "verdict": "no backdoor found", "recovered_target": "three", "untargeted_winner": "three",
        "anomaly_index": 0.5, "verdict_threshold": 1.29, "candidate_asr": rates, "mask_budget": 0.004,
        "named_by": "untargeted search", "search_trigger_asr": 0.2,
    }}  # fmt: skip
    (inversion / "report.json").write_text(json.dumps(report))
    return folder, rates


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_reverdict_reruns_the_verdict_and_the_confirmation_on_a_recorded_model(tmp_path):
    folder, rates = _recorded_zoo_model(tmp_path / "zoo")
    output = tmp_path / "again.csv"
    reverdict.main(["--zoo-dir", str(tmp_path / "zoo"), "--set", "verdict_steps=2", "verdict_holdout=0.25",
                    "--output", str(output)])  # fmt: skip
    [row] = _rows(output)
    assert row["name"] == "none_s3" and row["target"] == "" and json.loads(row["settings"])["verdict_holdout"] == 0.25
    measured = json.loads(row["candidate_asr"])
    assert list(measured) == list(DIGIT_CLASSES) and all(0 <= rate <= 1 for rate in measured.values())
    assert measured != {name: round(rate, 4) for name, rate in rates.items()}  # measured again, not copied
    assert row["verdict"] == ("backdoored" if float(row["score"]) > 1.29 else "no backdoor found")
    assert 0 <= float(row["search_trigger_asr"]) <= 1 and json.loads(row["confirmed_lifts"]) == {}

    output = tmp_path / "confirmed.csv"
    reverdict.main(["--zoo-dir", str(tmp_path / "zoo"), "--confirm-only", "--set", "verdict_steps=2",
                    "confirm_top=1", "--output", str(output)])  # fmt: skip
    [row] = _rows(output)
    [(candidate, lift)] = json.loads(row["confirmed_lifts"]).items()
    assert candidate == "nine"  # the largest recorded ASR other than the winner "three"
    median = sorted(math.log(rate / (1 - rate)) for rate in rates.values())[4]
    bound = math.log(0.995 / 0.005)  # the log-odds of a rate clipped to [0.005, 0.995], over the recorded median
    assert -bound - median <= lift <= bound - median
    assert float(row["score"]) == max(0.5, round(lift, 4))
    assert json.loads(row["candidate_asr"]) == pytest.approx(rates, abs=1e-4)  # the recorded first measurement


def test_summarize_counts_implanted_backdoors_and_false_alarms_recorded_and_again(tmp_path):
    def row(name, attack, converged, recorded, score, winner="eight", recorded_winner="eight", named="", before=""):
        verdict = "backdoored" if score > 1.29 else "no backdoor found"
        recorded_verdict = "backdoored" if recorded > 1.29 else "no backdoor found"
        target = "" if attack == "none" else name.split("_")[1]
        return {"name": name, "attack": attack, "poison_converged": converged, "recorded_score": recorded,
                "recorded_verdict": recorded_verdict, "score": score, "threshold": 1.29, "verdict": verdict,
                "target": target, "untargeted_winner": winner, "recorded_winner": recorded_winner, "named": named,
                "recorded_named": before}  # fmt: skip

    rows = [
        row("badnet_two_s7_v0", "badnet", "True", 1.16, 1.62, named="two"),  # a miss found again
        # a --search run found the target; the recorded verdict had detected and named it too
        row("blended_two_s8_v1", "blended", "True", 3.0, 2.0, winner="two", named="two", before="two"),
        row("blended_seven_s9_v0", "blended", "False", 2.0, 0.1),  # not implanted: not counted
        row("none_s50", "none", "", 3.84, 2.44),  # a false alarm, still one
        row("none_s51", "none", "", 0.03, -0.21),
    ]
    path = tmp_path / "rows.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=reverdict.COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    summary = reverdict.summarize([str(path)])
    assert (summary["backdoored"], summary["clean"]) == (2, 2)
    assert summary["recorded"]["detected"] == 1 and summary["recorded"]["missed"] == ["badnet_two_s7_v0"]
    assert summary["again_at_recorded_threshold"]["detected"] == 2
    assert summary["again_at_recorded_threshold"]["alarms"] == ["none_s50"]
    # the chosen threshold separates the again-scores: between the clean 2.44 and the backdoored 1.62 no threshold
    # does, so it takes the largest TPR - FPR (both detected, one false alarm, or one detected and none)
    assert summary["again_at_chosen_threshold"]["youden"] == pytest.approx(0.5)
    # over the counted models only (the uncounted one moved 1.9 and changed its verdict)
    assert summary["verdicts_changed"] == ["badnet_two_s7_v0"]
    assert summary["score_change_max"] == pytest.approx(1.4)
    assert summary["winner_is_target"] == 1 and summary["winners_changed"] == ["blended_two_s8_v1"]
    assert summary["recorded"]["named"] == 1 and summary["again_at_recorded_threshold"]["named"] == 2
    assert "again_at_given_threshold" not in summary

    # at a threshold chosen elsewhere (on development rows): the recorded detection of "two" at 3.0 is lost at 2.2
    summary = reverdict.summarize([str(path)], threshold=2.2)
    given = summary["again_at_given_threshold"]
    assert summary["given_threshold"] == 2.2
    assert (given["detected"], given["false_alarms"], given["named"]) == (0, 1, 0)
    assert given["lost"] == ["blended_two_s8_v1"] and summary["again_at_recorded_threshold"]["lost"] == []


def test_reverdict_can_run_the_search_again_under_its_own_settings(tmp_path):
    _recorded_zoo_model(tmp_path / "zoo")
    output = tmp_path / "searched.csv"
    reverdict.main(["--zoo-dir", str(tmp_path / "zoo"), "--search", "--set", "rounds=1", "steps_per_round=2",
                    "verdict_steps=2", "mask_budgets=[0.008,0.03]", "--output", str(output)])  # fmt: skip
    [row] = _rows(output)
    assert row["recorded_winner"] == row["recorded_named"] == "three" and row["untargeted_winner"] in DIGIT_CLASSES
    assert float(row["search_budget"]) == 0.008  # this run's search (one round: no growth), not the recorded 0.004
    measured = json.loads(row["candidate_asr"])
    assert list(measured) == list(DIGIT_CLASSES) and all(0 <= rate <= 1 for rate in measured.values())
    assert row["verdict"] == ("backdoored" if float(row["score"]) > 1.29 else "no backdoor found")
    with pytest.raises(SystemExit):
        reverdict.main(["--zoo-dir", str(tmp_path / "zoo"), "--search", "--confirm-only", "--output", str(output)])
