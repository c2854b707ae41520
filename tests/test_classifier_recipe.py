"""recipes/clean_classifier.py and recipes/poison_classifier.py: in-process runs, outputs, resume, bad arguments,
a zero-shot CLIP as the classifier, and two real CPU processes (mirrors test_clean_recipe.py)."""

import json

import pytest
import torch
from conftest import launch_two_processes

from clipclean.classifiers import create_classifier, load_classifier, save_classifier
from clipclean.cli import clean_classifier, poison_classifier
from clipclean.data import DIGIT_CLASSNAMES, DataError
from clipclean.hub import save_pretrained
from clipclean.models import load_clip
from clipclean.triggers import PatchBlendTrigger, load_trigger, save_trigger

RESULT_KEYS = {
    "defense",
    "before",
    "after",
    "inversion",
    "inverted_trigger_asr",
    "wall_time_s",
    "world_size",
    "config",
}
from clipclean.cli.cleaning import INVERSION_REPORT_KEYS  # noqa: E402

INVERSION_KEYS = set(INVERSION_REPORT_KEYS)  # every key the recipe promises, one list


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clean_classifier")
    torch.manual_seed(0)
    save_classifier(create_classifier("small-cnn", DIGIT_CLASSNAMES, image_size=32, width=4), folder / "model")
    save_trigger(
        PatchBlendTrigger.patch(32, 4, "bottom-right", "white"), folder / "trigger", metadata={"target": "zero"}
    )
    return folder


def tiny_args(setup, output, *extra, model=None):
    return [
        "--model", str(model or setup / "model"), "--clean-data", "digits:defender", "--eval-data", "digits:test",
        "--eval-trigger", str(setup / "trigger.json"), "--max-clean-pairs", "64", "--batch-size", "32",
        "--rounds", "2", "--epochs", "1", "--set", "inversion.rounds=1", "--set", "inversion.steps_per_round=2",
        "--set", "reinversion_steps=1", "--set", "unlearn_when_clean=true", "--no-progress",
        "--output_dir", str(output), *extra,
    ]  # fmt: skip


def test_recipe_in_process_writes_every_output(setup, tmp_path):
    results = clean_classifier.main(tiny_args(setup, tmp_path / "run"))
    assert RESULT_KEYS <= set(results) and results["defense"] == "bibau" and results["world_size"] == 1
    for phase in ("before", "after"):
        assert 0 <= results[phase]["clean_accuracy"] <= 1 and 0 <= results[phase]["attack_success_rate"] <= 1
    assert INVERSION_KEYS <= set(results["inversion"])
    assert results["inversion"]["verdict"] in ("backdoored", "no backdoor found")
    assert results["inversion"]["recovered_target"] in DIGIT_CLASSNAMES
    assert results["trigger_identical_across_ranks"] is True
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk["inversion"]["recovered_target"] == results["inversion"]["recovered_target"]
    for name in ("trigger.json", "trigger.safetensors", "trigger.png", "report.json"):
        assert (tmp_path / "run" / "inversion" / name).is_file()
    assert load_trigger(tmp_path / "run" / "inversion" / "trigger.json").image_size == (32, 32)
    cleaned = load_classifier(tmp_path / "run" / "cleaned")
    assert cleaned.classnames == DIGIT_CLASSNAMES
    metadata = json.loads((tmp_path / "run" / "cleaned" / "clipclean_classifier.json").read_text())["metadata"]
    assert metadata["method"] == "bibau" and set(metadata["metrics"]) == {"before", "after"}


def test_recipe_resume_continues_after_the_saved_round(setup, tmp_path):
    recipe = clean_classifier
    output = tmp_path / "run"
    first = recipe.main(tiny_args(setup, output, "--rounds", "1", "--keep-checkpoints"))  # else deleted at the end
    assert first["rounds_done"] == 1
    resumed = recipe.main(tiny_args(setup, output, "--rounds", "2", "--resume_from_checkpoint", "latest"))
    assert resumed["rounds_done"] == 2 and len(resumed["rounds"]) == 2
    assert resumed["inversion"]["recovered_target"] == first["inversion"]["recovered_target"]
    assert resumed["inversion"]["backdoor_score"] == pytest.approx(first["inversion"]["backdoor_score"])


def test_recipe_rejects_bad_arguments(setup, tmp_path):
    recipe = clean_classifier
    with pytest.raises(SystemExit):
        recipe.main(["--model", str(setup / "model"), "--defense", "no-such-defense"])
    with pytest.raises(SystemExit):
        recipe.main(["--model", str(setup / "model"), "--eval-target", "zero"])  # needs --eval-trigger
    with pytest.raises(ValueError, match="no option"):
        recipe.main(tiny_args(setup, tmp_path / "bad", "--set", "no_such_field=1"))
    with pytest.raises(TypeError, match="multimodal"):
        no_bibau_options = tiny_args(setup, tmp_path)[:16]
        recipe.main([*no_bibau_options, "--defense", "cleanclip", "--output_dir", str(tmp_path / "cleanclip")])


def test_recipe_cleans_a_clip_as_a_zero_shot_classifier(tmp_path):
    torch.manual_seed(0)
    save_pretrained(load_clip("clipclean-tiny"), tmp_path / "clip")
    argv = [
        "--model", str(tmp_path / "clip"), "--clean-data", "digits:defender", "--eval-data", "digits:test",
        "--defense", "finetune", "--rounds", "1", "--epochs", "1", "--max-clean-pairs", "64", "--batch-size", "32",
        "--no-progress", "--output_dir", str(tmp_path / "run"),
    ]  # fmt: skip
    results = clean_classifier.main(argv)
    assert results["after"]["attack_success_rate"] is None and 0 <= results["after"]["clean_accuracy"] <= 1
    assert (tmp_path / "run" / "cleaned" / "open_clip_config.json").is_file()  # saved as a CLIP


def test_poison_recipe_relabels_trains_and_saves(tmp_path):
    output = tmp_path / "poisoned"
    argv = ["--attack", "blended", "--epochs", "1", "--poison-count", "30", "--architecture-kwargs", '{"width": 4}']
    results = poison_classifier.main([*argv, "--no-progress", "--output_dir", str(output)])
    assert results["n_poison"] == 30 and results["target"] == "zero" and results["world_size"] == 1
    assert 0 <= results["clean_accuracy"] <= 1 and 0 <= results["attack_success_rate"] <= 1
    manifest = json.loads((output / "poison_manifest.json").read_text())
    assert manifest["n_poison"] == 30 and manifest["caption_policy"]["policy"] == "relabel"
    model = load_classifier(output / "model")
    assert json.loads((output / "model" / "clipclean_classifier.json").read_text())["metadata"]["backdoored"]
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert load_trigger(output / "trigger.json").family == "patch_blend"


def test_poison_recipe_names_class_folders_by_a_natural_order_classnames_file(digit_class_folders, tmp_path):
    data, output = str(digit_class_folders["data"]), tmp_path / "poisoned"
    argv = ["--train-data", data, "--eval-data", data, "--classnames", str(digit_class_folders["classnames"])]
    argv += ["--epochs", "1", "--architecture-kwargs", '{"width": 4}', "--no-progress", "--output_dir", str(output)]
    results = poison_classifier.main(argv)
    assert load_classifier(output / "model").classnames == sorted(DIGIT_CLASSNAMES)  # each folder keeps its name
    assert results["target"] == "zero" and results["eval"]["n_images"] == digit_class_folders["n_images"]
    names = tmp_path / "names.txt"
    names.write_text("\n".join([*DIGIT_CLASSNAMES[:-1], "9"]) + "\n", encoding="utf-8")  # not the folder names
    argv[argv.index("--classnames") + 1], argv[argv.index("--output_dir") + 1] = str(names), str(tmp_path / "refused")
    with pytest.raises(DataError, match=r"names\.txt line 1: 'zero' would name folder 'eight'"):
        poison_classifier.main(argv)


def test_recipe_with_two_real_cpu_processes(setup, tmp_path):
    output = tmp_path / "ddp"
    launch_two_processes("recipes/clean_classifier.py", *tiny_args(setup, output, "--rounds", "1"))
    results = json.loads((output / "results.json").read_text())
    assert results["world_size"] == 2
    assert results["trigger_identical_across_ranks"] is True
    assert INVERSION_KEYS <= set(results["inversion"])
    assert results["after"]["clean_accuracy"] is not None
