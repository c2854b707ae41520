"""Bad inputs across the recipes, ``eval/``, the ``clipclean`` command and the Python API (docs/security.md, "Bad
inputs"): each ends with exit status 2, one ``error:`` line that says what to change, no traceback, and no partial
model folder or results.json left behind."""

import io
import json
import os
import subprocess
import tarfile

import numpy as np
import pytest
import torch
from conftest import script_command
from PIL import Image
from safetensors.torch import load_file, save_file

from clipclean.cli import clean_clip, complete_unlearning, poison_classifier, poison_clip, zeroshot_imagenet
from clipclean.cli.common import one_line, run_cli
from clipclean.cli.main import main as clipclean
from clipclean.data import DataError, load_classification_dataset, load_image_caption_dataset
from clipclean.evaluation import evaluate_zeroshot
from clipclean.hub import save_pretrained
from clipclean.models import ModelLoadError, load_clip
from clipclean.triggers import PatchBlendTrigger, save_trigger

TINY_CLEAN = ["--defense", "finetune", "--max-clean-pairs", "32", "--batch-size", "16", "--rounds", "1"]
TINY_CLEAN += ["--epochs", "1", "--no-progress"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny CLIP folder, a 32 px patch trigger toward "zero", four PNG image-caption pairs (pairs.csv) and a
    two-class folder of PNGs."""
    root = tmp_path_factory.mktemp("bad_inputs")
    torch.manual_seed(0)
    save_pretrained(load_clip("clipclean-tiny"), root / "model")
    save_trigger(
        PatchBlendTrigger.patch(32, 4, "bottom-right", "white"), root / "trigger", metadata={"target": "zero"}
    )
    generator = np.random.default_rng(0)
    (root / "images").mkdir()
    for index in range(4):
        pixels = generator.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{index}.png")
    write_csv(root / "pairs.csv", [(f"images/{index}.png", f"a photo of the number {index}.") for index in range(4)])
    for name in ("cat", "dog"):
        (root / "classes" / name).mkdir(parents=True)
        for index in range(3):
            pixels = generator.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "classes" / name / f"{index}.png")
    return root


@pytest.fixture(scope="module")
def recipes():
    return {"recipes/clean_clip": clean_clip, "recipes/poison_clip": poison_clip, "eval": zeroshot_imagenet}


def write_csv(path, rows, header=("filepath", "caption")):
    path.write_text("\n".join(",".join(row) for row in [header, *rows]) + "\n", encoding="utf-8")
    return path


def expect_error(command, argv, capsys, *expected: str) -> str:
    """Run ``command`` as a command line would (:func:`run_cli`): exit status 2, exactly one ``error:`` line holding
    every ``expected`` text, no traceback. Returns the line."""
    try:
        status = run_cli(command, [str(arg) for arg in argv])
    except SystemExit as exit_:  # argparse's usage errors exit by themselves
        status = exit_.code
    err = capsys.readouterr().err
    assert status == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if "error: " in line]
    assert len(lines) == 1, err[-3000:]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def clean_args(assets, output, *extra):
    return [
        "--model",
        assets / "model",
        "--clean-data",
        "digits:defender",
        *TINY_CLEAN,
        "--output_dir",
        output,
        *extra,
    ]


def assert_nothing_written(output):
    assert not (output / "results.json").exists() and not (output / "cleaned").exists()
    assert not (output / "model").exists() and not (output / "trigger.json").exists()


# ---- data ------------------------------------------------------------------------------------------------------


def test_csv_without_the_caption_column(assets, recipes, tmp_path, capsys):
    table = write_csv(tmp_path / "pairs.csv", [(str(assets / "images" / "0.png"), "zero")], ("filepath", "label"))
    output = tmp_path / "out"
    argv = ["--model", assets / "model", "--clean-data", table, *TINY_CLEAN, "--output_dir", output]
    expect_error(recipes["recipes/clean_clip"].main, argv, capsys, str(table), "no caption column")
    assert_nothing_written(output)


def test_empty_csv(tmp_path, assets, capsys):
    table = write_csv(tmp_path / "empty.csv", [])
    argv = ["scan", assets / "model", "--data", table, "--output", tmp_path / "scan"]
    expect_error(clipclean, argv, capsys, str(table), "empty")
    assert not (tmp_path / "scan").exists()


def test_missing_image_names_the_file_and_row(assets, recipes, tmp_path, capsys):
    table = write_csv(tmp_path / "pairs.csv", [(str(assets / "images" / "0.png"), "a"), ("gone.png", "b")])
    output = tmp_path / "out"
    argv = ["--train-data", table, "--epochs", "1", "--no-progress", "--output_dir", output]
    expect_error(recipes["recipes/poison_clip"].main, argv, capsys, "row 2", "gone.png", "not found")
    assert_nothing_written(output)


def test_corrupt_image_names_the_file_and_row(assets, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes((assets / "images" / "1.png").read_bytes()[:60])  # a PNG cut short
    table = write_csv(tmp_path / "pairs.csv", [(str(assets / "images" / "0.png"), "a"), (str(broken), "b")])
    argv = ["scan", assets / "model", "--data", table, "--output", tmp_path / "scan"]
    expect_error(clipclean, argv, capsys, "row 2", "broken.png", "cannot decode")
    assert not (tmp_path / "scan").exists()


def class_folders_with_a_corrupt_image(assets, tmp_path):
    """``cat/`` and ``dog/`` with three good images each, plus ``dog/3.png`` that is not an image."""
    data = tmp_path / "classes"
    for name in ("cat", "dog"):
        (data / name).mkdir(parents=True)
        for index in range(3):
            (data / name / f"{index}.png").write_bytes((assets / "classes" / name / f"{index}.png").read_bytes())
    (data / "dog" / "3.png").write_bytes(b"not a png at all")
    return data


def test_skip_bad_skips_a_corrupt_image_with_a_count(assets, recipes, tmp_path, capsys):
    data = class_folders_with_a_corrupt_image(assets, tmp_path)
    argv = ["--model", assets / "model", "--data", data, "--no-progress", "--output", tmp_path / "r.json"]
    expect_error(recipes["eval"].main, argv, capsys, "3.png", "cannot decode")  # default: stop, naming the file
    assert not (tmp_path / "r.json").exists()
    assert run_cli(recipes["eval"].main, [*map(str, argv), "--skip-bad"]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["n_images"] == 6
    assert "skipped 1 bad row(s) of 7" in capsys.readouterr().err  # the count, logged once


def test_skip_bad_on_the_classifier_recipe_and_the_complete_unlearning_script(assets, tmp_path, capsys):
    data = class_folders_with_a_corrupt_image(assets, tmp_path)
    poison = poison_classifier
    argv = ["--train-data", data, "--eval-data", data, "--target", "cat", "--poison-count", "1", "--epochs", "1",
            "--batch-size", "4", "--architecture-kwargs", '{"width": 2}', "--no-progress"]  # fmt: skip
    expect_error(poison.main, [*argv, "--output_dir", tmp_path / "a"], capsys, "3.png", "cannot decode")
    assert run_cli(poison.main, [*map(str, argv), "--output_dir", str(tmp_path / "b"), "--skip-bad"]) == 0
    assert "skipped 1 bad row(s) of 7" in capsys.readouterr().err
    complete = complete_unlearning
    table = tmp_path / "pairs.csv"
    table.write_text("filepath,title\n" + "".join(f"{data / 'cat' / f'{i}.png'},a cat\n" for i in range(3))
                     + f"{data / 'dog' / '3.png'},a dog\n")  # fmt: skip
    argv = ["--model", assets / "model", "--clean-data", table, "--no-progress", "--output", tmp_path / "c.json",
            "--reinversion-option", "rounds=1", "--reinversion-option", "steps_per_round=1"]  # fmt: skip
    expect_error(complete.main, argv, capsys, "3.png")
    assert run_cli(complete.main, [*map(str, argv), "--skip-bad"]) == 0


def test_a_text_file_with_an_image_extension(assets, recipes, tmp_path, capsys):
    data = tmp_path / "classes"
    (data / "cat").mkdir(parents=True)
    (data / "cat" / "notes.png").write_text("these are my notes, not a picture", encoding="utf-8")
    (data / "dog").mkdir()
    (data / "dog" / "0.png").write_bytes((assets / "classes" / "dog" / "0.png").read_bytes())
    argv = ["--model", assets / "model", "--data", data, "--no-progress", "--output", tmp_path / "r.json"]
    expect_error(recipes["eval"].main, argv, capsys, "notes.png", "cannot decode")
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "I;16"], ids=["grayscale", "grayscale-alpha", "rgba", "16-bit"])
def test_grayscale_alpha_and_16_bit_images_keep_their_brightness(tmp_path, mode):
    """A mid-grey image reads as 0.5 in every mode (a 16-bit PNG was clipped at 255: mean 0.998)."""
    if mode == "I;16":
        image = Image.fromarray(np.full((40, 40), 32768, dtype=np.uint16))
    else:
        image = Image.new(mode, (40, 40), (128,) * len(mode))
    image.save(tmp_path / "grey.png")
    assert Image.open(tmp_path / "grey.png").mode == mode
    table = write_csv(tmp_path / "pairs.csv", [("grey.png", "a grey square")])
    pixels = load_image_caption_dataset(str(table), image_size=32)[0][0]
    assert pixels.shape == (3, 32, 32)
    assert float(pixels.mean()) == pytest.approx(128 / 255, abs=0.01)


def test_a_webdataset_member_path_escaping_the_folder_is_only_a_key(assets, tmp_path):
    shards = tmp_path / "deep" / "shards"
    shards.mkdir(parents=True)
    with tarfile.open(shards / "shard-0.tar", "w") as archive:
        for name, payload in (("../../escape.jpg", (assets / "images" / "0.png").read_bytes()),
                              ("../../escape.txt", b"a photo of the number zero.")):  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    data = load_image_caption_dataset(str(shards / "shard-0.tar"), image_size=32)
    assert data.keys == ["../../escape"] and data[0][1] == "a photo of the number zero."
    assert data[0][0].shape == (3, 32, 32)
    assert not (shards / "../../escape.jpg").resolve().exists() and not list(tmp_path.rglob("escape*"))


def test_an_error_in_a_data_loader_worker_is_one_line(assets, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"garbage")
    table = write_csv(tmp_path / "pairs.csv", [(str(tmp_path / "broken.png"), "a")])
    data = load_image_caption_dataset(str(table), image_size=32)
    with pytest.raises(DataError) as raised:
        next(iter(torch.utils.data.DataLoader(data, num_workers=1)))
    assert "Original Traceback" in str(raised.value)  # what torch re-raises: the worker's traceback as the message
    line = one_line(raised.value)
    assert line.startswith(f"{table} row 1") and "cannot decode" in line and "\n" not in line


# ---- models ----------------------------------------------------------------------------------------------------


def test_unknown_model_name(recipes, capsys):
    argv = ["--model", "no-such-clip", "--data", "digits"]
    expect_error(recipes["eval"].main, argv, capsys, "unknown model name 'no-such-clip'", "clipclean-tiny")


def test_a_model_path_that_does_not_exist_says_folder_not_found(recipes, tmp_path, capsys):
    output = tmp_path / "out"
    argv = ["--model", "outputs/no/such/model", "--clean-data", "digits:defender", "--output_dir", output]
    expect_error(recipes["recipes/clean_clip"].main, argv, capsys, "folder not found: outputs/no/such/model")
    assert_nothing_written(output)


def test_a_folder_without_config(tmp_path, capsys):
    (tmp_path / "suspect").mkdir()
    (tmp_path / "suspect" / "weights.safetensors").write_bytes(b"")
    argv = ["scan", tmp_path / "suspect", "--data", "digits:defender", "--output", tmp_path / "scan"]
    expect_error(clipclean, argv, capsys, "open_clip_config.json is missing")
    assert not (tmp_path / "scan").exists()


def test_truncated_safetensors_weights(assets, tmp_path, capsys):
    folder = tmp_path / "model"
    folder.mkdir()
    for path in (assets / "model").iterdir():
        data = path.read_bytes()
        (folder / path.name).write_bytes(data[: len(data) // 2] if path.suffix == ".safetensors" else data)
    argv = ["eval", "--model", folder, "--data", "digits", "--output", tmp_path / "r.json"]
    expect_error(clipclean, argv, capsys, f"could not load CLIP '{folder}'", "SafetensorError")
    assert not (tmp_path / "r.json").exists()


def test_random_bytes_are_not_reported_as_pickled_code(tmp_path, capsys):
    (tmp_path / "epoch_64.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    line = expect_error(clipclean, ["convert", tmp_path / "epoch_64.pt", tmp_path / "out"], capsys)
    assert "not a PyTorch checkpoint" in line and "Python objects" not in line and "arbitrary code" not in line
    assert not (tmp_path / "out").exists()


# ---- triggers and targets --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ("{not json", "invalid JSON"),
        ('{"format": "clipclean-trigger", "family": "patch_blend"}', "'config' is not a JSON object"),
        ('{"format": "clipclean-trigger", "family": "patch_blend", "config": {}}', "malformed patch_blend trigger"),
    ],
    ids=["invalid-json", "no-config", "config-without-fields"],
)
def test_malformed_trigger_json(assets, recipes, tmp_path, capsys, document, expected):
    (tmp_path / "trigger.json").write_text(document, encoding="utf-8")
    (tmp_path / "trigger.safetensors").write_bytes((assets / "trigger.safetensors").read_bytes())
    argv = ["--model", assets / "model", "--data", "digits", "--trigger", tmp_path / "trigger.json"]
    expect_error(recipes["eval"].main, [*argv, "--target", "zero", "--output", tmp_path / "r.json"], capsys, expected)
    assert not (tmp_path / "r.json").exists()


def test_a_truncated_trigger_tensor_file(assets, recipes, tmp_path, capsys):
    (tmp_path / "trigger.json").write_bytes((assets / "trigger.json").read_bytes())
    data = (assets / "trigger.safetensors").read_bytes()
    (tmp_path / "trigger.safetensors").write_bytes(data[: len(data) // 2])
    argv = ["--model", assets / "model", "--data", "digits", "--trigger", tmp_path / "trigger.json", "--target", "0"]
    expect_error(recipes["eval"].main, argv, capsys, "trigger.safetensors", "damaged or truncated")


def test_a_nan_trigger_is_refused_not_scored(assets, recipes, tmp_path, capsys):
    """A NaN trigger used to report ASR 0% / top-10 100%."""
    (tmp_path / "trigger.json").write_bytes((assets / "trigger.json").read_bytes())
    tensors = load_file(str(assets / "trigger.safetensors"))
    save_file({name: torch.full_like(value, float("nan")) for name, value in tensors.items()},
              str(tmp_path / "trigger.safetensors"))  # fmt: skip
    argv = ["--model", assets / "model", "--data", "digits", "--trigger", tmp_path / "trigger.json"]
    argv += ["--target", "zero", "--output", tmp_path / "r.json"]
    expect_error(recipes["eval"].main, argv, capsys, "NaN or infinite")
    assert not (tmp_path / "r.json").exists()
    # Python API: a trigger whose parameters became NaN after it was built
    trigger = PatchBlendTrigger.patch(32, 4, "bottom-right", "white")
    with torch.no_grad():
        trigger.mask_param.fill_(float("nan"))
    test = load_classification_dataset("digits:test", image_size=32)
    with pytest.raises(ValueError, match="NaN or infinite pixels"):
        evaluate_zeroshot(load_clip(str(assets / "model")), test, test.classnames, ["{c}"], trigger, "zero")


def test_a_trigger_larger_than_the_image(assets, recipes, tmp_path, capsys):
    output = tmp_path / "poison"
    argv = ["--trigger-size", "64", "--epochs", "1", "--no-progress", "--output_dir", output]
    expect_error(recipes["recipes/poison_clip"].main, argv, capsys, "--trigger-size 64", "32x32")
    assert_nothing_written(output)
    big = save_trigger(PatchBlendTrigger.patch(64, 4), tmp_path / "big", metadata={"target": "zero"})
    output = tmp_path / "clean"
    argv = clean_args(assets, output, "--eval-data", "digits:test", "--eval-trigger", big)
    expect_error(recipes["recipes/clean_clip"].main, argv, capsys, "(64, 64) images", "(32, 32)")
    assert_nothing_written(output)


def test_a_target_that_is_not_a_class(recipes, tmp_path, capsys):
    output = tmp_path / "poison"
    argv = ["--target", "banana", "--epochs", "1", "--no-progress", "--output_dir", output]
    expect_error(recipes["recipes/poison_clip"].main, argv, capsys, "--target 'banana'", "not a class")
    assert_nothing_written(output)
    assert not (output / "poison_manifest.json").exists()


# ---- output folders --------------------------------------------------------------------------------------------


def test_an_output_dir_that_is_a_file(recipes, tmp_path, capsys):
    (tmp_path / "out").write_text("my notes", encoding="utf-8")
    # the model does not exist either: the output folder is checked first, before anything is loaded
    argv = ["--model", "outputs/no/such/model", "--clean-data", "digits:defender", "--output_dir", tmp_path / "out"]
    expect_error(recipes["recipes/clean_clip"].main, argv, capsys, "is a file")
    argv[-1] = tmp_path / "out" / "run"
    expect_error(recipes["recipes/clean_clip"].main, argv, capsys, "cannot be created", "is a file")
    assert (tmp_path / "out").read_text(encoding="utf-8") == "my notes"


def test_an_unwritable_output_dir(recipes, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:  # root writes anywhere; /proc refuses new files even to root
        target = locked / "out" if os.geteuid() != 0 else "/proc/clipclean-bad-inputs"
        argv = ["--model", "outputs/no/such", "--output_dir", target, "--epochs", "1"]
        expect_error(recipes["recipes/poison_clip"].main, argv, capsys, "not writable")
    finally:
        locked.chmod(0o755)
    assert not os.path.lexists(target)


def test_a_previous_result_is_never_overwritten_silently(assets, recipes, tmp_path, capsys):
    """Rerunning into a used output folder replaced results.json and cleaned/, deleting a user's file in it."""
    output = tmp_path / "out"
    recipes["recipes/clean_clip"].main([str(arg) for arg in clean_args(assets, output)])
    (output / "cleaned" / "my_notes.txt").write_text("keep me", encoding="utf-8")
    before = (output / "results.json").read_bytes()
    argv = clean_args(assets, output)
    expect_error(recipes["recipes/clean_clip"].main, argv, capsys, "my_notes.txt", "move them out")
    expect_error(recipes["recipes/clean_clip"].main, [*argv, "--overwrite"], capsys, "my_notes.txt")
    (output / "cleaned" / "my_notes.txt").rename(output / "my_notes.txt")
    expect_error(recipes["recipes/clean_clip"].main, argv, capsys, "previous result", "--overwrite")
    assert (output / "results.json").read_bytes() == before
    assert (output / "my_notes.txt").read_text(encoding="utf-8") == "keep me"


def test_overwrite_replaces_a_previous_run_and_its_checkpoints(assets, recipes, tmp_path):
    """With --overwrite the previous checkpoints go first: they made the new run fail at the end of its first round
    with "checkpoint_0 already exists"."""
    output = tmp_path / "out"
    recipe = recipes["recipes/clean_clip"]
    first = recipe.main([str(arg) for arg in clean_args(assets, output, "--seed", "1", "--keep-checkpoints")])
    stale = output / "checkpoints" / "checkpoint_0" / "stale.txt"
    stale.write_text("from the first run", encoding="utf-8")
    argv = [str(arg) for arg in clean_args(assets, output, "--seed", "2", "--overwrite", "--keep-checkpoints")]
    assert run_cli(recipe.main, argv) == 0
    results = json.loads((output / "results.json").read_text())
    assert results["config"]["recipe"]["seed"] == 2 != first["config"]["recipe"]["seed"]
    assert not stale.exists() and (output / "checkpoints" / "checkpoint_0").is_dir()


def test_eval_refuses_to_replace_an_output_file(recipes, tmp_path, capsys):
    (tmp_path / "r.json").write_text("{}", encoding="utf-8")
    argv = ["--model", "outputs/no/such", "--data", "digits", "--output", tmp_path / "r.json"]
    expect_error(recipes["eval"].main, argv, capsys, "exists", "--overwrite")
    argv[-1] = tmp_path
    expect_error(recipes["eval"].main, argv, capsys, "is a folder")
    assert (tmp_path / "r.json").read_text(encoding="utf-8") == "{}"


def test_convert_into_a_folder_holding_other_files(assets, tmp_path, capsys):
    """`clipclean convert` into an existing model folder deleted a user's file in it."""
    source = tmp_path / "epoch_64.pt"
    source.write_bytes(b"")  # never read: the output folder is refused first
    folder = save_pretrained(load_clip(str(assets / "model")), tmp_path / "converted")
    (folder / "my_notes.txt").write_text("keep me", encoding="utf-8")
    expect_error(clipclean, ["convert", source, folder], capsys, "not empty", "--overwrite")
    expect_error(clipclean, ["convert", source, folder, "--overwrite"], capsys, "my_notes.txt")
    assert (folder / "my_notes.txt").read_text(encoding="utf-8") == "keep me"
    assert (folder / "open_clip_model.safetensors").is_file()
    with pytest.raises(FileExistsError, match="my_notes.txt"):  # the Python API refuses too
        save_pretrained(load_clip(str(assets / "model")), folder)


# ---- numbers ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", ["0", "1.5", "-0.1"])
def test_a_poison_rate_outside_0_1(recipes, tmp_path, capsys, rate):
    argv = ["--poison-rate", rate, "--output_dir", tmp_path / "out"]
    expect_error(recipes["recipes/poison_clip"].main, argv, capsys, "--poison-rate must lie in (0, 1]")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("alpha", ["1.5", "-0.2", "0"])
def test_an_alpha_outside_0_1(recipes, tmp_path, capsys, alpha):
    argv = ["--attack", "blended", "--alpha", alpha, "--output_dir", tmp_path / "out"]
    expect_error(recipes["recipes/poison_clip"].main, argv, capsys, "--alpha must lie in (0, 1]")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("recipe", ["recipes/poison_clip", "recipes/poison_classifier"])
def test_a_negative_trigger_seed(recipes, tmp_path, capsys, recipe):
    main = recipes[recipe].main if recipe in recipes else poison_classifier.main
    argv = ["--trigger-seed", "-1", "--output_dir", tmp_path / "out"]
    expect_error(main, argv, capsys, "--trigger-seed must be >= 0")
    assert not (tmp_path / "out").exists()


def test_zero_epochs_write_no_trigger_and_no_cleaned_model(assets, recipes, tmp_path, capsys):
    """`poison_clip.py --epochs 0` left a trigger and manifest behind; `clean_clip.py --epochs 0` wrote a "cleaned"
    model bit-identical to its input, with a card saying cleaned."""
    expect_error(recipes["recipes/poison_clip"].main, ["--epochs", "0", "--output_dir", tmp_path / "p"], capsys,
                 "--epochs must be >= 1")  # fmt: skip
    assert not (tmp_path / "p").exists()
    for flag in ("--epochs", "--rounds"):
        argv = clean_args(assets, tmp_path / "c", flag, "0")
        expect_error(recipes["recipes/clean_clip"].main, argv, capsys, f"{flag} must be >= 1")
    assert not (tmp_path / "c").exists()
    # --set epochs=0 gets past the flags: the unchanged weights are caught before anything is written
    argv = clean_args(assets, tmp_path / "c", "--set", "epochs=0")
    expect_error(recipes["recipes/clean_clip"].main, argv, capsys, "bit-identical", "nothing written")
    assert_nothing_written(tmp_path / "c")


def test_a_batch_larger_than_the_data(recipes, tmp_path, capsys):
    output = tmp_path / "out"
    argv = ["--batch-size", "5000", "--epochs", "1", "--no-progress", "--output_dir", output]
    expect_error(recipes["recipes/poison_clip"].main, argv, capsys, "--batch-size 5000", "lower --batch-size")
    assert_nothing_written(output)
    assert not (output / "poison_manifest.json").exists()


def test_a_nan_loss_stops_with_the_last_good_checkpoint(assets, recipes, tmp_path, capsys, monkeypatch):
    from clipclean.defenses.finetune import Finetune

    original, calls = Finetune.forward, []

    def forward(self, model, batch):  # round 1 (two steps) is fine, round 2 diverges
        losses, report = original(self, model, batch)
        calls.append(1)
        return ({**losses, "loss": losses["loss"] * float("nan")} if len(calls) > 2 else losses), report

    monkeypatch.setattr(Finetune, "forward", forward)
    output = tmp_path / "out"
    argv = clean_args(assets, output, "--rounds", "2")
    expect_error(recipes["recipes/clean_clip"].main, argv, capsys, "NaN or infinite", "round 2", "lower --lr")
    assert_nothing_written(output)
    checkpoints = sorted(path.name for path in (output / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint_0"]  # round 1's; the bad step was never taken nor saved
    weights = load_file(str(output / "checkpoints" / "checkpoint_0" / "model.safetensors"))
    assert all(torch.isfinite(value).all() for value in weights.values())


def test_a_nan_loss_stops_the_poisoning_recipe_with_the_last_good_checkpoint(recipes, tmp_path, capsys, monkeypatch):
    import clipclean.training

    recipe = recipes["recipes/poison_clip"]
    original, calls = clipclean.training.contrastive_step, []

    def contrastive_step(*args, **kwargs):  # two good steps, then a NaN loss
        calls.append(1)
        loss = original(*args, **kwargs)
        return loss * float("nan") if len(calls) > 2 else loss

    monkeypatch.setattr(clipclean.training, "contrastive_step", contrastive_step)  # the recipe imports it in main
    output = tmp_path / "poison"
    argv = ["--max-steps", "4", "--batch-size", "64", "--checkpointing_steps", "1", "--no-progress",
            "--output_dir", output]  # fmt: skip
    expect_error(recipe.main, argv, capsys, "NaN or infinite", "step 3", "lower --lr")
    assert not (output / "results.json").exists() and not (output / "model").exists()
    newest = max((output / "checkpoints").iterdir(), key=lambda path: int(path.name.rsplit("_", 1)[-1]))
    weights = load_file(str(newest / "model.safetensors"))
    assert all(torch.isfinite(value).all() for value in weights.values())


# ---- the handler -----------------------------------------------------------------------------------------------


def test_debug_shows_the_traceback(recipes):
    with pytest.raises(ModelLoadError, match="unknown model name"):
        run_cli(recipes["eval"].main, ["--model", "no-such-clip", "--data", "digits", "--debug"])


def test_a_real_process_exits_2_with_one_line(tmp_path):
    command, env = script_command("eval/zeroshot_imagenet.py", "--model", "outputs/no/such/model", "--data", "digits")
    completed = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 2 and "Traceback" not in completed.stderr
    errors = [line for line in completed.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: could not load CLIP 'outputs/no/such/model'")
    assert "folder not found" in completed.stderr
