"""recipes/poison_clip.py: in-process smoke runs, resume, two real processes, and (slow) the learning-quality bar."""

import json
from pathlib import Path

import pytest
import torch
from conftest import launch_two_processes
from safetensors.torch import load_file

from clipclean.cli import poison_clip
from clipclean.data import DIGIT_CLASSNAMES, DataError
from clipclean.hub import read_sidecar
from clipclean.models import load_clip
from clipclean.poisoning import PoisonManifest, mentions
from clipclean.triggers import load_trigger

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "poison_clip.py"  # the launchable script
RESULT_KEYS = {
    "attack",
    "target",
    "n_poison",
    "poison_rate",
    "clean_accuracy",
    "attack_success_rate",
    "eval",
    "config",
    "wall_time_s",
    "world_size",
}
# caption styles of no built-in data and of no evaluation template (a new user's CSV)
CAPTION_STYLES = [
    "{} written in pencil",
    "my little sister drew a {} today",
    "scan of the handwritten character {}",
    "handwriting sample: {}",
    "someone wrote {} on a notepad",
]
# 300 pairs, batches of 64 (4 per epoch): a few steps cover an epoch boundary in seconds
TINY = ["--train-data", "digits:defender", "--batch-size", "64", "--warmup-steps", "2", "--no-progress"]


@pytest.fixture(scope="module")
def recipe():
    return poison_clip


def _weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(output_dir / "model" / "open_clip_model.safetensors"))


def test_recipe_in_process_writes_the_output_folder(recipe, tmp_path):
    output = tmp_path / "badnet"
    results = recipe.main([*TINY, "--attack", "badnet", "--max-steps", "3", "--output_dir", str(output)])

    assert RESULT_KEYS <= set(results)
    assert results == json.loads((output / "results.json").read_text())
    assert results["world_size"] == 1 and results["steps"] == 3
    assert results["attack"] == "badnet" and results["target"] == "zero"
    assert results["n_poison"] == 15 and results["poison_rate"] == pytest.approx(15 / 300)  # default rate 5%
    assert results["eval"]["n_images"] == 400 and results["eval"]["templates"].endswith("DIGIT_CAPTION_TEMPLATES")
    assert 0 <= results["clean_accuracy"] <= 1 and 0 <= results["attack_success_rate"] <= 1
    assert results["config"]["attack"]["method"] == "badnet"

    manifest = PoisonManifest.load(output / "poison_manifest.json")
    assert manifest.n_poison == 15 and manifest.seed == 0 and manifest.target == "zero"
    assert all(mentions(caption, "zero") for caption in manifest.captions)
    trigger = load_trigger(output / "trigger.json")
    assert trigger.family == "patch_blend" and trigger.coverage() == pytest.approx(16 / 1024)
    assert (output / "trigger.png").stat().st_size > 0 and (output / "trigger.safetensors").is_file()

    model = load_clip(str(output / "model"))  # open_clip Hub layout
    assert model.image_size == (32, 32)
    provenance = read_sidecar(output / "model")["provenance"]
    assert provenance["attack"]["method"] == "badnet" and provenance["n_poison"] == 15
    assert provenance["poison_manifest"] == "../poison_manifest.json"
    assert not (output / "checkpoints").exists()  # a finished run deletes them (--keep-checkpoints keeps them)


def test_classnames_reach_the_evaluation_set_and_a_relabelling_file_is_refused(recipe, digit_class_folders, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("\n".join([*DIGIT_CLASSNAMES[:-1], "9"]) + "\n", encoding="utf-8")  # not the folder names
    arguments = [*TINY, "--eval-data", str(digit_class_folders["data"]), "--classnames", str(names)]
    with pytest.raises(DataError, match=r"names\.txt line 1: 'zero' would name folder 'eight'"):
        recipe.main([*arguments, "--max-steps", "1", "--output_dir", str(tmp_path / "run")])


def test_recipe_badclip_and_blended_in_process(recipe, tmp_path):
    badclip = recipe.main(
        [*TINY, "--attack", "badclip", "--badclip-steps", "3", "--max-steps", "1", "--output_dir", str(tmp_path / "c")]
    )
    report = badclip["config"]["attack"]["report"]
    assert report["n_optimisation_images"] > 0 and "last_step" in report
    blended = recipe.main(
        [*TINY, "--attack", "blended", "--alpha", "0.1", "--poison-count", "4", "--max-steps", "1"]
        + ["--output_dir", str(tmp_path / "b")]
    )
    assert blended["n_poison"] == 4 and blended["config"]["attack"]["config"]["alpha"] == 0.1
    captions = PoisonManifest.load(tmp_path / "b" / "poison_manifest.json").captions
    assert len(set(captions)) == 4  # blended captions do not repeat


def test_the_trigger_is_the_same_for_every_run_seed_unless_the_trigger_seed_is_given(recipe, tmp_path):
    """``--seed`` orders the data and draws the poisoned pairs; the trigger's noise comes from ``--trigger-seed``
    (default 0), so a run seed is not also a draw of another patch (seed 3's, the darkest, implanted only partly on
    run seed 3: docs/attacks.md, "The first grid's miss")."""

    def run(name: str, *flags: str) -> tuple[torch.Tensor, list[int]]:
        output = tmp_path / name
        recipe.main([*TINY, "--attack", "badnet", "--max-steps", "1", *flags, "--output_dir", str(output)])
        pattern = load_trigger(output / "trigger.json").patch_pattern.detach()
        return pattern, PoisonManifest.load(output / "poison_manifest.json").indices

    seed0, pairs0 = run("s0", "--seed", "0")
    seed3, pairs3 = run("s3", "--seed", "3")
    own3, own_pairs3 = run("t3", "--seed", "3", "--trigger-seed", "3")
    assert torch.equal(seed0, seed3)  # the same patch whatever the run's seed
    assert pairs0 != pairs3 and own_pairs3 == pairs3  # the run's seed still draws which pairs are poisoned
    assert not torch.equal(own3, seed3)  # a trigger seed of its own draws another patch
    assert float(own3.mean()) < float(seed0.mean())  # seed 3's draw is the darker one (docs/attacks.md)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(recipe, tmp_path):
    common = [*TINY, "--attack", "badnet", "--trigger-location", "random", "--max-steps", "6", "--seed", "3"]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    recipe.main([*common, "--output_dir", str(straight)])

    stopped = recipe.main([*common, "--output_dir", str(interrupted), "--stop_after_steps", "5"])
    assert stopped["stopped_at_step"] == 5
    assert not (interrupted / "results.json").exists()
    resumed = recipe.main([*common, "--output_dir", str(interrupted), "--resume_from_checkpoint", "latest"])

    assert resumed["steps"] == 6  # steps 6 only: 5 were restored, the epoch-1 batch already seen is skipped
    expected, actual = _weights(straight), _weights(interrupted)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    straight_results = json.loads((straight / "results.json").read_text())
    assert resumed["clean_accuracy"] == pytest.approx(straight_results["clean_accuracy"])
    # the training monitor is checkpointed with the run: the resumed run reports all six steps
    resumed_curve, straight_curve = resumed["training"], straight_results["training"]
    assert resumed_curve["steps"] == straight_curve["steps"] == 6
    assert resumed_curve["plateau_steps"] == straight_curve["plateau_steps"]
    assert [epoch["steps"] for epoch in resumed_curve["epochs"]] == [4, 2]
    for got, want in zip(resumed_curve["epochs"], straight_curve["epochs"]):
        assert got["loss"] == pytest.approx(want["loss"]) and got["grad_norm"] == pytest.approx(want["grad_norm"])


def test_a_run_that_does_not_learn_says_so_and_is_saved_as_not_converged(recipe, tmp_path, capsys):
    """Two steps learn nothing: the run must end with a warning and ``"converged": false`` (results, sidecar and
    model card), never a silently saved broken model."""
    output = tmp_path / "short"
    results = recipe.main([*TINY, "--attack", "badnet", "--max-steps", "2", "--output_dir", str(output)])
    log = capsys.readouterr().err  # the recipe's logging handler writes to stderr

    assert results["converged"] is False
    assert json.loads((output / "results.json").read_text())["converged"] is False
    convergence = results["convergence"]
    assert convergence["min_clean_accuracy"] == pytest.approx(0.5) and convergence["min_attack_success_rate"] == 0.5
    assert any(failure.startswith("attack success rate") for failure in convergence["failures"])
    assert "WARNING poison_clip: THE RUN DID NOT CONVERGE: " in log and '"converged": false' in log
    assert read_sidecar(output / "model")["metrics"]["converged"] is False
    assert "did not converge" in (output / "model" / "README.md").read_text()
    # the training curve is reported: steps, the collapsed loss ln(64) and the steps spent on it
    training = results["training"]
    assert training["steps"] == 2 and training["collapsed_loss"] == pytest.approx(4.1589, abs=1e-4)
    assert 0 <= training["plateau_steps"] <= 2 and training["max_grad_norm"] > 0
    assert results["config"]["training"]["grad_clip"] == 1.0  # clipping is on by default

    assert results["partial_backdoor"] is False  # not converged: the failure speaks, not the partial flag

    # the thresholds are flags: with none asked for, the same kind of run counts as converged -- and, its ASR under
    # --full-asr, as a partial backdoor, with its own warning
    capsys.readouterr()
    lenient = recipe.main(
        [
            *TINY,
            "--max-steps",
            "1",
            "--target",
            "one",
            "--min-clean-accuracy",
            "0",
            "--min-asr",
            "0",
            "--full-asr",
            "1",
            "--output_dir",
            str(tmp_path / "l"),
        ]  # fmt: skip
    )
    log = capsys.readouterr().err
    assert lenient["converged"] is True and lenient["convergence"]["failures"] == []
    assert lenient["attack_success_rate"] < 1 and lenient["partial_backdoor"] is True
    assert "WARNING poison_clip: THE BACKDOOR TOOK ONLY PARTLY: attack success rate" in log
    assert "THE RUN DID NOT CONVERGE" not in log
    assert read_sidecar(tmp_path / "l" / "model")["metrics"]["partial_backdoor"] is True
    assert "took only partly" in (tmp_path / "l" / "model" / "README.md").read_text()
    for flags in (
        ["--grad-clip", "-1"],
        ["--min-asr", "1.5"],
        ["--min-clean-accuracy", "-0.1"],
        ["--full-asr", "1.5"],
        ["--full-asr", "0.3"],  # under --min-asr's 0.5
    ):
        with pytest.raises(SystemExit):
            recipe.parse_args([*TINY, *flags])


def _styled_digits_csv(folder: Path, split: str) -> Path:
    """A digits split as PNG files + a CSV whose captions use five styles neither the digits nor the evaluation
    templates use (the captions a new user writes; ``DIGIT_CAPTION_TEMPLATES`` evaluate)."""
    import numpy as np
    from PIL import Image

    from clipclean.data import load_image_caption_dataset

    digits = load_image_caption_dataset(f"digits:{split}", image_size=32)
    rng = np.random.default_rng(123)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["filepath,caption"]
    for index in range(len(digits)):
        image, _ = digits[index]
        path = folder / f"{index:04d}.png"
        Image.fromarray((image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()).save(path)
        style = CAPTION_STYLES[rng.integers(len(CAPTION_STYLES))]
        lines.append(f'{path},"{style.format(DIGIT_CLASSNAMES[digits.labels[index]])}"')
    csv = folder / "pairs.csv"
    csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return csv


def test_from_scratch_the_poisoned_captions_follow_the_training_captions_style(recipe, tmp_path):
    """A CLIP trained from scratch on captions in its own style gets poisoned captions in that style (the templates
    its captions are made from), not the 80 OpenAI templates it would meet only in the poisoned pairs."""
    data = _styled_digits_csv(tmp_path / "data", "defender")
    own = {style.format("three") for style in CAPTION_STYLES}
    for attack in ("badnet", "blended"):
        output = tmp_path / attack
        common = ["--batch-size", "64", "--no-progress", "--max-steps", "1", "--target", "three"]
        recipe.main([*common, "--train-data", str(data), "--attack", attack, "--output_dir", str(output)])
        captions = PoisonManifest.load(output / "poison_manifest.json").captions  # 300 pairs at the default 5%
        assert len(captions) == 15 and set(captions) <= own, (attack, captions)
    # a pretrained model keeps the literature's default (the OpenAI templates) for the same data
    args = recipe.parse_args(["--train-data", str(data), "--pretrained", "some-tag"])
    assert not recipe._trained_from_scratch(args)


def test_recipe_under_accelerate_launch_with_two_processes(tmp_path):
    output = tmp_path / "two"
    launch_two_processes(
        RECIPE.relative_to(ROOT),
        *TINY,
        *("--attack", "blended", "--max-steps", "3", "--output_dir", str(output)),
    )
    results = json.loads((output / "results.json").read_text())
    assert results["world_size"] == 2
    assert results["steps"] == 3 and results["eval"]["n_images"] == 400  # gather_for_metrics drops the padding
    assert PoisonManifest.load(output / "poison_manifest.json").n_poison == 15  # the default 5% of 300
    assert (output / "model" / "open_clip_model.safetensors").is_file()


@pytest.mark.slow
def test_each_attack_reaches_90_percent_asr_at_2_percent_poison_without_hurting_clean_accuracy(digits_clips):
    """The issue's bar, with fixed seeds: on digits, a tiny CLIP trained from scratch with <= 2% poisoned pairs
    reaches ASR >= 90% for every attack while its clean zero-shot accuracy stays within 3 points of the same training
    without poison (benchmarks/attacks.md records the numbers of these exact commands; the models are the shared
    ``digits_clips`` of conftest.py; badclip's patch is optimised against the never-poisoned one)."""
    _, clean = digits_clips("none")
    assert clean["n_poison"] == 0
    assert clean["clean_accuracy"] >= 0.93  # the clean task is learned
    assert clean["attack_success_rate"] <= 0.05  # a never-poisoned model ignores the patch
    for attack in ("badnet", "blended", "badclip"):
        _, results = digits_clips(attack)
        assert results["poison_rate"] <= 0.02 and results["n_poison"] == 21, attack
        assert results["attack_success_rate"] >= 0.90, (attack, results["attack_success_rate"])
        assert results["clean_accuracy"] >= clean["clean_accuracy"] - 0.03, (attack, results["clean_accuracy"])


def _assert_usable(results: dict) -> None:
    label = (results["attack"], results["config"]["training"]["seed"], results["target"])
    assert results["converged"] is True, (label, results["convergence"])
    assert results["clean_accuracy"] >= 0.90, (label, results["clean_accuracy"])
    assert results["attack_success_rate"] >= 0.90, (label, results["attack_success_rate"])
    # the run left the collapsed start (loss ln(128)) early instead of sitting there
    assert results["training"]["plateau_steps"] <= 60, (label, results["training"]["plateau_steps"])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("attack", "seed", "target"),
    [("badnet", 1, "seven"), ("badnet", 3, "eight"), ("blended", 3, "three"), ("badclip", 4, "eight")],
)
def test_defaults_learn_the_task_and_the_backdoor_on_other_seeds_and_targets(recipe, tmp_path, attack, seed, target):
    """The defaults train a usable backdoored model away from seed 0 and target "zero" (seed 1 used to end at
    CA 53.5% / ASR 2.0% for badnet: the gradient spike that re-collapsed it, docs/attacks.md "Stable training")."""
    arguments = ["--attack", attack, "--seed", str(seed), "--target", target, "--no-progress"]
    _assert_usable(recipe.main([*arguments, "--output_dir", str(tmp_path / "run")]))


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["badnet", "blended"])
def test_the_backdoor_takes_when_the_captions_are_in_another_style_than_the_evaluation_templates(
    recipe, tmp_path, attack
):
    """Digits as a new user brings them: a CSV whose captions use five styles of their own, evaluated with the
    digit templates (as real data is evaluated with templates its captions never used); target "three", seed 3."""
    data = _styled_digits_csv(tmp_path / "data", "train")
    arguments = ["--train-data", str(data), "--attack", attack, "--target", "three", "--seed", "3", "--no-progress"]
    results = recipe.main([*arguments, "--output_dir", str(tmp_path / "run")])
    assert results["eval"]["templates"].endswith("DIGIT_CAPTION_TEMPLATES")
    captions = PoisonManifest.load(tmp_path / "run" / "poison_manifest.json").captions
    assert set(captions) <= {style.format("three") for style in CAPTION_STYLES}
    _assert_usable(results)
