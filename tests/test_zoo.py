"""benchmarks/zoo.py: the population's composition and split rule, and a two-model zoo end to end (tiny budgets)."""

import csv
from collections import Counter

import pytest
from conftest import load_script

zoo = load_script("benchmarks/zoo.py")

TINY_CLEAN = (
    "--max-clean-pairs 64 --batch-size 32 --rounds 1 --epochs 1 --set inversion.rounds=1 "
    "--set inversion.steps_per_round=3 --set inversion.verdict_steps=2 --set reinversion_steps=2"
)


def test_the_default_zoo_and_its_split_rule():
    models = zoo.zoo_models()
    backdoored = [model for model in models if model.attack != "none"]
    clean = [model for model in models if model.attack == "none"]
    assert len(backdoored) == 36 and len(clean) == 12
    assert len({model.name for model in models}) == len(models)
    assert "zero" not in {model.target for model in backdoored}
    # each attack has 4 targets x 3 seeds, two trigger variants; the split is the variant (target + seed parity)
    for attack in zoo.ATTACKS:
        chosen = [model for model in backdoored if model.attack == attack]
        assert len({model.target for model in chosen}) == 4 and len({model.seed for model in chosen}) == 3
        assert Counter(model.split for model in chosen) == {"development": 6, "held-out": 6}
        for key in ("target", "seed", "variant"):  # every target, seed and variant in both halves
            for value in {getattr(model, key) for model in chosen}:
                assert {model.split for model in chosen if getattr(model, key) == value} == {"development", "held-out"}
        assert {tuple(model.poison_args) for model in chosen if model.variant == 0}.isdisjoint(
            {tuple(model.poison_args) for model in chosen if model.variant == 1}
        )
    assert Counter(model.split for model in clean) == {"development": 6, "held-out": 6}
    # the rule is a function of the model's identity only: the same model lands in the same half in any zoo
    smaller = {model.name: model.split for model in zoo.zoo_models(seeds=(0, 1), clean_seeds=(0, 1))}
    assert all(smaller[model.name] == model.split for model in models if model.name in smaller)


def test_wilson_interval():
    low, high = zoo.wilson_interval(9, 10)
    assert 0.59 < low < 0.6 and 0.98 < high < 0.99
    assert zoo.wilson_interval(0, 5)[0] == 0.0


def test_a_two_model_zoo_end_to_end(tmp_path):
    arguments = [
        "--zoo-dir", str(tmp_path / "zoo"), "--output", str(tmp_path / "report"), "--attacks", "badnet",
        "--targets", "three", "--seeds", "0", "--clean-seeds", "0", "--jobs", "2",
        "--poison-args", "--max-steps 3 --batch-size 64", "--clean-args", TINY_CLEAN,
    ]  # fmt: skip
    result = zoo.main(arguments)
    rows = {row["name"]: row for row in result["rows"]}
    assert set(rows) == {"badnet_three_s0_v0", "none_s0"}
    backdoored, clean = rows["badnet_three_s0_v0"], rows["none_s0"]
    assert backdoored["target"] == "three" and backdoored["split"] == "development" == clean["split"]
    assert backdoored["named_correctly"] == (backdoored["recovered_target"] == "three")
    assert clean["named_correctly"] is None and clean["cleaned"] is None
    assert backdoored["cleaned"] == (
        backdoored["asr_after"] < 0.05 and backdoored["ca_before"] - backdoored["ca_after"] <= 0.02
    )
    metrics = result["metrics"]["development"]["all"]
    assert metrics["n_backdoored"] == 1 and metrics["n_clean"] == 1
    higher, lower = backdoored["anomaly_index"], clean["anomaly_index"]
    assert metrics["roc_auc"] == (1.0 if higher > lower else 0.0 if higher < lower else 0.5)
    assert "held-out" not in result["metrics"]  # no held-out model in this zoo
    assert metrics["false_positive"]["k"] == int(clean["verdict"] == "backdoored")
    assert metrics["clean_winner"] == {clean["recovered_target"]: 1}
    with (tmp_path / "report" / "zoo.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 2
    assert (tmp_path / "report" / "zoo.md").read_text().count("| development |") >= 1
    assert (tmp_path / "report" / "zoo_roc.png").stat().st_size > 1000
    # finished jobs are reused: a report-only call gives the same rows
    assert zoo.main([*arguments, "--report-only"])["rows"] == result["rows"]


@pytest.mark.slow
def test_a_small_zoo_with_default_budgets(tmp_path):
    """Three backdoored models (one per attack) and two never-poisoned ones, default recipes."""
    arguments = ["--zoo-dir", str(tmp_path / "zoo"), "--output", str(tmp_path / "report"), "--targets", "three",
                 "--seeds", "1", "--clean-seeds", "1", "4", "--jobs", "2"]  # fmt: skip
    result = zoo.main(arguments)
    rows = {row["name"]: row for row in result["rows"]}
    assert len(rows) == 5
    for attack in zoo.ATTACKS:
        row = rows[f"{attack}_three_s1_v0"]
        assert row["poison_converged"] and row["asr_poisoned"] >= 0.9, row
        assert row["verdict"] == "backdoored" and row["named_correctly"], row
        assert row["cleaned"], row
    assert rows["none_s1"]["verdict"] == "no backdoor found"


def test_the_threshold_is_chosen_on_the_scores_given():
    assert zoo.choose_threshold([1.0, 1.3, 1.5, 2.9, 4.0], [False, False, False, True, True]) == pytest.approx(2.2)
    # one clean model above a backdoored one: the largest TPR - FPR, the smaller threshold on ties
    assert zoo.choose_threshold([1.0, 3.3, 2.9, 4.0], [False, False, True, True]) == pytest.approx(1.95)
