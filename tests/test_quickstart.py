"""benchmarks/quickstart.py: its commands are the README's, it resumes, and it collects the quoted numbers."""

import csv
import json

import pytest
from conftest import ROOT, load_script


@pytest.fixture(scope="module")
def quickstart():
    return load_script("benchmarks/quickstart.py")


def test_the_commands_are_the_readmes_rows_in_order(quickstart):
    readme = (ROOT / "README.md").read_text()
    positions = [readme.find(command) for command, _ in quickstart.README_STEPS]
    assert -1 not in positions, [c for (c, _), p in zip(quickstart.README_STEPS, positions) if p == -1]
    assert positions == sorted(positions)
    for command, writes in quickstart.README_STEPS + quickstart.EXTRA_STEPS:  # each step's marker is its output
        assert writes.split("/")[1] in command


def _write(path, payload):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


def _finished_walkthrough(outputs):
    complete = {
        "ra_asr": 0.02,
        "reinversion_score": 0.42,
        "reinversion_target": "four",
        "targeted_reinversion_asr": 0.03,
    }
    reference = {
        "ra_asr": 0.03,
        "reinversion_score": 0.58,
        "reinversion_target": "nine",
        "targeted_reinversion_asr": 0.4,
    }
    _write(outputs / "badnet" / "results.json", {"clean_accuracy": 0.9575, "attack_success_rate": 1.0})
    _write(outputs / "never_poisoned" / "results.json", {"clean_accuracy": 0.9625, "attack_success_rate": 0.0})
    _write(
        outputs / "cleaned" / "results.json",
        {
            "before": {"clean_accuracy": 0.9575, "attack_success_rate": 1.0},
            "after": {"clean_accuracy": 0.96, "attack_success_rate": 0.0},
            "inversion": {"verdict": "backdoored", "recovered_target": "zero", "backdoor_score": 0.62,
                          "anomaly_index": 4.4, "trigger": "..."},
        },
    )  # fmt: skip
    _write(outputs / "eval.json", {"top1": 0.9425, "asr_top1": 0.0, "templates": "openai_imagenet", "top5": 1.0})
    _write(outputs / "complete.json", {"measured": complete, "reference_measured": reference})
    _write(
        outputs / "complete_backdoored.json",
        {"measured": {**complete, "ra_asr": 0.997}, "reference_measured": reference},
    )


def test_collect_reads_each_number_from_its_file(quickstart, tmp_path):
    outputs = tmp_path / "work" / "outputs"
    _finished_walkthrough(outputs)
    rows = quickstart.main(["--work-dir", str(tmp_path / "work"), "--collect-only", "--output", str(tmp_path / "r")])
    table = {(row["model"], row["metric"]): (row["value"], row["file"]) for row in rows}
    assert table["cleaned", "clean_accuracy"] == (0.96, "cleaned/results.json")  # digit templates, the recipe's table
    assert table["cleaned", "eval_top1"] == (0.9425, "eval.json")  # the 80 OpenAI templates
    assert table["cleaned", "ra_asr"] == (0.02, "complete.json")
    assert table["never_poisoned", "reinversion_target"] == ("nine", "complete.json")
    assert table["backdoored", "ra_asr"] == (0.997, "complete_backdoored.json")
    assert table["backdoored", "clean_accuracy"] == (0.9575, "badnet/results.json")
    assert ("cleaned", "top5") not in table and len(table) == len(rows)  # only what the docs quote, each once
    with (tmp_path / "r" / "quickstart.csv").open() as handle:
        written = list(csv.DictReader(handle))
    assert [(r["model"], r["metric"], r["value"]) for r in written] == [
        (r["model"], r["metric"], str(r["value"])) for r in rows
    ]

    (outputs / "eval.json").unlink()
    with pytest.raises(FileNotFoundError, match="eval.json is missing"):
        quickstart.collect(outputs)


def test_finished_steps_are_not_run_again(quickstart, tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(quickstart.subprocess, "run", lambda argv, **kw: ran.append(argv))
    outputs = tmp_path / "outputs"
    _finished_walkthrough(outputs)
    (outputs / "complete.json").unlink()
    quickstart.run_steps(tmp_path)
    assert len(ran) == 1 and "eval/complete_unlearning.py" in ran[0][1] and "outputs/complete.json" in ran[0]
    assert ran[0][-1] == "--no-progress"
