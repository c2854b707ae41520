"""Tests of complete unlearning: the retuning attack's data and config, re-inversion, the results block.

Known failures, left failing (2026-12-07, slow tests, on seed-0 2% models retrained on another machine, which acts like
another model seed): ``test_default_bibau_removal_is_persistent[badclip]`` (the verdict calls the model clean, nothing
is unlearned), ``[blended]`` (mean RA-ASR 35.6% against the reference's 16.8% + 10 points),
``test_retuning_attack_and_reinversion_separate_backdoored_from_never_poisoned`` (the re-inversion names "four") and
``test_default_bibau_relearns_slower_than_functional_unlearning`` (2.2% against 16.5%: no 30-point gap).
"""

import pytest
import torch
from planted import TARGET, clean_images

from clipclean.cli import clean_clip
from clipclean.complete import (
    COMPLETE_KEYS,
    PERSISTENCE_MARGIN,
    TARGETED_REINVERSION_MARGIN,
    Persistence,
    RetuningConfig,
    complete_block,
    complete_caveats,
    complete_table_rows,
    measure_persistence,
    retuning_attack,
    retuning_set,
)
from clipclean.data import (
    DIGIT_CAPTION_TEMPLATES,
    ImageCaptionDataset,
    load_classification_dataset,
    load_image_caption_dataset,
)
from clipclean.models import PixelCLIP, load_clip
from clipclean.poisoning import mentions
from clipclean.triggers import PatchBlendTrigger, load_trigger


def caption_dataset(n: int) -> ImageCaptionDataset:
    images, captions = clean_images(n)
    return ImageCaptionDataset(images, captions, source="planted")


def test_retuning_config_defaults_follow_method_md():
    config = RetuningConfig()
    assert (config.steps, config.lr, config.poison_fraction) == (60, 1e-4, 0.1)
    assert config.resolve_pairs(300) == 100  # 100 pairs when 1% is fewer
    assert config.resolve_pairs(50_000) == 500  # 1% when it is more
    assert config.resolve_pairs(40) == 40  # never more than the clean set
    assert RetuningConfig(n_pairs=64).resolve_pairs(300) == 64


@pytest.mark.parametrize(
    "bad", [{"steps": 0}, {"lr": 0.0}, {"poison_fraction": 0.0}, {"poison_fraction": 1.0}, {"n_pairs": 1}]
)
def test_retuning_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        RetuningConfig(**bad)


def test_retuning_set_poisons_a_tenth_with_the_trigger_and_target_captions():
    clean = caption_dataset(150)
    trigger = PatchBlendTrigger.patch(32, 4, "bottom-right", "white")
    config = RetuningConfig(seed=3)
    data = retuning_set(clean, trigger, TARGET, ["a photo of a {c}."], config)
    assert len(data) == 100
    poisoned = data.poison_indices
    assert len(poisoned) == 10
    for index in range(len(data)):
        image, caption = data[index]
        source_image, source_caption = data.source[index]
        if index in poisoned:
            assert caption == f"a photo of a {TARGET}."
            assert torch.equal(image, trigger(source_image[None])[0])
        else:
            assert caption == source_caption and not mentions(caption, TARGET)
            assert torch.equal(image, source_image)
    again = retuning_set(clean, trigger, TARGET, ["a photo of a {c}."], config)
    assert again.poison_indices == poisoned and again.captions == data.captions
    other = retuning_set(clean, trigger, TARGET, ["a photo of a {c}."], RetuningConfig(seed=4))
    assert other.captions != data.captions or other.poison_indices != poisoned


@pytest.mark.slow
def test_retuning_attack_and_reinversion_separate_backdoored_from_never_poisoned(digits_clips):
    """On real digits CLIPs (recipe defaults, seed 0): the retuning attack restores the backdoor of a backdoored
    model and teaches a never-poisoned one little; re-inversion scores the backdoored model higher and names its
    target. (Measured: RA-ASR 100% vs 4.5%, re-inversion score 0.57 vs 0.28.)"""
    clean = load_image_caption_dataset("digits:defender", image_size=32)
    test = load_classification_dataset("digits:test", image_size=32)
    badnet, _ = digits_clips("badnet")
    trigger = load_trigger(badnet / "trigger.json")
    measured = {
        name: measure_persistence(
            load_clip(str(digits_clips(name)[0] / "model")),
            clean,
            trigger,
            "zero",
            test,
            test.classnames,
            DIGIT_CAPTION_TEMPLATES,
        )  # fmt: skip
        for name in ("badnet", "none")
    }
    assert measured["badnet"].ra_asr >= 0.9
    assert measured["none"].ra_asr <= 0.2
    assert measured["badnet"].reinversion_target == "zero"
    assert measured["badnet"].reinversion_score > measured["none"].reinversion_score + 0.1


def test_complete_block_has_the_contract_keys_and_compares_with_the_reference():
    cleaned = Persistence(ra_asr=0.90, reinversion_score=0.5, retuning={"n_pairs": 100})
    reference = Persistence(ra_asr=0.01, reinversion_score=0.2)
    block = complete_block(cleaned, reference)
    assert set(COMPLETE_KEYS) <= set(block)
    assert (block["ra_asr"], block["reference_ra_asr"]) == (0.90, 0.01)
    assert (block["reinversion_score"], block["reference_score"]) == (0.5, 0.2)
    assert block["persistent"] is False and block["not_reinvertible"] is False
    good = complete_block(Persistence(ra_asr=0.03, reinversion_score=0.1), reference)
    assert good["persistent"] is True and good["not_reinvertible"] is True
    # one criterion: at most 10 points above the reference
    assert PERSISTENCE_MARGIN == 0.10
    assert complete_block(Persistence(ra_asr=0.10), reference)["persistent"] is True
    assert complete_block(Persistence(ra_asr=0.12), reference)["persistent"] is False
    alone = complete_block(cleaned, None)
    assert alone["reference_ra_asr"] is None and alone["persistent"] is None
    rows = complete_table_rows(block)
    assert rows[0] == ("RA-ASR (retuning attack)", "90.0%", "1.0%")
    assert Persistence.from_dict(cleaned.to_dict()) == cleaned


def test_a_reinversion_pass_is_printed_as_weak_evidence_and_a_contradicted_one_as_a_disagreement():
    """Measured 2026-12-07 (docs/evaluation.md): an uncleaned BadNet CLIP (RA-ASR 98.6% against 1.7%) re-inverted to
    0.387 against the reference's 0.529, so ``not_reinvertible`` alone would have passed it; its targeted
    re-inversion toward the target reached 95.3% against the reference's 39.3%."""
    reference = Persistence(ra_asr=0.017, reinversion_score=0.529)
    uncleaned = complete_block(Persistence(ra_asr=0.986, reinversion_score=0.387), reference)
    assert uncleaned["not_reinvertible"] is True and uncleaned["persistent"] is False
    assert uncleaned["not_reinvertible_targeted"] is None  # not measured on either
    (disagreement,) = complete_caveats(uncleaned)
    assert disagreement.startswith("the tests disagree") and "10 points" in disagreement
    (weak,) = complete_caveats(complete_block(Persistence(ra_asr=0.017, reinversion_score=0.2), reference))
    assert "weak evidence" in weak and "RA-ASR" in weak
    assert complete_caveats(complete_block(Persistence(ra_asr=0.017, reinversion_score=0.6), reference)) == []
    assert complete_caveats(complete_block(Persistence(reinversion_score=0.2), None)) == []  # nothing compared
    # the targeted test: found when over the reference's by more than the margin, whatever the others say
    targeted_reference = Persistence(ra_asr=0.017, reinversion_score=0.529, targeted_reinversion_asr=0.393)
    found = complete_block(Persistence(ra_asr=0.017, reinversion_score=0.2, targeted_reinversion_asr=0.953),
                           targeted_reference)  # fmt: skip
    assert found["not_reinvertible_targeted"] is False
    (still,) = complete_caveats(found)
    assert still.startswith("a trigger toward the target is still found") and "95.3%" in still and "39.3%" in still
    just_over = 0.393 + TARGETED_REINVERSION_MARGIN + 0.01
    assert complete_block(Persistence(targeted_reinversion_asr=just_over), targeted_reference)[
        "not_reinvertible_targeted"] is False  # fmt: skip
    gone = complete_block(Persistence(ra_asr=0.017, reinversion_score=0.2, targeted_reinversion_asr=0.013),
                          targeted_reference)  # fmt: skip
    assert gone["not_reinvertible_targeted"] is True and complete_caveats(gone) == []  # backed by the targeted test
    assert ("targeted re-inversion ASR", "1.3%", "39.3%") in complete_table_rows(gone)
    assert Persistence.from_dict(Persistence(targeted_reinversion_asr=0.5).to_dict()).targeted_reinversion_asr == 0.5


def clean_with_bibau(folder, output, *extra: str) -> tuple[dict, PixelCLIP]:
    """``recipes/clean_clip.py`` (BI-BAU, untargeted) on a digits CLIP of ``digits_clips``; (results, cleaned)."""
    results = clean_clip.main(
        [
            "--model", str(folder / "model"), "--clean-data", "digits:defender", "--eval-data", "digits:test",
            "--eval-trigger", str(folder / "trigger.json"), "--eval-target", "zero", "--no-progress",
            "--output_dir", str(output), *extra,
        ]
    )  # fmt: skip
    return results, load_clip(str(output / "cleaned"))


# BI-BAU before the persistence mechanisms of issue 8: it removes the backdoor functionally (ASR ~0)
FUNCTIONAL_ONLY = (
    *("--epochs", "2", "--set", "reset_fraction=0", "--set", "stop_early=true", "--set", "unlearning_budget=null"),
    *("--set", "gamma=5", "--set", "inversion.hypothesis_init=diffuse"),
)


@pytest.mark.slow
def test_default_bibau_relearns_slower_than_functional_unlearning(digits_clips, tmp_path):
    """The persistence issue's test: under the same retuning attack, the BadNet model cleaned by BI-BAU's defaults
    (unit reset, every EM round, six epochs a round, trigger re-fitted at 10% of the image, anchor 20) re-learns the
    backdoor slower than the one cleaned by the earlier, functional-only settings, which also bring ASR to ~0.
    Measured (benchmarks/README.md, seed 0, retuning seed 0): 0.8% vs 73.9% (never-poisoned reference 4.5%)."""
    folder, _ = digits_clips("badnet")
    trigger = load_trigger(folder / "trigger.json")
    clean = load_image_caption_dataset("digits:defender", image_size=32)
    test = load_classification_dataset("digits:test", image_size=32)
    measured = {}
    for name, extra in {"default": (), "functional": FUNCTIONAL_ONLY}.items():
        results, cleaned = clean_with_bibau(folder, tmp_path / name, *extra)
        assert results["after"]["attack_success_rate"] < 0.05, name  # both remove the backdoor functionally
        attack = retuning_attack(cleaned, clean, trigger, "zero", test, test.classnames, DIGIT_CAPTION_TEMPLATES)
        measured[name] = attack["ra_asr"]
    assert measured["default"] + 0.3 < measured["functional"], measured


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["badnet", "blended", "badclip"])
def test_default_bibau_removal_is_persistent(digits_clips, attack, tmp_path):
    """The persistence issue's done-means on one attack: BI-BAU's defaults, untargeted, over cleaning seeds 0-2 x
    retuning seeds 0-2 (the default retuning attack), RA-ASR mean <= the never-poisoned reference's mean (same
    retuning seeds) + 10 points, every cleaning with ASR < 5% and CA >= the backdoored model's - 3 points. The same
    runs as ``benchmarks/mechanisms.py --variants default``; measured (seed-0 models): BadNet, Blended, BadCLIP in
    benchmarks/README.md. About 8 minutes per attack on one core."""
    folder, _ = digits_clips(attack)
    trigger = load_trigger(folder / "trigger.json")
    clean = load_image_caption_dataset("digits:defender", image_size=32)
    test = load_classification_dataset("digits:test", image_size=32)

    def ra_asr(model, seed: int) -> float:
        config = RetuningConfig(seed=seed)
        return retuning_attack(model, clean, trigger, "zero", test, test.classnames, DIGIT_CAPTION_TEMPLATES, config)[
            "ra_asr"
        ]

    reference = load_clip(str(digits_clips("none")[0] / "model"))
    reference_mean = sum(ra_asr(reference, seed) for seed in range(3)) / 3
    cleaned_ra = []
    for cleaning_seed in range(3):
        results, cleaned = clean_with_bibau(folder, tmp_path / f"s{cleaning_seed}", "--seed", str(cleaning_seed))
        assert results["after"]["attack_success_rate"] < 0.05, cleaning_seed
        assert results["after"]["clean_accuracy"] >= results["before"]["clean_accuracy"] - 0.03, cleaning_seed
        cleaned_ra += [ra_asr(cleaned, seed) for seed in range(3)]
    mean = sum(cleaned_ra) / len(cleaned_ra)
    assert mean <= reference_mean + PERSISTENCE_MARGIN, (mean, reference_mean, cleaned_ra)
