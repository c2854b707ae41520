"""benchmarks/zoo.py: the population's composition and split rule, and a two-model zoo end to end (tiny budgets)."""

import csv
import json
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


def test_the_build_order_interleaves_kinds_so_a_partial_zoo_covers_each():
    models = zoo.zoo_models()
    ordered = zoo.interleaved(models)
    assert sorted(model.name for model in ordered) == sorted(model.name for model in models)
    assert [model.attack for model in ordered[:8]] == ["none", *zoo.ATTACKS] * 2
    first_half = ordered[: len(ordered) // 2]  # a build stopped halfway: every kind and both splits present
    for kind in ("none", *zoo.ATTACKS):
        assert {model.split for model in first_half if model.attack == kind} == {"development", "held-out"}


def test_the_cnn_zoo_has_34_models_16_never_poisoned_split_by_the_same_rule():
    models = zoo.zoo_models(family="cnn")
    assert len(models) == 34 and sum(model.attack == "none" for model in models) == 16
    assert all(model.name.startswith("cnn_") and model.family == "cnn" for model in models)
    assert Counter(model.split for model in models) == {"development": 18, "held-out": 16}
    assert Counter(model.split for model in models if model.attack == "none") == {"development": 8, "held-out": 8}
    # the benchmark's seed-0 CNNs (the recipe's default trigger toward "zero") are development models
    benchmark = [model for model in models if model.variant == zoo.DEFAULT_TRIGGER]
    assert {(m.name, m.split) for m in benchmark} == {("cnn_badnet_zero_s0_v2", "development"),
                                                      ("cnn_blended_zero_s0_v2", "development")}  # fmt: skip
    assert all("--trigger-size" not in m.poison_args and "--alpha" not in m.poison_args for m in benchmark)
    for attack in ("badnet", "blended"):
        chosen = [model for model in models if model.attack == attack]
        assert {model.split for model in chosen} == {"development", "held-out"}
        assert {model.variant for model in chosen} == {0, 1, zoo.DEFAULT_TRIGGER}
    assert not {model.name for model in models} & {model.name for model in zoo.zoo_models()}  # own folders
    fresh = zoo.zoo_models(family="cnn", fresh=True)  # new seeds only, all held out
    assert len(fresh) == 16 and {model.split for model in fresh} == {"fresh"}
    assert not {model.name for model in fresh} & {model.name for model in models}


def test_the_fresh_held_out_set_has_new_seeds_and_is_held_out_whole():
    fresh = zoo.zoo_models(fresh=True)
    names = {model.name for model in zoo.zoo_models()}
    assert not names & {model.name for model in fresh}  # new models, never seen while the defaults were chosen
    assert {model.split for model in fresh} == {"fresh"} and all(model.held_out for model in fresh)
    backdoored = [model for model in fresh if model.attack != "none"]
    assert {model.seed for model in backdoored} == set(zoo.FRESH["clip"]["seeds"]) == {3, 4}
    assert len(backdoored) == 24 and sum(model.attack == "none" for model in fresh) == 6
    for attack in zoo.ATTACKS:  # every target, both trigger variants
        chosen = [model for model in backdoored if model.attack == attack]
        assert {model.target for model in chosen} == set(zoo.DEFAULT_TARGETS)
        assert {model.variant for model in chosen} == {0, 1}
    # building one split reports them all, each model once
    for split in ("development", "fresh"):
        args = zoo.parse_args(["--split", split])
        reported = zoo.reported_models(zoo.selected_models(args), args)
        assert len(reported) == len({model.name for model in reported}) == 48 + 30
        assert {model.split for model in zoo.selected_models(args)} == {split}


def test_wilson_interval():
    low, high = zoo.wilson_interval(9, 10)
    assert 0.59 < low < 0.6 and 0.98 < high < 0.99
    assert zoo.wilson_interval(0, 5)[0] == 0.0


def test_a_two_model_zoo_end_to_end(tmp_path):
    arguments = [
        "--zoo-dir", str(tmp_path / "zoo"), "--output", str(tmp_path / "report"), "--attacks", "badnet",
        "--targets", "three", "--seeds", "0", "--clean-seeds", "0", "--jobs", "2",
        # 3 steps learn nothing: the convergence bars at 0 let the backdoored model count as backdoored, so that the
        # metrics below are exercised (a model the attack did not implant is tested on its own above)
        "--poison-args", "--max-steps 3 --batch-size 64 --min-clean-accuracy 0 --min-asr 0",
        "--clean-args", TINY_CLEAN,
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
    score = zoo.default_score_column()  # the ROC scores every model with the library's default statistic
    higher, lower = backdoored[score], clean[score]
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
    # a lost cache: every model's row comes back, typed as before, from the CSV written above
    lost = ["--zoo-dir", str(tmp_path / "lost"), "--rows-from", str(tmp_path / "report" / "zoo.csv"),
            "--output", str(tmp_path / "again")]  # fmt: skip
    assert zoo.main([*arguments, "--report-only", *lost])["rows"] == result["rows"]
    assert backdoored["poison_rate"] == pytest.approx(0.05, abs=0.005) and clean["poison_rate"] == 0
    # a cleaning with another verdict lives next to the default one and is reported on its own
    statistic = "--set inversion.verdict_statistic=max-candidate-logit"
    other = zoo.main([*arguments[:-1], f"{TINY_CLEAN} {statistic}", "--clean-name", "clean_mcl"])
    recorded = json.loads((tmp_path / "zoo" / "none_s0" / "clean_mcl" / "results.json").read_text())
    assert recorded["config"]["defense"]["inversion"]["verdict_statistic"] == "max-candidate-logit"
    assert (tmp_path / "report" / "zoo_clean_mcl.csv").is_file() and len(other["rows"]) == 2
    assert zoo.main([*arguments, "--report-only"])["rows"] == result["rows"]  # the default cleaning is untouched
    # the baselines' learning rate is tuned on this zoo's development model at an equal (here tiny) budget
    from baselines import parse_args, tune

    tiny = "--max-clean-pairs 64 --batch-size 32"
    tuning = tune(parse_args(["--zoo-dir", str(tmp_path / "zoo"), "--output", str(tmp_path / "report"),
                              "--targets", "three", "--seeds", "0", "--defenses", "finetune", "--lrs", "1e-5",
                              "1e-3", "--total-epochs", "1",
                              "--clean-args", tiny]))  # fmt: skip
    assert tuning["models"] == ["badnet_three_s0_v0"] and len(tuning["runs"]) == 2
    assert tuning["chosen"]["finetune"] in (1e-5, 1e-3)
    assert json.loads((tmp_path / "report" / "baseline_lr.json").read_text())["chosen"] == tuning["chosen"]
    assert len((tmp_path / "report" / "baseline_lr.csv").read_text().splitlines()) == 1 + len(tuning["runs"])
    for run in tuning["runs"]:
        used = json.loads((tmp_path / "zoo" / run["model"] / "baselines" / f"finetune_lr{run['lr']:g}" /
                           "results.json").read_text())["config"]  # fmt: skip
        assert used["defense"]["lr"] == run["lr"] and used["defense"]["epochs"] == 1
    # a baseline cleans the same zoo at the chosen rate, in its own cleaning folder; --compare: side by side
    from baselines import compare, flags

    finetune = flags("finetune", tmp_path / "report" / "baseline_lr.json", total_epochs=1)
    assert finetune == [
        "--defense",
        "finetune",
        "--rounds",
        "1",
        "--epochs",
        "1",
        "--lr",
        f"{tuning['chosen']['finetune']:g}",
    ]
    zoo.main([*arguments[:-1], f"{tiny} {' '.join(finetune)}", "--clean-name", "clean_finetune"])
    used = json.loads((tmp_path / "zoo" / "badnet_three_s0_v0" / "clean_finetune" / "results.json").read_text())
    assert used["defense"] == "finetune" and used["config"]["defense"]["epochs"] == 1
    report = tmp_path / "report"
    compared = compare([f"bibau={report / 'zoo.csv'}", f"finetune={report / 'zoo_clean_finetune.csv'}"],
                       report / "defenses")  # fmt: skip
    assert set(compared) == {"bibau", "finetune"} and compared["finetune"]["backdoored"] == 1
    assert compared["bibau"]["cleaned"] == int(bool(backdoored["cleaned"]))
    assert (report / "defenses.md").read_text().count("| finetune |") == 2  # a row in each table
    assert not (report / "zoo_clean_finetune_roc.png").exists()  # a baseline gives no verdict score to plot
    # ... nor detection numbers: its report leaves those cells empty rather than counting 0 detections
    assert (
        "| development | all: 1 backdoored + 1 clean | - | - | - | - |"
        in (report / "zoo_clean_finetune.md").read_text()
    )
    assert json.loads((report / "defenses.json").read_text())["files"]["finetune"].endswith("zoo_clean_finetune.csv")


@pytest.mark.slow
def test_a_small_zoo_with_default_budgets(tmp_path):
    """Three backdoored models (one per attack) and two never-poisoned ones, default recipes.

    Known miss, left failing (2026-12-07, on a machine whose float differences retrain the models like another seed):
    the default verdict called the seed-1 BadNet model clean (ASR 91.5%, target "three" named, score 0.63 under the
    threshold 1.29). The zoo's held-out sets count such misses (benchmarks/README.md); no threshold was moved."""
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


def _statistic_entry(statistic, threshold, detected, named, false_alarms, n_backdoored=6, n_clean=3):
    development = {"detected": detected, "n_backdoored": n_backdoored, "named": named,
                   "false_alarms": false_alarms, "n_clean": n_clean}  # fmt: skip
    return {"statistic": statistic, "threshold": threshold, "development": development, "held-out": None}


def test_the_verdict_is_selected_on_development_numbers_by_the_fixed_rule():
    default = _statistic_entry(*zoo.PREVIOUS_DEFAULT, 3, 4, 0)
    better = _statistic_entry("max-candidate-logit", 2.5, 5, 3, 0)
    assert zoo.select_statistic([default, better]) is better  # TPR - FPR first
    noisier = _statistic_entry("max-candidate", 2.5, 6, 3, 1)  # 1 - 1/3 < 5/6
    assert zoo.select_statistic([default, noisier, better]) is better
    named = _statistic_entry("winner-logit", 3.1, 5, 5, 0)
    assert zoo.select_statistic([default, better, named]) is named  # then naming
    tie = _statistic_entry("winner-logit", 3.1, 3, 4, 0)
    assert zoo.select_statistic([tie, default]) is default  # then the recipe's default


def test_every_verdict_statistic_is_computed_from_the_recorded_candidate_asrs():
    from clipclean.inversion import VERDICT_STATISTICS, verdict_score

    assert set(zoo.VERDICT_STATISTICS) == set(VERDICT_STATISTICS)
    asr = {"zero": 0.56, "one": 0.08, "two": 0.41, "three": 0.996, "four": 0.72, "five": 0.21}
    columns = zoo.verdict_statistic_columns(asr, {"recovered_target": "four", "named_by": "untargeted search"})
    assert columns["max_candidate"] == columns["max_logit_candidate"] == "three"
    assert columns["winner_logit_index"] == verdict_score(list(asr.values()), "winner-logit", 4)[0]
    assert columns["max_logit_index"] > columns["max_anomaly_index"]
    assert set(columns) <= set(zoo.COLUMNS)
    # the verdict named another class: the winner statistics score the recorded untargeted winner...
    adopted = {"recovered_target": "three", "named_by": "verdict", "untargeted_winner": "four"}
    expected = verdict_score(list(asr.values()), "winner-lift", 4)[0]
    assert zoo.verdict_statistic_columns(asr, adopted)["winner_lift"] == expected
    # ... and are unknown (None) in a report from before it was recorded, not the named class's
    unknown = zoo.verdict_statistic_columns(asr, {"recovered_target": "three", "named_by": "verdict"})
    assert unknown["winner_lift"] is None and unknown["winner_or_max_lift"] is None
    assert unknown["max_lift"] == columns["max_lift"]
    # the search-trigger statistic only where the report recorded the search trigger's ASR
    assert columns.get("winner_or_max_or_search_lift") is None
    searched = {"recovered_target": "four", "named_by": "untargeted search", "search_trigger_asr": 0.9}
    expected = verdict_score(list(asr.values()), "winner-or-max-or-search-lift", 4, 0.9)
    with_search = zoo.verdict_statistic_columns(asr, searched)
    assert (with_search["winner_or_max_or_search_lift"], with_search["winner_or_max_or_search_lift_candidate"]) == (
        expected[0],
        list(asr)[expected[1]],
    )
    # the search trigger's unhandicapped lift, from which any lift_handicap's score follows
    assert columns["search_lift"] is None and unknown["search_lift"] is None
    from clipclean.inversion import search_lift

    assert with_search["search_lift"] == search_lift(list(asr.values()), 0.9)
    handicapped = verdict_score(list(asr.values()), "winner-or-max-or-search-lift", 4, 0.9, 1.0)[0]
    recomputed = max(with_search["winner_lift"], with_search["max_lift"] - 1.0, with_search["search_lift"] - 1.0)
    assert handicapped == pytest.approx(recomputed)


def test_the_recorded_verdict_statistic_of_old_and_new_cleanings():
    assert zoo.recorded_statistic({"inversion": {"verdict_statistic": "max-candidate"}}, "clip") == "max-candidate"
    new = {"inversion": {}, "config": {"defense": {"inversion": {"verdict_statistic": None}}}}
    # a run from before the report recorded the statistic: the first per-inverter default, not today's
    assert zoo.recorded_statistic(new, "clip") == "winner-lift" and zoo.recorded_statistic(new, "cnn") == "winner"
    recorded = {"inversion": {"verdict_statistic": "winner-or-max-lift"}, "config": new["config"]}
    assert zoo.recorded_statistic(recorded, "clip") == "winner-or-max-lift"
    old = {"inversion": {}, "config": {"defense": {"inversion": {"anomaly_threshold": 2.5}}}}
    assert zoo.recorded_statistic(old, "clip") == "winner"


def test_equal_budget_gives_every_baseline_bibau_passes_over_the_defender_data():
    from baselines import bibau_epochs, equal_budget

    from clipclean.defenses import DEFENSES

    total = bibau_epochs()
    bibau = DEFENSES["bibau"][0]()
    assert total == bibau.rounds * bibau.epochs
    for defense in ("finetune", "cleanclip", "baerase", "age", "ibau"):
        flags = equal_budget(defense, lr=3e-4)
        rounds, epochs = int(flags[flags.index("--rounds") + 1]), int(flags[flags.index("--epochs") + 1])
        assert rounds == DEFENSES[defense][0]().rounds and total <= rounds * epochs < total + rounds
        assert flags[-2:] == ["--lr", "0.0003"]
    assert "--lr" not in equal_budget("finetune")


def test_the_baseline_learning_rate_is_chosen_by_successes_then_cost():
    from baselines import choose

    runs = [
        {"lr": 1e-4, "cleaned": False, "asr_after": 0.5, "ca_drop": 0.0},
        {"lr": 1e-4, "cleaned": True, "asr_after": 0.01, "ca_drop": 0.0},
        {"lr": 1e-3, "cleaned": True, "asr_after": 0.02, "ca_drop": 0.01},
        {"lr": 1e-3, "cleaned": True, "asr_after": 0.0, "ca_drop": 0.015},
        {"lr": 3e-3, "cleaned": True, "asr_after": 0.0, "ca_drop": 0.0},
        {"lr": 3e-3, "cleaned": False, "asr_after": 0.0, "ca_drop": 0.2},  # too high: clean accuracy collapses
    ]
    assert choose(runs) == 1e-3  # two successes each for 1e-3 and 3e-3; 1e-3 costs less
    assert choose(runs[:2]) == 1e-4


def test_baseline_tuning_uses_development_models_only(tmp_path):
    from baselines import development_models

    for model in zoo.zoo_models():  # pretend every model's poisoning has finished
        (tmp_path / model.name / "poison").mkdir(parents=True)
        (tmp_path / model.name / "poison" / "results.json").write_text("{}")
    chosen = development_models(tmp_path, per_attack=10)
    assert chosen and all(not model.held_out and model.attack != "none" for model in chosen)
    assert {model.attack for model in chosen} == set(zoo.ATTACKS)
    assert len(development_models(tmp_path, per_attack=1)) == len(zoo.ATTACKS)


def test_a_widened_learning_rate_grid_keeps_the_earlier_runs_of_the_same_models(tmp_path):
    from baselines import CHOSEN_FILENAME, choose, extended

    def run(lr, cleaned, asr, model="m"):
        return {"model": model, "attack": "badnet", "defense": "ibau", "lr": lr, "asr_after": asr, "ca_drop": 0.0,
                "cleaned": cleaned}  # fmt: skip

    earlier = {"models": ["m"], "lrs": [1e-4, 1e-3], "runs": [run(1e-4, False, 0.5), run(1e-3, False, 0.2)]}
    (tmp_path / CHOSEN_FILENAME).write_text(json.dumps(earlier))
    now = [run(3e-3, True, 0.01), run(1e-3, False, 0.3)]
    runs, lrs = extended(tmp_path / CHOSEN_FILENAME, now, ["m"], [3e-3, 1e-3])
    assert lrs == [1e-4, 1e-3, 3e-3]
    assert sorted((r["lr"], r["asr_after"]) for r in runs) == [(1e-4, 0.5), (1e-3, 0.3), (3e-3, 0.01)]  # redone wins
    assert choose(runs) == 3e-3
    with pytest.raises(SystemExit, match="tuned on"):
        extended(tmp_path / CHOSEN_FILENAME, [], ["other"], [3e-3])

    # a tuning with other flags (--tag): its folders are apart, and --flags prints the flags it ran with
    from baselines import flags, run_folder

    tagged = tmp_path / "tagged.json"
    tagged.write_text(
        json.dumps({"chosen": {"cleanclip": 3e-4}, "tag": "noflip", "clean_args": "--set flip_probability=0"})
    )
    assert flags("cleanclip", tagged)[-4:] == ["--lr", "0.0003", "--set", "flip_probability=0"]
    model = zoo.zoo_models()[0]
    assert run_folder(tmp_path, model, "cleanclip", 3e-4, "noflip").name == "cleanclip_noflip_lr0.0003"
    assert run_folder(tmp_path, model, "cleanclip", 3e-4).name == "cleanclip_lr0.0003"


def test_a_model_the_attack_did_not_implant_is_not_counted_as_backdoored():
    def row(name, attack, converged, index, verdict):
        return {"name": name, "split": "held-out", "attack": attack, "target": "three", "poison_converged": converged,
                "anomaly_index": index, zoo.default_score_column(): index, "verdict": verdict,
                "recovered_target": "three",
                "named_correctly": attack != "none" or None, "cleaned": attack != "none" or None,
                "ca_before": 0.95, "ca_after": 0.95, "clean_wall_s": 1.0}  # fmt: skip

    rows = [row("a", "badnet", True, 5.0, "backdoored"), row("b", "badnet", False, 0.5, "no backdoor found"),
            row("c", "none", True, 1.0, "no backdoor found")]  # fmt: skip
    metrics = zoo.split_metrics(rows)
    assert metrics["n_backdoored"] == 1 and metrics["poison_not_converged"] == 1
    assert metrics["true_positive"]["k"] == 1 and metrics["roc_auc"] == 1.0
    assert "did not implant" in zoo.markdown({"held-out": {"all": metrics}}, [], [])


def test_a_two_model_cnn_zoo_end_to_end(tmp_path):
    """The degenerate case through the classifier recipes: one backdoored and one never-poisoned small CNN."""
    result = zoo.main([
        "--family", "cnn", "--zoo-dir", str(tmp_path / "zoo"), "--output", str(tmp_path / "report"),
        "--attacks", "blended", "--targets", "three", "--seeds", "0", "--clean-seeds", "0", "--jobs", "2",
        "--poison-args", "--epochs 1", "--clean-args", TINY_CLEAN.replace("--batch-size 32 ", ""),
    ])  # fmt: skip
    rows = {row["name"]: row for row in result["rows"]}
    assert set(rows) == {"cnn_blended_three_s0_v0", "cnn_none_s0"}
    cleaning = json.loads((tmp_path / "zoo" / "cnn_none_s0" / "clean" / "results.json").read_text())
    assert cleaning["config"]["defense"]["rounds"] == 1  # --clean-args come after the CNN flags, and win
    assert cleaning["config"]["defense"]["unlearning_budget"] == 0.1  # the CNN flags of classifier.md
    assert (tmp_path / "report" / "zoo_cnn.csv").is_file() and not (tmp_path / "report" / "zoo.csv").exists()


def test_the_retuning_attack_runs_on_held_out_models_of_each_attack_and_target_whose_backdoor_took(tmp_path):
    models = zoo.zoo_models()
    for model in models:  # every poisoning finished; the attack did not take on badnet_one_s1_v1
        (tmp_path / model.name / "poison").mkdir(parents=True)
        converged = model.name != "badnet_one_s1_v1"
        (tmp_path / model.name / "poison" / "results.json").write_text(json.dumps({"converged": converged}))
    chosen = zoo.persistence_models(models, tmp_path, 1)
    assert all(model.held_out and model.attack != "none" for model in chosen)
    # badnet_one_s1_v1 is the only held-out BadNet model toward "one": that pair has no model to retune
    expected = {(attack, target): 1 for attack in zoo.ATTACKS for target in zoo.DEFAULT_TARGETS}
    del expected[("badnet", "one")]
    assert Counter((model.attack, model.target) for model in chosen) == expected
    only_three = zoo.persistence_models(models, tmp_path, 1, targets=["three"])
    assert [model.name for model in only_three] == ["badnet_three_s0_v0", "blended_three_s0_v0", "badclip_three_s0_v0"]
    # targets one and five have one held-out model per attack, three and eight two
    assert len(zoo.persistence_models(models, tmp_path, 2)) == 3 * (2 + 2 + 1 + 1) - 1


def test_the_report_lists_the_retuned_models_against_the_persistence_criterion():
    base = {"verdict": "backdoored", "cleaned": True, "asr_after": 0.003}
    rows = [
        {**base, "name": "within", "ra_asr": 0.14, "reference_ra_asr": 0.05},
        {**base, "name": "outside", "ra_asr": 0.16, "reference_ra_asr": 0.05},
        {**base, "name": "not_retuned", "ra_asr": None, "reference_ra_asr": None},
    ]
    lines = zoo.persistence_lines(rows, "<!-- derived -->")
    table = [line for line in lines if line.startswith("| within") or line.startswith("| outside")]
    assert table == [
        "| within | backdoored | True | 0.3 | 14.0 | 5.0 | +9.0 | True |",
        "| outside | backdoored | True | 0.3 | 16.0 | 5.0 | +11.0 | False |",
    ]
    assert "10 points" in "".join(lines) and not any("not_retuned" in line for line in lines)
    assert zoo.persistence_lines(rows[2:]) == []


poisoning = load_script("benchmarks/poisoning.py")


def test_the_poisoning_grid_runs_the_recipe_at_its_defaults_and_flags_runs_below_the_bar(tmp_path):
    rows = poisoning.main([
        "--zoo-dir", str(tmp_path / "zoo"), "--output", str(tmp_path / "report"), "--attacks", "blended",
        "--targets", "three", "--seeds", "1", "--poison-args", "--epochs 1",
    ])  # fmt: skip
    assert [row["name"] for row in rows] == ["blended_three_s1"]
    recorded = json.loads((tmp_path / "zoo" / "poison_defaults" / "blended_three_s1" / "results.json").read_text())
    attack = recorded["config"]["attack"]["config"]
    assert attack["alpha"] == 0.2 and attack["pattern"] == "noise" and recorded["target"] == "three"  # defaults
    assert rows[0]["usable"] == (rows[0]["ca"] >= 0.9 and rows[0]["asr"] >= 0.9)
    table = (tmp_path / "report" / "poisoning.md").read_text()
    assert "| blended | 1 |" in table and "blended_three_s1" in table  # one epoch cannot implant: listed below
    again = poisoning.main(["--zoo-dir", str(tmp_path / "zoo"), "--output", str(tmp_path / "report"), "--report-only",
                            "--attacks", "blended", "--targets", "three", "--seeds", "1"])  # fmt: skip
    assert again == rows  # cached: the report reads the finished run back


def test_ties_on_the_development_half_go_to_the_statistic_that_separates_the_two_kinds_widest():
    assert zoo.separation([5.0, 9.0], [1.0, 3.0]) == 2.0  # (5 - 3) / pstdev([1, 3])
    assert zoo.separation([2.0], [1.0, 3.0]) < 0  # overlap
    development = {"n_backdoored": 2, "n_clean": 2, "detected": 2, "false_alarms": 0, "named": 2}
    thin = {"statistic": "winner", "threshold": 7.0, "development": {**development, "separation": 0.8}}
    wide = {"statistic": "max-candidate-logit", "threshold": 2.5, "development": {**development, "separation": 6.2}}
    assert zoo.select_statistic([thin, wide]) is wide  # not the first of equals any more
    better = {"statistic": "winner", "threshold": 7.0, "development": {**development, "false_alarms": 0,
              "detected": 2, "named": 2, "separation": 0.1}}  # fmt: skip
    worse = {**wide, "development": {**development, "detected": 1, "separation": 9.0}}
    assert zoo.select_statistic([worse, better]) is better  # detection first, separation only breaks ties


def test_the_verdict_can_be_chosen_on_an_earlier_zoo_and_every_split_is_then_a_test(tmp_path):
    def row(name, split, attack, score):
        scores = {score_key: score for score_key, _ in zoo.VERDICT_STATISTICS.values()}
        named = {name_key: "three" for _, name_key in zoo.VERDICT_STATISTICS.values()}
        return {**{column: None for column in zoo.COLUMNS}, **scores, **named, "name": name, "split": split,
                "attack": attack, "target": "three" if attack != "none" else "", "poison_converged": True,
                "anomaly_index": score, "verdict": "backdoored"}  # fmt: skip

    earlier = [row("a", "development", "badnet", 6.0), row("b", "held-out", "badnet", 4.0),
               row("c", "development", "none", 1.0), row("d", "held-out", "none", 3.0)]  # fmt: skip
    new = [row("e", "fresh", "badnet", 3.4), row("f", "fresh", "none", 3.6)]
    table = zoo.statistic_rows(new, earlier)
    chosen = [entry for entry in table if entry["threshold_rule"] == "chosen on --choose-from"]
    assert chosen and all(entry["threshold"] == 3.5 for entry in chosen)  # between 3.0 (clean) and 4.0 (backdoored)
    assert all(entry["chosen_on"]["detected"] == 2 and entry["chosen_on"]["false_alarms"] == 0 for entry in chosen)
    assert all(entry["fresh"]["detected"] == 0 and entry["fresh"]["false_alarms"] == 1 for entry in chosen)
    assert sum(entry["selected"] for entry in table) == 1 and all("development" in entry for entry in table)
    without = zoo.statistic_rows(earlier)  # the development half alone: 6.0 vs 1.0
    assert {entry["threshold"] for entry in without if entry["threshold_rule"] == "chosen on development"} == {3.5}
    text = zoo.markdown({}, new, table)
    assert "chosen on (--choose-from): detected" in text and "fresh: detected" in text
    alone = zoo.markdown({}, new, zoo.statistic_rows(new))  # nothing to choose a threshold on: no empty table
    assert zoo.statistic_rows(new) == [] and "| verdict statistic |" not in alone and "| e | fresh |" in alone


def test_the_zoo_reports_each_family_at_its_inverters_default_threshold():
    assert zoo.default_threshold("winner-lift", "cnn") == 3.22 and zoo.default_threshold("winner-lift", "clip") == 1.29
    assert zoo.default_threshold("winner", "cnn") == zoo.default_threshold("winner", "clip") == 2.5


def test_the_poison_rate_reaches_backdoored_models_and_their_badclip_surrogate_stays_never_poisoned(
    tmp_path, monkeypatch
):
    calls = []
    monkeypatch.setattr(
        zoo, "run_script", lambda script, arguments, output: calls.append((output.parent.name, arguments))
    )
    args = zoo.parse_args(["--poison-rate", "0.02"])
    for model in zoo.zoo_models(["two"], [7], [40], ["badnet", "badclip"], fresh=True):
        zoo.poison(model, tmp_path, args)
    rates = {name: arguments[arguments.index("--poison-rate") + 1] if "--poison-rate" in arguments else None
             for name, arguments in calls}  # fmt: skip
    assert rates == {"badnet_two_s7_v0": "0.02", "none_s10": None, "badclip_two_s7_v0": "0.02", "none_s40": None}
    assert all("--poison-count" in arguments for name, arguments in calls if name.startswith("none"))
    assert zoo.parse_args([]).poison_rate is None  # the recipe's own default otherwise


def test_the_confirmed_lift_columns_take_the_largest_confirmed_lift():
    assert zoo.confirmed_columns({"confirmed_lifts": {"two": 3.2, "nine": 0.4}}) == {
        "confirmed_lift": 3.2,
        "confirmed_candidate": "two",
    }
    nothing = {"confirmed_lift": None, "confirmed_candidate": None}
    assert zoo.confirmed_columns({}) == nothing == zoo.confirmed_columns({"confirmed_lifts": {}})
    assert {"confirmed_lift", "confirmed_candidate"} <= set(zoo.COLUMNS) and "confirmed_candidate" in zoo.TEXT_COLUMNS


def test_no_backdoored_seeds_builds_never_poisoned_models_only():
    args = zoo.parse_args(["--split", "fresh", "--seeds", "--clean-seeds", "50", "51"])
    models = zoo.selected_models(args)
    assert [model.name for model in models] == ["none_s50", "none_s51"] and all(m.split == "fresh" for m in models)


def test_defenses_are_compared_on_the_same_models_with_intervals():
    from baselines import compare_defenses, compare_markdown, mean_interval

    def row(name, attack, cleaned=None, asr_after=0.0, drop=0.0, converged=True):
        return {
            "name": name,
            "attack": attack,
            "cleaned": cleaned,
            "asr_after": asr_after,
            "ca_before": 0.95,
            "ca_after": 0.95 - drop,
            "poison_converged": converged,
        }

    bibau = {"a": row("a", "badnet", True, 0.01), "b": row("b", "blended", True, 0.0, 0.01),
             "c": row("c", "badclip", False, 0.9), "d": row("d", "badnet", False, 0.02, converged=False),
             "n": row("n", "none", drop=0.0)}  # fmt: skip
    finetune = {"a": row("a", "badnet", False, 0.6), "b": row("b", "blended", True, 0.03),
                "c": row("c", "badclip", False, 0.8), "d": row("d", "badnet", False, 0.02, converged=False),
                "n": row("n", "none", drop=0.01)}  # fmt: skip
    summary = compare_defenses({"bibau": bibau, "finetune": finetune})
    assert summary["bibau"]["backdoored"] == 3  # the model the attack did not implant is not counted
    assert summary["bibau"]["cleaned"] == 2 and summary["finetune"]["cleaned"] == 1
    assert summary["bibau"]["asr_removed"] == 2 and summary["finetune"]["asr_removed"] == 1
    assert summary["bibau"]["cleaned_by_attack"] == {"badnet": [1, 1], "blended": [1, 1], "badclip": [0, 1]}
    assert summary["finetune"]["asr_after"][0] == pytest.approx((0.6 + 0.03 + 0.8) / 3)
    low, high = summary["bibau"]["cleaned_interval"]
    assert 0 < low < 2 / 3 < high < 1
    assert summary["finetune"]["never_poisoned_ca_drop"][0] == pytest.approx(0.01)
    mean, low, high = mean_interval([0.0, 0.0, 0.0, 0.0, 0.9])  # skewed: the interval stays within the values
    assert mean == pytest.approx(0.18) and low == 0.0 and 0.18 < high <= 0.9
    assert mean_interval([0.0, 0.0, 0.0, 0.0, 0.9]) == (mean, low, high)  # seeded: the same numbers again
    assert mean_interval([0.5]) == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="no implanted backdoored model"):
        compare_defenses({"bibau": {"n": bibau["n"]}})
    with pytest.raises(ValueError, match="other models"):
        compare_defenses({"bibau": bibau, "finetune": {k: v for k, v in finetune.items() if k != "a"}})

    # cleaning seeds: a list of runs per defense; numbers averaged per model, intervals over models
    reseeded = dict(bibau, a=row("a", "badnet", False, 0.3), n=row("n", "none", drop=0.02))
    summary = compare_defenses({"bibau": [bibau, reseeded], "finetune": finetune})
    seeded = summary["bibau"]
    assert seeded["seeds"] == 2 and seeded["cleanings"] == 6 and seeded["cleaned"] == 3
    assert seeded["cleaned_per_seed"] == [2, 1] and seeded["cleaned_by_attack"]["badnet"] == [1, 2]
    assert seeded["asr_removed"] == 3
    assert seeded["asr_after"][0] == pytest.approx(((0.01 + 0.3) / 2 + 0.0 + 0.9) / 3)
    assert seeded["seed_spread"]["asr_after"] == pytest.approx([(0.01 + 0.9) / 3, (0.3 + 0.9) / 3])
    assert seeded["never_poisoned_ca_drop"][0] == pytest.approx(0.01)
    assert seeded["cleaned_interval"] == list(zoo.wilson_interval(1.5, 3))  # the mean count per seed, over 3 models
    failed = {name: dict(row, cleaned=False) if row["attack"] != "none" else row for name, row in finetune.items()}
    low, high = compare_defenses({"f": [failed, failed]})["f"]["cleaned_interval"]
    assert low == 0.0 and high > 0.4  # no success in 3 models: an interval, not a point at 0
    assert "seeds" not in summary["finetune"]
    assert "3/6 cleanings (2 seeds x 3 models; per seed 2, 1" in compare_markdown(summary)
    assert summary["finetune"]["detected"] is None and summary["finetune"]["clean_wall_s"] is None

    # verdicts and wall time: counted over every cleaning; a defense without verdicts shows none
    judged = {name: dict(entry, verdict="backdoored" if name in "an" else "no backdoor found",
                         named_correctly=name == "a", clean_wall_s=10.0 * (i + 1))
              for i, (name, entry) in enumerate(bibau.items())}  # fmt: skip
    timed = {name: dict(entry, clean_wall_s=5.0) for name, entry in finetune.items()}
    summary = compare_defenses({"bibau": [judged, judged], "finetune": timed})
    assert [summary["bibau"][key] for key in ("detected", "named", "false_alarms")] == [2, 2, 2]
    assert summary["bibau"]["clean_wall_s"] == [25.0, 10.0, 50.0]  # the never-poisoned model included, d not
    assert summary["finetune"]["detected"] is None and summary["finetune"]["clean_wall_s"] == [5.0, 5.0, 5.0]
    table = compare_markdown(summary)
    assert "| bibau | 2/6 | 2/6 | 2/2 | 25 (10-50) |" in table and "| finetune | - | - | - | 5 (5-5) |" in table
    with pytest.raises(ValueError, match="other models"):
        compare_defenses({"bibau": [bibau, {k: v for k, v in bibau.items() if k != "a"}]})


def test_no_clean_builds_the_models_without_cleaning_them(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(zoo, "poison", lambda model, folder, args: calls.append(("poison", model.name)))
    monkeypatch.setattr(zoo, "clean", lambda model, folder, args: calls.append(("clean", model.name)))
    args = zoo.parse_args(["--targets", "one", "--seeds", "0", "--clean-seeds", "1", "--limit", "1", "--no-clean",
                           "--split", "development", "--zoo-dir", str(tmp_path)])  # fmt: skip
    models = zoo.selected_models(args)
    assert {model.name for model in models} == {
        "badnet_one_s0_v0",
        "blended_one_s0_v0",
        "badclip_one_s0_v0",
        "none_s1",
    }
    zoo.build(models, tmp_path, args)
    assert sorted(calls) == sorted(("poison", model.name) for model in models)
    calls.clear()
    zoo.build(models, tmp_path, zoo.parse_args(["--targets", "one", "--seeds", "0", "--zoo-dir", str(tmp_path)]))
    assert sum(kind == "clean" for kind, _ in calls) == len(models)


def test_reinversion_benchmark_counts_flags_per_margin_against_every_never_poisoned_reference():
    """benchmarks/reinversion.py's summary: a backdoored model is compared with every never-poisoned model of its
    target, never-poisoned models with every other one (ordered pairs), flagged when over by more than the margin."""
    reinversion = load_script("benchmarks/reinversion.py")
    rows = [
        {"name": "b", "kind": "poisoned", "target": "zero", "targeted_asr": 0.9, "untargeted_score": 0.3},
        {"name": "b", "kind": "cleaned", "target": "zero", "targeted_asr": 0.05, "untargeted_score": 0.6},
        {"name": "n1", "kind": "never", "target": "zero", "targeted_asr": 0.1, "untargeted_score": 0.5},
        {"name": "n2", "kind": "never", "target": "zero", "targeted_asr": 0.5, "untargeted_score": 0.4},
        {"name": "n1", "kind": "never", "target": "two", "targeted_asr": 0.9, "untargeted_score": 0.5},
    ]
    low, high = reinversion.summary(rows, [0.3, 0.5])
    assert (low["poisoned_flagged"], low["poisoned_pairs"]) == (2, 2)  # 0.9 > 0.1 + 0.3 and > 0.5 + 0.3
    assert (high["poisoned_flagged"], high["cleaned_flagged"]) == (1, 0)  # 0.9 > 0.6 only; 0.9 <= 1.0
    assert (low["never_flagged"], low["never_pairs"]) == (1, 2)  # n2 over n1 by 0.4; the "two" row has no partner
    (untargeted,) = reinversion.summary(rows, [0.0], "untargeted_score")
    assert (untargeted["poisoned_flagged"], untargeted["cleaned_flagged"], untargeted["never_flagged"]) == (0, 2, 1)
