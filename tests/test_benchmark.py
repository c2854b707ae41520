"""benchmarks/run.py --quick: the whole pipeline (train, defend, complete-unlearning tests, table, CSV, plot)."""

import csv

import pytest
from conftest import load_script


def test_quick_benchmark_writes_table_csv_and_plot(tmp_path):
    benchmark = load_script("benchmarks/run.py")
    output = tmp_path / "bench"
    arguments = ["--quick", "--attacks", "badnet", "--defenses", "finetune", "bibau", "--output", str(output)]
    rows = benchmark.main(arguments)
    # the never-poisoned reference with bibau, the undefended backdoored model, then one row per defense
    assert [(row["attack"], row["defense"]) for row in rows] == [
        ("none", "bibau"), ("badnet", "none"), ("badnet", "finetune"), ("badnet", "bibau"),
    ]  # fmt: skip
    for row in rows:
        for key in ("ca_after", "asr_after", "ra_asr", "reference_ra_asr"):
            assert 0 <= row[key] <= 1, (row["defense"], key)
        assert isinstance(row["reinversion_score"], float) and isinstance(row["reference_score"], float)
    # the reference is measured once per trigger: every badnet row compares with the same numbers
    assert len({row["reference_ra_asr"] for row in rows if row["attack"] == "badnet"}) == 1
    with (output / "results.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 4 and set(benchmark.COLUMNS) == set(table[0])
    bibau = next(row for row in rows if row["attack"] == "badnet" and row["defense"] == "bibau")
    assert bibau["verdict_statistic"] == "winner-or-max-or-search-lift"
    assert bibau["lr"] > 0 and bibau["optimizer_steps"] >= 1
    assert "the winner-or-max-or-search-lift statistic" in (output / "table.md").read_text()
    header = (output / "table.md").read_text().splitlines()[0]
    assert "RA-ASR" in header and "re-inversion score" in header and "peak MiB" in header
    assert (output / "asr_vs_ca.png").stat().st_size > 1000
    # finished jobs are reused: a second call trains and cleans nothing and gives the same rows
    assert benchmark.main(arguments) == rows

    # the image-classifier section: small CNNs poisoned and cleaned by the classifier recipes, same table
    with_cnn = benchmark.main([*arguments, "--classifier"])
    assert with_cnn[: len(rows)] == rows
    cnn = with_cnn[len(rows) :]
    assert [(row["attack"], row["defense"]) for row in cnn] == [
        ("cnn/none", "bibau"), ("cnn/badnet", "bibau"), ("cnn/blended", "bibau"),
    ]  # fmt: skip
    assert all(0 <= row["ca_after"] <= 1 and row["verdict"] is not None for row in cnn)
    assert "cnn/blended" in (output / "table.md").read_text()

    # the persistence study on the same models: mean and spread of RA-ASR over retuning seeds, per setting
    study = load_script("benchmarks/persistence.py").main(
        ["--benchmark-output", str(output), "--seeds", "0", "1", "--settings", "2:0.1:1e-4", "3:0.2:1e-4"]
    )
    assert [(row["defense"], row["setting"]) for row in study] == [
        (defense, setting) for defense in ("reference", "none", "bibau", "finetune")
        for setting in ("2:0.1:1e-4", "3:0.2:1e-4")
    ]  # fmt: skip
    for row in study:
        assert row["n_seeds"] == 2 and 0 <= row["ra_asr_mean"] <= 1 and row["ra_asr_std"] >= 0
    assert "RA-ASR" in (output / "persistence.md").read_text() and (output / "persistence.csv").is_file()

    # the mechanism study: BI-BAU variants x cleaning seeds on the same models, RA-ASR over cleanings x retunings
    quick = ("--rounds 1 --epochs 1 --max-clean-pairs 64 --set inversion.rounds=1 --set inversion.steps_per_round=3 "
             "--set inversion.verdict_steps=2")  # fmt: skip
    mechanisms = load_script("benchmarks/mechanisms.py")
    variants = ["default", "reset10=--set reset_fraction=0.1 --set unlearn_when_clean=true"]
    arguments = ["--benchmark-output", str(output), "--attacks", "badnet", "--variants", *variants,
                 "--clean-seeds", "0", "1", "--seeds", "0", "1", "--setting", "2:0.1:1e-4", "--clean-args", quick,
                 "--jobs", "2"]  # fmt: skip
    study = mechanisms.main(arguments)
    assert [(row["variant"], row["n_cleanings"], row["n_retunes"]) for row in study] == [
        ("default", 2, 4), ("reset10", 2, 4),
    ]  # fmt: skip
    assert study[1]["flags"] == "--set reset_fraction=0.1 --set unlearn_when_clean=true"
    for row in study:
        assert 0 <= row["ra_asr_mean"] <= 1 and 0 <= row["reference_ra_asr_mean"] <= 1 and row["verdicts"]
    assert (output / "mechanisms" / "reset10" / "badnet_s1" / "cleaned").is_dir()
    assert "RA-ASR" in (output / "mechanisms" / "mechanisms.md").read_text()
    assert mechanisms.main(arguments) == study  # finished cleanings are reused
    with pytest.raises(SystemExit):
        mechanisms.main([*arguments, "--variants", "noflags="])


def test_the_table_has_a_seed_column_when_it_holds_several_model_seeds():
    benchmark = load_script("benchmarks/run.py")
    row = {**dict.fromkeys(benchmark.COLUMNS), "attack": "badnet", "defense": "none", "ca_before": 0.96,
           "ca_after": 0.96, "asr_before": 1.0, "asr_after": 1.0}  # fmt: skip
    one = benchmark.markdown_table([{**row, "seed": 0}]).splitlines()
    assert one[0].startswith("| attack |") and one[2].startswith("| badnet | none |")
    two = benchmark.markdown_table([{**row, "seed": 0}, {**row, "seed": 1}]).splitlines()
    assert two[0].startswith("| seed | attack |") and two[1].count("|") == one[1].count("|") + 1
    assert two[2].startswith("| 0 | badnet | none |") and two[3].startswith("| 1 | badnet | none |")
