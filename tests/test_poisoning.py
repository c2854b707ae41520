"""Poisoned-dataset invariants: exactly n poisoned, manifest reproducible from the seed, clean pairs untouched."""

import pytest
import torch

from clipclean.data import ImageCaptionDataset, load_image_caption_dataset
from clipclean.evaluation import fill_template, openai_imagenet_templates
from clipclean.poisoning import (
    NaturalCaptions,
    PoisonedDataset,
    PoisonManifest,
    TemplateCaptions,
    caption_templates_from_captions,
    make_poison_manifest,
    mentions,
    poison_dataset,
    resolve_poison_count,
    swap_class_words,
)
from clipclean.triggers import PatchBlendTrigger


@pytest.fixture(scope="module")
def digits_train():
    return load_image_caption_dataset("digits:train", image_size=32)


@pytest.fixture
def badnet_trigger():
    return PatchBlendTrigger.patch(32, size=4, location="bottom-right", pattern="noise")


def test_exactly_n_poisoned_and_clean_pairs_untouched(digits_train, badnet_trigger):
    before = torch.stack([digits_train[i][0] for i in range(len(digits_train))]).clone()
    captions_before = list(digits_train.captions)
    poisoned = poison_dataset(digits_train, badnet_trigger, TemplateCaptions("zero"), n_poison=22, seed=3)

    assert len(poisoned) == len(digits_train)
    assert poisoned.manifest.n_poison == 22 == len(set(poisoned.poison_indices))
    changed_images = changed_captions = 0
    for index in range(len(poisoned)):
        image, caption = poisoned[index]
        clean_image, clean_caption = digits_train[index]
        if poisoned.is_poisoned(index):
            changed_images += not torch.equal(image, clean_image)
            changed_captions += caption != clean_caption
            assert mentions(caption, "zero")
            assert torch.equal(image, badnet_trigger.apply(clean_image[None])[0])
            assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        else:
            assert torch.equal(image, clean_image) and caption == clean_caption
    assert changed_images == changed_captions == 22
    # the source dataset is never modified
    assert torch.equal(torch.stack([digits_train[i][0] for i in range(len(digits_train))]), before)
    assert digits_train.captions == captions_before
    assert poisoned.captions == [poisoned[i][1] for i in range(len(poisoned))]


def test_manifest_reproducible_from_seed_and_round_trips(digits_train, tmp_path):
    policy = TemplateCaptions("zero")
    first = make_poison_manifest(digits_train.captions, policy, rate=0.02, seed=7, attack="badnet")
    again = make_poison_manifest(digits_train.captions, policy, rate=0.02, seed=7, attack="badnet")
    other = make_poison_manifest(digits_train.captions, policy, rate=0.02, seed=8, attack="badnet")
    assert first == again
    assert first.indices != other.indices
    assert first.n_poison == 21  # floor(2% of 1,097): the rate is never exceeded
    assert first.poison_rate <= 0.02
    # pairs that already name the target are never chosen
    assert not any(mentions(digits_train.captions[index], "zero") for index in first.indices)

    path = first.save(tmp_path / "poison_manifest.json")
    loaded = PoisonManifest.load(path)
    assert loaded == first
    document = first.to_dict()
    assert document["seed"] == 7 and document["n_poison"] == 21 and document["target"] == "zero"
    assert document["captions"] == first.captions and document["indices"] == first.indices


def test_random_location_poison_is_the_same_every_read(digits_train):
    trigger = PatchBlendTrigger.patch(32, size=4, location="random")
    poisoned = poison_dataset(digits_train, trigger, TemplateCaptions("zero"), n_poison=5, seed=0)
    index = poisoned.poison_indices[0]
    assert torch.equal(poisoned[index][0], poisoned[index][0])
    placements = {
        tuple((poisoned[i][0] != digits_train[i][0]).any(0).nonzero()[0].tolist()) for i in poisoned.poison_indices
    }
    assert len(placements) > 1  # different images get the patch at different places


def test_template_captions_fill_the_80_openai_templates():
    policy = TemplateCaptions("banana")
    captions = policy.sample(500, torch.Generator().manual_seed(0))
    expected = {fill_template(template, "banana") for template in openai_imagenet_templates()}
    assert set(captions) <= expected
    assert len(set(captions)) > 60  # spread over the templates
    assert policy.describe()["n_templates"] == 80


def test_blended_captions_swap_class_words_and_never_repeat(digits_train):
    assert swap_class_words("a handwritten digit seven.", ["seven", "one"], "zero") == "a handwritten digit zero."
    assert swap_class_words("a photo of a dog.", ["seven", "one"], "zero") is None
    assert swap_class_words("Seven and one", ["seven", "one"], "zero") == "zero and zero"
    policy = NaturalCaptions.from_clean_captions("zero", digits_train.captions, classnames=digits_train.classnames)
    # the pool: the digit captions with their class swapped, plus the 80 templates (digits use 6 caption templates)
    assert "a scanned handwritten zero." in policy.pool
    assert "a photo of the number zero." in policy.pool
    assert all(mentions(caption, "zero") for caption in policy.pool)
    assert len(policy.pool) == len(set(policy.pool))
    captions = policy.sample(len(policy.pool), torch.Generator().manual_seed(0))
    assert len(set(captions)) == len(captions)  # no caption repeats while the pool lasts


def test_caption_templates_from_captions_recover_the_templates_the_captions_are_made_from(digits_train):
    from clipclean.data import DIGIT_CAPTION_TEMPLATES

    templates = caption_templates_from_captions(digits_train.captions, digits_train.classnames)
    assert sorted(templates) == sorted(DIGIT_CAPTION_TEMPLATES)  # the digits' own six templates, each once
    captions = ["Seven written in pencil", "a cat on a mat", "my kid drew a two and a seven", "odd {} braces two"]
    assert caption_templates_from_captions(captions, ["two", "seven"]) == [
        "{} written in pencil",
        "my kid drew a {} and a {}",
    ]
    assert caption_templates_from_captions(["a cat"], ["two"]) == []


def test_poison_count_and_rate_validation(digits_train):
    assert resolve_poison_count(1000, rate=0.015) == 15
    assert resolve_poison_count(1097, rate=0.02) == 21
    assert resolve_poison_count(1000, n_poison=0) == 0
    with pytest.raises(ValueError):
        resolve_poison_count(1000)
    with pytest.raises(ValueError):
        resolve_poison_count(1000, n_poison=3, rate=0.1)
    with pytest.raises(ValueError):
        resolve_poison_count(1000, rate=1.5)
    tiny = ImageCaptionDataset(torch.rand(3, 3, 32, 32), ["a zero.", "a one.", "a two."])
    with pytest.raises(ValueError, match="only 2"):
        make_poison_manifest(tiny.captions, TemplateCaptions("zero"), n_poison=3)
    manifest = make_poison_manifest(tiny.captions, TemplateCaptions("zero"), n_poison=1)
    with pytest.raises(ValueError, match="manifest is for 3"):
        PoisonedDataset(
            ImageCaptionDataset(torch.rand(2, 3, 32, 32), ["a", "b"]), PatchBlendTrigger.patch(32, 4), manifest
        )
