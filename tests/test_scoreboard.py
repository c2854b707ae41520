"""benchmarks/scoreboard.py: the held-out pools add up to their sets, agree with zoo.py's own per-set counts on the
committed CSVs, and refuse a set whose recorded verdicts are not the default's."""

import csv
import math

import pytest
from conftest import load_script

scoreboard = load_script("benchmarks/scoreboard.py")
zoo = scoreboard.zoo


def _row(name: str, attack: str, target: str, score: float | None, **values) -> dict:
    detected = score is not None and score > scoreboard.THRESHOLD
    row = {column: "" for column in zoo.COLUMNS}
    row.update(name=name, split="fresh", attack=attack, target=target, seed=1, variant=0, poison_converged="True",
               verdict="backdoored" if detected else "no backdoor found", recovered_target="eight",
               ca_before=0.95, ca_after=0.94, cleaned="True")  # fmt: skip
    row[scoreboard.SCORE] = "" if score is None else score
    row[scoreboard.NAMED] = "eight"
    row.update(values)
    return row


def _write(folder, name: str, rows: list[dict]) -> None:
    with open(folder / f"{name}.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(zoo.COLUMNS))
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture()
def two_sets(tmp_path, monkeypatch):
    """A 5% set (two backdoored models, one of which the attack did not implant, one never-poisoned model called
    backdoored) and a 2% set cleaned with a candidate's flags (its recorded verdict is not the default's)."""
    _write(tmp_path, "a", [
        _row("badnet_eight_s1_v0", "badnet", "eight", 3.0, ca_after=0.93),
        _row("blended_eight_s1_v0", "blended", "eight", 0.2, poison_converged="False"),
        _row("none_s1", "none", "", 2.0),
    ])  # fmt: skip
    _write(tmp_path, "b", [
        _row("badclip_two_s2_v0", "badclip", "two", 0.5, verdict="backdoored", recovered_target="two"),
        _row("none_s2", "none", "", 1.0),
    ])  # fmt: skip
    sets = (
        scoreboard.HeldOutSet("a", "5%", "test", True),
        scoreboard.HeldOutSet("b", "2%", "development after", False),
    )
    monkeypatch.setattr(scoreboard, "SETS", sets)
    return tmp_path


def test_pools_count_implanted_backdoors_and_every_never_poisoned_model(two_sets):
    records = {record["pool"]: record for record in scoreboard.pools(two_sets)}
    five = records["5%, test"]
    assert (five["detected"], five["detected_of"], five["not_implanted"]) == (1, 1, 1)
    assert (five["named"], five["cleaned"], five["cleaned_of"]) == (1, 1, 1)
    assert five["ca_drop_median_points"] == pytest.approx(2.0)
    assert (five["false_alarms"], five["false_alarms_of"]) == (1, 1)  # only the test set's never-poisoned model
    # the 2% set's cleaning ran a candidate: its verdict comes from the score (0.5: clean), no cleaning counted
    everything = records["every rate, all"]
    assert (everything["detected"], everything["detected_of"]) == (1, 2)
    assert (everything["cleaned"], everything["cleaned_of"]) == (1, 1)
    assert (everything["false_alarms"], everything["false_alarms_of"]) == (1, 2)
    assert everything["roc_auc"] == pytest.approx(0.5)  # scores 3.0, 0.5 against 2.0, 1.0: 2 of 4 pairs
    assert everything["missed"] == "badclip_two_s2_v0" and everything["false_alarm_models"] == "none_s1"
    assert records["b"]["cleaned_of"] == 0 and math.isnan(records["b"]["ca_drop_median_points"])


def test_a_recorded_verdict_that_is_not_the_scores_is_refused(two_sets):
    _write(two_sets, "a", [_row("badnet_eight_s1_v0", "badnet", "eight", 0.4, verdict="backdoored")])
    with pytest.raises(ValueError, match="recorded verdict"):
        scoreboard.pools(two_sets)


def test_a_set_without_the_default_score_is_refused(two_sets):
    _write(two_sets, "a", [_row("badnet_eight_s1_v0", "badnet", "eight", None)])
    with pytest.raises(ValueError, match="no winner_or_max_or_search_lift score"):
        scoreboard.pools(two_sets)


def test_the_committed_scoreboard_agrees_with_zoo_counts_and_with_its_sets(tmp_path):
    records = {record["pool"]: record for record in scoreboard.main(["--output", str(tmp_path / "scoreboard")])}
    for entry in scoreboard.SETS:
        rows = scoreboard.set_rows(entry)
        if entry.default_cleaning:  # zoo.py's own counts of the same rows, by another path
            metrics = zoo.split_metrics(rows)
            assert records[entry.name]["detected"] == metrics["true_positive"]["k"]
            assert records[entry.name]["false_alarms"] == metrics["false_positive"]["k"]
            assert records[entry.name]["cleaned"] == metrics["cleaning_success"]["k"]
    for rate in ("5%", "2%"):
        for role in ("test", "all"):
            chosen = [e for e in scoreboard.SETS if e.rate == rate and (role == "all" or e.role == role)]
            pooled = records[f"{rate}, {role}"]
            for key in ("detected", "detected_of", "named", "cleaned", "cleaned_of", "not_implanted"):
                assert pooled[key] == sum(records[entry.name][key] for entry in chosen), (rate, role, key)
    never_poisoned = sum(records[entry.name]["false_alarms_of"] for entry in scoreboard.SETS)
    assert records["every rate, all"]["false_alarms_of"] == never_poisoned
    committed = list(csv.DictReader(open(scoreboard.RESULTS / "scoreboard.csv", encoding="utf-8")))
    assert [row["pool"] for row in committed] == list(records)
    for row in committed:  # the committed file is what the script writes from the committed CSVs
        assert int(row["detected"]) == records[row["pool"]]["detected"]
        assert int(row["false_alarms"]) == records[row["pool"]]["false_alarms"]


def test_persistence_counts_each_retuned_held_out_model_once_by_outcome(tmp_path, monkeypatch):
    retuned = {"ra_asr": 0.30, "reference_ra_asr": 0.05}  # +25 points: not persistent
    _write(tmp_path, "p", [
        _row("badnet_eight_s1_v0", "badnet", "eight", 3.0, ra_asr=0.08, reference_ra_asr=0.05),  # +3: persistent
        _row("badclip_eight_s1_v0", "badclip", "eight", 3.0, **retuned),
        _row("blended_eight_s1_v0", "blended", "eight", 3.0, cleaned="False", **retuned),
        _row("blended_two_s1_v0", "blended", "two", 0.5, cleaned="False", **retuned),
        _row("badnet_two_s1_v0", "badnet", "two", 3.0, split="development", **retuned),  # not held out
        _row("badnet_six_s1_v0", "badnet", "six", 3.0),  # not retuned
    ])  # fmt: skip
    monkeypatch.setattr(scoreboard, "PERSISTENCE_SETS", ("p",))
    records = {(r["group"], r["outcome"]): r for r in scoreboard.persistence(tmp_path)}
    cleaned = records[("badnet and blended", "cleaned within the bar")]
    assert (cleaned["models"], cleaned["persistent"]) == (1, 1)
    assert cleaned["difference_min_points"] == pytest.approx(3.0)
    assert records[("badclip", "cleaned within the bar")]["not_persistent_models"] == "badclip_eight_s1_v0"
    assert records[("badnet and blended", "detected, not cleaned")]["models"] == 1
    assert records[("every attack", "called clean")]["models"] == 1
    assert sum(records[("every attack", outcome)]["models"] for outcome, _ in scoreboard.OUTCOMES) == 4


def test_the_committed_persistence_table_is_the_scripts():
    committed = list(csv.DictReader(open(scoreboard.RESULTS / "scoreboard_persistence.csv", encoding="utf-8")))
    records = scoreboard.persistence()
    assert [(row["group"], row["outcome"], int(row["models"]), int(row["persistent"])) for row in committed] == [
        (record["group"], record["outcome"], record["models"], record["persistent"]) for record in records
    ]
    for outcome, _ in scoreboard.OUTCOMES:  # the two attack groups add up to every attack
        parts = [r["models"] for r in records if r["outcome"] == outcome and r["group"] != "every attack"]
        whole = [r["models"] for r in records if r["outcome"] == outcome and r["group"] == "every attack"]
        assert len(parts) == 2 and [sum(parts)] == whole


def test_the_suspect_threshold_is_the_rule_s_choice_on_the_development_models():
    """The warning's threshold, written down before its test set was cleaned, is what the rule gives on the
    committed development CSVs; they hold the 10 missed backdoors and 18 never-poisoned models it was chosen on."""
    assert round(scoreboard.suspect_threshold(), 2) == scoreboard.SUSPECT_THRESHOLD
    development = [record for record in scoreboard.suspects() if record["role"] == "development"]
    assert sum(record["missed_backdoors"] for record in development) == 10
    assert sum(record["never_poisoned_called_clean"] for record in development) == 18
    assert sum(record["flagged"] for record in development) == 4
    assert sum(record["never_poisoned_flagged"] for record in development) == 2


def test_the_unhandicapped_lift_takes_the_search_trigger_where_it_is_larger():
    row = _row("m", "badnet", "two", 1.0, max_lift=2.0, max_lift_candidate="two", search_lift=None)
    assert scoreboard.unhandicapped_lift(row) == (2.0, "two")
    row.update(search_lift=3.0, untargeted_winner="seven")
    assert scoreboard.unhandicapped_lift(row) == (3.0, "seven")
    row.update(search_lift=1.5)
    assert scoreboard.unhandicapped_lift(row) == (2.0, "two")
