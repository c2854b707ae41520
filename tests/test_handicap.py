"""benchmarks/handicap.py: the verdict at another lift handicap, from a zoo CSV's recorded lifts, agrees with
clipclean.inversion.verdict_score; an unrecorded search term is read conservatively; the choice rule."""

import csv
import math

import pytest
from conftest import load_script

from clipclean.inversion import search_lift, verdict_score

handicap = load_script("benchmarks/handicap.py")
RATES = [0.12, 0.2, 0.91, 0.25, 0.3, 0.22, 0.35, 0.4, 0.45, 0.18]  # "two" reachable, the search named "eight"


def _blank(**values) -> dict:
    """A zoo row (every column of zoo.csv, typed as read back) with ``values`` set."""
    return {**dict.fromkeys(handicap.zoo.COLUMNS), "poison_converged": True, **values}


def _row(attack: str, search_rate: float | None, recorded: bool = True) -> dict:
    statistic = "winner-or-max-or-search-lift"
    row = {
        **_blank(),
        "attack": attack,
        "winner_lift": verdict_score(RATES, "winner-lift", 8)[0],
        "max_lift": verdict_score(RATES, "max-candidate-lift", None)[0],
        "winner_or_max_lift": verdict_score(RATES, "winner-or-max-lift", 8)[0],
        "winner_or_max_or_search_lift": verdict_score(RATES, statistic, 8, search_rate)[0],
    }
    if recorded:
        row["search_lift"] = search_lift(RATES, search_rate)
    return row


@pytest.mark.parametrize("h", [math.log(10), 1.5, 1.0, 0.3])
@pytest.mark.parametrize("search_rate", [0.4, 0.99])
def test_the_score_at_any_handicap_is_the_library_verdicts(h, search_rate):
    expected = verdict_score(RATES, "winner-or-max-or-search-lift", 8, search_rate, h)[0]
    assert handicap.score_bounds(_row("badnet", search_rate), h) == (pytest.approx(expected), pytest.approx(expected))
    # without search_lift: exact where the search term decided the recorded score, else an upper bound
    low, high = handicap.score_bounds(_row("badnet", search_rate, recorded=False), h)
    assert low <= expected + 1e-9 <= high + 2e-9
    if search_rate == 0.99:
        assert low == pytest.approx(expected) == high


def test_the_conservative_reading_and_the_choice_rule(tmp_path):
    # at ln(10) the backdoored model scores 3.41 - 2.30 < 1.29 (a miss); from a handicap of 2.0 down it is detected
    backdoored = _row("blended", 0.4)
    assert handicap.counts([backdoored], math.log(10))["detected"] == 0
    assert handicap.counts([backdoored], 2.0)["detected"] == 1
    # a never-poisoned model whose unrecorded search term could pass the threshold counts as a false alarm
    clean = _blank(attack="none", winner_lift=0.5, max_lift=0.6, winner_or_max_lift=0.5)
    unknown = {**clean, "winner_or_max_or_search_lift": 0.5}  # the search term is at most 0.5 + ln(10) - h
    assert handicap.counts([unknown], 1.0)["false_alarms"] == 1
    assert handicap.counts([unknown], 2.0)["false_alarms"] == 0
    assert handicap.counts([{**unknown, "search_lift": 0.7}], 1.0)["false_alarms"] == 0  # recorded: exact
    # the rule: the largest TPR - FPR, ties to the larger handicap
    assert handicap.choose([backdoored]) == 2.0 == handicap.choose([backdoored, unknown])
    closer = {**clean, "winner_or_max_or_search_lift": 1.0}  # a possible false alarm from 2.0 down
    assert handicap.choose([backdoored, closer]) == math.log(10)
    path = tmp_path / "zoo.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(backdoored))
        writer.writeheader()
        writer.writerow({**backdoored, "name": "a", "split": "development", "poison_converged": True})
        writer.writerow({**backdoored, "name": "b", "split": "fresh", "poison_converged": False})  # not counted
    result = handicap.main(["--choose", f"{path}:development", "--test", str(path)])
    assert result["chosen"] == 2.0 and result["table"]["2.00"][f"{path}"]["n_backdoored"] == 1
