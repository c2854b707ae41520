"""eval/zeroshot_imagenet.py: in-process smoke test, CLI errors, and a real two-process ``accelerate launch`` run."""

import json
from pathlib import Path

import pytest
import torch
from conftest import launch_two_processes
from PIL import Image

from clipclean.cli import zeroshot_imagenet
from clipclean.data import DIGIT_CLASSNAMES, DataError, load_classification_dataset
from clipclean.evaluation import evaluate_zeroshot
from clipclean.hub import save_pretrained
from clipclean.models import load_clip
from clipclean.triggers import PatchBlendTrigger, load_trigger, save_trigger

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "eval" / "zeroshot_imagenet.py"
CLASSES = {"red_apple": (220, 30, 30), "green_leaf": (30, 200, 40), "blue_sky": (40, 60, 230)}
IMAGES_PER_CLASS = 4
BATCH_SIZE = 5  # 12 images over 2 processes x 5: the last step is padded, gather_for_metrics must drop the padding
RESULT_KEYS = {
    "top1",
    "top5",
    "asr_top1",
    "asr_top10",
    "n_images",
    "n_asr_images",
    "model",
    "protocol",
    "world_size",
    "data",
    "trigger",
    "target",
}
METRIC_KEYS = ("top1", "top5", "asr_top1", "asr_top10", "n_images", "n_asr_images", "protocol")


def _load_script():
    return zeroshot_imagenet


@pytest.fixture(scope="module")
def script():
    return _load_script()


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Each in-process run builds its own Accelerator; do not leak accelerate's singletons into other tests."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A 3-class x 4-image PNG folder dataset, a tiny CLIP in open_clip Hub layout and a fixed-location trigger."""
    root = tmp_path_factory.mktemp("eval_script")
    generator = torch.Generator().manual_seed(0)
    data = root / "data"
    for name, colour in CLASSES.items():
        (data / name).mkdir(parents=True)
        for index in range(IMAGES_PER_CLASS):
            noise = torch.randint(-40, 41, (32, 32, 3), generator=generator)
            pixels = (torch.tensor(colour).view(1, 1, 3) + noise).clamp(0, 255).to(torch.uint8)
            Image.fromarray(pixels.numpy(), mode="RGB").save(data / name / f"{index}.png")
    torch.manual_seed(0)
    model = load_clip("clipclean-tiny")
    with torch.no_grad():  # without them a random tower's features follow image colour, not one constant class
        model.model.visual.class_embedding.zero_()
        model.model.visual.positional_embedding.zero_()
    model_dir = save_pretrained(model, root / "model")
    green_patch = PatchBlendTrigger.patch(32, 16, "bottom-right", pattern=(0.1, 0.8, 0.15))
    trigger_file = save_trigger(green_patch, root / "patch")
    templates = root / "templates.txt"
    templates.write_text("a photo of a {c}.\na picture of the {c}.\n", encoding="utf-8")
    return {"root": root, "data": data, "model": model_dir, "trigger": trigger_file, "templates": templates}


def _arguments(assets, output, target="green leaf"):
    return [
        "--model",
        str(assets["model"]),
        "--data",
        str(assets["data"]),
        "--templates",
        str(assets["templates"]),
        "--trigger",
        str(assets["trigger"]),
        "--target",
        target,
        "--batch-size",
        str(BATCH_SIZE),
        "--seed",
        "0",
        "--output",
        str(output),
        "--no-progress",
    ]


@pytest.fixture(scope="module")
def in_process_results(script, assets):
    output = assets["root"] / "in_process" / "results.json"
    returned = script.main(_arguments(assets, output))
    return returned, json.loads(output.read_text(encoding="utf-8"))


def test_main_in_process_matches_evaluate_zeroshot(assets, in_process_results):
    returned, written = in_process_results
    assert RESULT_KEYS <= set(written)
    assert written == json.loads(json.dumps(returned))
    assert written["world_size"] == 1
    assert written["model"] == str(assets["model"]) and written["data"] == str(assets["data"])
    assert written["trigger"] == str(assets["trigger"]) and written["target"] == "green leaf"
    assert written["n_images"] == len(CLASSES) * IMAGES_PER_CLASS
    assert written["n_asr_images"] == (len(CLASSES) - 1) * IMAGES_PER_CLASS
    assert 0 < written["top1"] < 1 and 0 < written["asr_top1"] < 1  # numbers that a sharding bug would move

    model = load_clip(str(assets["model"]))
    dataset = load_classification_dataset(str(assets["data"]), image_size=model.image_size)
    assert dataset.classnames == ["blue sky", "green leaf", "red apple"]
    direct = evaluate_zeroshot(
        model,
        dataset,
        dataset.classnames,
        templates=["a photo of a {c}.", "a picture of the {c}."],
        trigger=load_trigger(assets["trigger"]),
        target="green leaf",
        batch_size=BATCH_SIZE,
        seed=0,
    )
    for key in METRIC_KEYS:
        assert written[key] == pytest.approx(direct[key]), key


def test_main_prints_a_table(script, assets, capsys):
    results = script.main(
        ["--model", str(assets["model"]), "--data", str(assets["data"]), "--templates", str(assets["templates"])]
        + ["--no-progress", "--batch-size", "4"]
    )
    table = capsys.readouterr().out
    assert "CA top-1 (%)" in table and f"{100 * results['top1']:.2f}" in table
    assert results["asr_top1"] is None and results["trigger"] is None and results["target"] is None
    assert results["n_templates"] == 2 and results["n_classes"] == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--trigger", "t.json"], "--trigger needs --target"),
        (["--target", "blue sky"], "--target needs --trigger"),
    ],
)
def test_trigger_and_target_go_together(script, assets, extra, message, capsys):
    with pytest.raises(SystemExit) as raised:
        script.main(["--model", str(assets["model"]), "--data", str(assets["data"])] + extra)
    assert raised.value.code == 2
    assert message in capsys.readouterr().err


def test_unknown_target_is_a_usage_error(script, assets, tmp_path, capsys):
    with pytest.raises(SystemExit) as raised:
        script.main(_arguments(assets, tmp_path / "results.json", target="banana"))
    assert raised.value.code == 2
    assert "not a class name" in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()


def test_trigger_of_another_image_size_is_a_usage_error(script, assets, tmp_path, capsys):
    other = save_trigger(PatchBlendTrigger.patch(64, 4), tmp_path / "big")
    arguments = _arguments(assets, tmp_path / "results.json")
    arguments[arguments.index("--trigger") + 1] = str(other)
    with pytest.raises(SystemExit) as raised:
        script.main(arguments)
    assert raised.value.code == 2
    assert "resizing" in capsys.readouterr().err


def _write_classnames(path, kind):
    """The ten digit words in natural order, as plain lines or as ``folder<TAB>name`` lines (reversed order)."""
    lines = DIGIT_CLASSNAMES if kind == "plain" else [f"{name}\t{name}" for name in reversed(DIGIT_CLASSNAMES)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("kind", ["plain", "tab"])
def test_class_folders_and_a_natural_order_classnames_file_score_like_open_clip(
    script, digit_class_folders, tmp_path, kind
):
    folders = digit_class_folders
    # the fixture's model spreads its predictions and a positional reading would change the score: this can fail
    assert folders["predicted_classes"] > 1 and folders["positional_correct"] != folders["correct"]
    classnames = _write_classnames(tmp_path / "classnames.txt", kind)
    results = script.main(
        ["--model", str(folders["model"]), "--data", str(folders["data"]), "--classnames", str(classnames)]
        + ["--batch-size", "128", "--no-progress"]
    )
    assert results["n_images"] == folders["n_images"] == 400 and results["n_classes"] == 10
    assert results["n_templates"] == 80  # open_clip's OPENAI_IMAGENET_TEMPLATES, as in the reference
    assert round(results["top1"] * results["n_images"]) == folders["correct"]


def test_a_classnames_file_that_would_relabel_a_folder_is_refused(script, digit_class_folders, tmp_path):
    folders = digit_class_folders
    names = tmp_path / "names.txt"
    names.write_text("\n".join([*DIGIT_CLASSNAMES[:-1], "9"]) + "\n", encoding="utf-8")  # no longer the folders
    with pytest.raises(DataError, match=r"names\.txt line 1: 'zero' would name folder 'eight' .*'folder<TAB>name'"):
        script.main(["--model", str(folders["model"]), "--data", str(folders["data"]), "--classnames", str(names)])


def test_accelerate_launch_two_cpu_processes(assets, in_process_results):
    _, expected = in_process_results
    output = assets["root"] / "launched" / "results.json"
    completed = launch_two_processes(SCRIPT.relative_to(REPO), *_arguments(assets, output), timeout=300)
    launched = json.loads(output.read_text(encoding="utf-8"))
    assert launched["world_size"] == 2
    assert RESULT_KEYS <= set(launched)
    assert launched["n_images"] == expected["n_images"] == len(CLASSES) * IMAGES_PER_CLASS  # padding dropped
    assert launched["n_asr_images"] == expected["n_asr_images"]
    for key in ("top1", "top5", "asr_top1", "asr_top10"):
        assert launched[key] == pytest.approx(expected[key], abs=1e-6), key
    assert completed.stdout.count("CA top-1 (%)") == 1  # the table is printed by the main process only
