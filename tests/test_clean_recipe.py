"""recipes/clean_clip.py: in-process smoke run, results.json schema, outputs, resume, two real CPU processes."""

import json
from pathlib import Path

import open_clip
import pytest
import torch
from conftest import launch_two_processes, save_tiny_clip_and_patch_trigger

from clipclean.cli import clean_clip, complete_unlearning
from clipclean.cli.cleaning import INVERSION_REPORT_KEYS  # noqa: E402
from clipclean.data import DIGIT_CLASSNAMES, DataError
from clipclean.models import load_clip

ROOT = Path(__file__).resolve().parents[1]
RESULT_KEYS = {"defense", "before", "after", "inversion", "inverted_trigger_asr", "wall_time_s", "config"}
INVERSION_KEYS = set(INVERSION_REPORT_KEYS)  # every key the recipe promises, one list


def load_recipe():
    return clean_clip


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return save_tiny_clip_and_patch_trigger(tmp_path_factory.mktemp("clean_recipe"))


def tiny_args(setup, output, *extra):
    return [
        "--model",
        str(setup / "model"),
        "--clean-data",
        "digits:defender",
        "--eval-data",
        "digits:test",
        "--eval-trigger",
        str(setup / "trigger.json"),
        "--max-clean-pairs",
        "64",
        "--batch-size",
        "32",
        "--rounds",
        "2",
        "--epochs",
        "1",
        "--set",
        "inversion.rounds=1",
        "--set",
        "inversion.steps_per_round=3",
        "--set",
        "inversion.verdict_steps=2",
        "--set",
        "reinversion_steps=2",
        "--set",
        "unlearn_when_clean=true",  # a random-init model: exercise the unlearning loop whatever the verdict says
        "--no-progress",
        "--output_dir",
        str(output),
        *extra,
    ]


def test_recipe_in_process_writes_every_output(setup, tmp_path):
    results = load_recipe().main(tiny_args(setup, tmp_path / "run"))
    assert RESULT_KEYS <= set(results)
    assert results["defense"] == "bibau" and results["world_size"] == 1
    for phase in ("before", "after"):
        assert set(results[phase]) >= {"clean_accuracy", "attack_success_rate"}
        assert 0 <= results[phase]["clean_accuracy"] <= 1 and 0 <= results[phase]["attack_success_rate"] <= 1
    assert INVERSION_KEYS <= set(results["inversion"])
    assert results["inversion"]["verdict"] in ("backdoored", "no backdoor found")
    assert results["trigger_identical_across_ranks"] is True
    # wall time per phase: the recipe's, the loop's inside "cleaning", the defense's inside the loop's rounds
    phases = results["phase_wall_time_s"]
    for phase in ("load", "evaluate_before", "cleaning", "evaluate_after", "cleaning/begin_round",
                  "cleaning/unlearning_steps", "cleaning/end_round", "cleaning/checkpoint", "defense/inversion",
                  "defense/verdict", "defense/reinversion"):  # fmt: skip
        assert phases[phase] > 0, phase
    loop = sum(phases[f"cleaning/{part}"] for part in ("begin_round", "unlearning_steps", "end_round", "checkpoint"))
    assert loop <= phases["cleaning"] <= results["wall_time_s"]
    assert phases["defense/inversion"] + phases["defense/verdict"] <= phases["cleaning/begin_round"]
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk["defense"] == "bibau" and on_disk["inversion"]["recovered_target"] in [
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
    ]
    for name in ("trigger.json", "trigger.safetensors", "trigger.png", "report.json"):
        assert (tmp_path / "run" / "inversion" / name).is_file()
    cleaned = tmp_path / "run" / "cleaned"
    card = (cleaned / "README.md").read_text()
    assert "before" in card and "after" in card
    assert results["weights_unchanged"] is False and "Cleaned with clipclean's `bibau` defense" in card
    # plain open_clip loads the cleaned checkpoint
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{cleaned}")
    assert model.visual.image_size in ((32, 32), 32)
    assert json.loads((cleaned / "clipclean.json").read_text())["provenance"]["method"] == "bibau"


QUICK_COMPLETE = ("--complete-eval", "--retune-steps", "2", "--retune-pairs", "32",
                  "--reinversion-option", "rounds=1", "--reinversion-option", "steps_per_round=2",
                  "--reinversion-option", "verdict_steps=3")  # fmt: skip


def load_eval_script():
    return complete_unlearning


def test_complete_eval_writes_the_complete_block_and_reuses_reference_measurements(setup, tmp_path):
    recipe = load_recipe()
    reference = ["--reference-model", str(setup / "model")]
    results = recipe.main(tiny_args(setup, tmp_path / "run", "--rounds", "1", *QUICK_COMPLETE, *reference))
    complete = results["complete"]
    assert {"ra_asr", "reference_ra_asr", "reinversion_score", "reference_score"} <= set(complete)
    for key in ("ra_asr", "reference_ra_asr"):
        assert 0 <= complete[key] <= 1
    assert isinstance(complete["reinversion_score"], float) and isinstance(complete["reference_score"], float)
    for key in ("targeted_reinversion_asr", "reference_targeted_reinversion_asr"):  # toward the known target
        assert 0 <= complete[key] <= 1
    assert isinstance(complete["not_reinvertible_targeted"], bool)
    assert complete["retuning"]["n_pairs"] == 32 and complete["retuning"]["n_poisoned"] == 3
    assert complete["retuning"]["pool"] == "digits:train"  # disjoint from the defender's digits:defender
    assert json.loads((tmp_path / "run" / "results.json").read_text())["complete"] == complete
    assert "RA-ASR" in (tmp_path / "run" / "cleaned" / "README.md").read_text()
    sidecar = json.loads((tmp_path / "run" / "cleaned" / "clipclean.json").read_text())
    assert sidecar["provenance"]["complete"] == complete  # shown again by `clipclean scan`

    # The reference measured once by eval/complete_unlearning.py, then reused: the same numbers.
    measured = tmp_path / "reference.json"
    script_args = ["--model", str(setup / "model"), "--clean-data", "digits:defender", "--eval-data", "digits:test",
                   "--trigger", str(setup / "trigger.json"), "--max-clean-pairs", "64", "--output", str(measured),
                   "--no-progress", *QUICK_COMPLETE[1:]]  # fmt: skip
    alone = load_eval_script().main(script_args)
    assert alone["complete"]["reference_ra_asr"] is None and alone["target"] == "zero"
    assert alone["measured"]["ra_asr"] == pytest.approx(complete["reference_ra_asr"])
    assert alone["measured"]["reinversion_score"] == pytest.approx(complete["reference_score"])
    targeted = alone["measured"]["targeted_reinversion_asr"]
    assert targeted == pytest.approx(complete["reference_targeted_reinversion_asr"])
    reuse = ("--reference-measurements", str(measured))
    reused = recipe.main(tiny_args(setup, tmp_path / "reuse", "--rounds", "1", *QUICK_COMPLETE, *reuse))
    assert reused["complete"]["reference_ra_asr"] == pytest.approx(complete["reference_ra_asr"])
    with pytest.raises(SystemExit):  # measured with other retuning settings
        recipe.main(tiny_args(setup, tmp_path / "bad", *QUICK_COMPLETE, "--retune-steps", "5",
                              "--reference-measurements", str(measured)))  # fmt: skip
    with pytest.raises(SystemExit):  # measured with retuning pairs from another pool
        recipe.main(tiny_args(setup, tmp_path / "pool", "--rounds", "1", *QUICK_COMPLETE, *reuse,
                              "--retune-data", "digits:defender"))  # fmt: skip
    with pytest.raises(SystemExit):  # a reference without --complete-eval
        recipe.main(tiny_args(setup, tmp_path / "bad", *reference))
    with pytest.raises(SystemExit):
        recipe.main(tiny_args(setup, tmp_path / "bad", *QUICK_COMPLETE, "--retune-poison-fraction", "1.5"))


def test_a_model_judged_clean_is_left_unchanged(setup, tmp_path):
    """BI-BAU's EM stops when the verdict finds no backdoor (unlearn_when_clean defaults to false): no round runs
    and the saved model is the input model, bit for bit."""
    never = ("--set", "unlearn_when_clean=false", "--set", "inversion.anomaly_threshold=1e9")
    results = load_recipe().main(tiny_args(setup, tmp_path / "run", *never))
    assert results["inversion"]["verdict"] == "no backdoor found"
    assert results["rounds_done"] == 0 and results["rounds"] == []
    assert results["after"]["clean_accuracy"] == results["before"]["clean_accuracy"]
    original = load_clip(str(setup / "model")).state_dict()
    cleaned = load_clip(str(tmp_path / "run" / "cleaned")).state_dict()
    assert all(torch.equal(original[key], cleaned[key]) for key in original)
    card = (tmp_path / "run" / "cleaned" / "README.md").read_text()  # never a "cleaned" card on the input model
    assert results["weights_unchanged"] is True and "unchanged" in card and "Cleaned with" not in card


def test_recipe_resume_continues_after_the_saved_round(setup, tmp_path):
    recipe = load_recipe()
    output = tmp_path / "run"
    first = recipe.main(tiny_args(setup, output, "--rounds", "1", "--keep-checkpoints"))  # else deleted at the end
    assert first["rounds_done"] == 1
    resumed = recipe.main(tiny_args(setup, output, "--rounds", "2", "--resume_from_checkpoint", "latest"))
    assert resumed["rounds_done"] == 2
    assert len(resumed["rounds"]) == 2
    assert resumed["inversion"]["recovered_target"] == first["inversion"]["recovered_target"]
    assert resumed["inversion"]["backdoor_score"] == pytest.approx(first["inversion"]["backdoor_score"])


def test_class_folders_and_a_natural_order_classnames_file_score_like_open_clip(setup, digit_class_folders, tmp_path):
    folders = digit_class_folders
    assert folders["predicted_classes"] > 1 and folders["positional_correct"] != folders["correct"]  # this can fail
    data = ["--model", str(folders["model"]), "--eval-data", str(folders["data"])]
    results = load_recipe().main(
        tiny_args(setup, tmp_path / "run", *data, "--classnames", str(folders["classnames"]), "--rounds", "1")
    )
    before = results["before"]["eval"]
    assert before["n_images"] == folders["n_images"] == 400
    assert round(results["before"]["clean_accuracy"] * before["n_images"]) == folders["correct"]


def test_a_classnames_file_that_would_relabel_a_folder_is_refused(setup, digit_class_folders, tmp_path):
    names = tmp_path / "names.txt"
    lines = ["one", "zero", *DIGIT_CLASSNAMES[2:-1], "9"]  # "9": not the folder names in another order
    names.write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = ["--model", str(digit_class_folders["model"]), "--eval-data", str(digit_class_folders["data"])]
    with pytest.raises(DataError, match=r"line 1: 'one' would name folder 'eight' .*'folder<TAB>name'"):
        load_recipe().main(tiny_args(setup, tmp_path / "run", *data, "--classnames", str(names)))


def test_recipe_rejects_bad_arguments(setup, tmp_path):
    recipe = load_recipe()
    with pytest.raises(SystemExit):
        recipe.main(["--model", str(setup / "model"), "--defense", "no-such-defense"])
    with pytest.raises(ValueError, match="no option"):
        recipe.main(tiny_args(setup, tmp_path / "bad", "--set", "no_such_field=1"))


def test_recipe_with_two_real_cpu_processes(setup, tmp_path):
    output = tmp_path / "ddp"
    launch_two_processes("recipes/clean_clip.py", *tiny_args(setup, output, "--rounds", "1", *QUICK_COMPLETE))
    results = json.loads((output / "results.json").read_text())
    assert results["world_size"] == 2
    assert results["trigger_identical_across_ranks"] is True
    assert INVERSION_KEYS <= set(results["inversion"])
    assert results["after"]["clean_accuracy"] is not None
    assert 0 <= results["complete"]["ra_asr"] <= 1  # measured on the main process, broadcast to the other


def test_micro_batch_flag_chunks_the_trigger_search_without_changing_it(setup, tmp_path):
    recipe = load_recipe()
    whole = recipe.main(tiny_args(setup, tmp_path / "whole", "--rounds", "1"))
    chunked = recipe.main(tiny_args(setup, tmp_path / "chunked", "--rounds", "1", "--micro-batch", "8"))
    assert chunked["config"]["defense"].inversion.micro_batch == 8
    assert chunked["inversion"]["recovered_target"] == whole["inversion"]["recovered_target"]
    assert chunked["inversion"]["backdoor_score"] == pytest.approx(whole["inversion"]["backdoor_score"], abs=1e-3)
    # a defense without a trigger search micro-batches its unlearning steps only (the gradient cache)
    arguments = tiny_args(setup, tmp_path / "finetune", "--defense", "finetune", "--micro-batch", "8")
    arguments = [a for i, a in enumerate(arguments) if "--set" not in (a, arguments[i - 1])]  # BI-BAU's options
    finetune = recipe.main(arguments)
    assert finetune["config"]["recipe"]["micro_batch"] == 8 and finetune["weights_unchanged"] is False
