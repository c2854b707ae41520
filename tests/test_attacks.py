"""Attack registry contract (parametrised over every registered attack) and the BadCLIP optimisation."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from clipclean.attacks import (
    ATTACKS,
    AttackConfig,
    AttackContext,
    BadCLIPConfig,
    BadNetConfig,
    BlendedConfig,
    build_attack,
    get_attack,
    list_attacks,
    make_attack_config,
    optimize_badclip_patch,
    register_attack,
)
from clipclean.data import load_image_caption_dataset
from clipclean.poisoning import mentions, poison_dataset
from clipclean.triggers import PatchBlendTrigger, load_trigger, save_trigger

FAST_OVERRIDES = {"target": "zero", "trigger_size": 4, "steps": 3, "batch_size": 16, "max_images": 32}


@pytest.fixture(scope="module")
def digits_defender():
    return load_image_caption_dataset("digits:defender", image_size=32)


def test_registry_holds_the_three_attacks():
    assert list_attacks() == ["badclip", "badnet", "blended"]
    assert get_attack("badnet").config_class is BadNetConfig
    with pytest.raises(ValueError, match="unknown attack"):
        get_attack("sig")


@pytest.mark.parametrize("name", ["BadNet", "bad net", ""])
def test_register_attack_rejects_bad_names(name):
    with pytest.raises(ValueError):
        register_attack(name, BadNetConfig, lambda config, context: None)


def test_register_attack_rejects_duplicates_and_non_configs():
    with pytest.raises(ValueError, match="already registered"):
        register_attack("badnet", BadNetConfig, lambda config, context: None)
    with pytest.raises(TypeError):
        register_attack("mine", dict, lambda config, context: None)
    assert "mine" not in ATTACKS


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_builds_a_trigger_and_captions_naming_the_target(name, digits_defender, tiny_clip, tmp_path):
    options = {field.name for field in dataclasses.fields(get_attack(name).config_class)}
    fast = {key: value for key, value in FAST_OVERRIDES.items() if key in options}
    config = make_attack_config(name, **{"alpha": None, "steps": None, **fast})  # None: not given, default stays
    with pytest.raises(ValueError, match=r"has no option\(s\) \['unknown_flag'\]; options: \['target'"):
        make_attack_config(name, unknown_flag=1)
    assert isinstance(config, AttackConfig) and config.target == "zero"
    assert all(field.default is not dataclasses.MISSING for field in dataclasses.fields(config))  # defaults: one place
    context = AttackContext((32, 32), dataset=digits_defender, model=tiny_clip)
    attack = build_attack(name, config, context)
    assert attack.name == name and attack.config is config

    images = torch.rand(5, 3, 32, 32)
    triggered = attack.trigger.apply(images, generator=torch.Generator().manual_seed(0))
    assert triggered.shape == images.shape
    assert float(triggered.min()) >= 0 and float(triggered.max()) <= 1
    assert not torch.equal(triggered, images)

    captions = attack.caption_policy.sample(10, torch.Generator().manual_seed(0))
    assert len(captions) == 10 and all(mentions(caption, "zero") for caption in captions)

    description = attack.describe()
    assert description["method"] == name and description["config"]["target"] == "zero"
    path = save_trigger(attack.trigger, tmp_path / "trigger", metadata={"attack": description})
    reloaded = load_trigger(path)
    assert torch.allclose(reloaded.apply(images), attack.trigger.apply(images))

    poisoned = poison_dataset(digits_defender, attack.trigger, attack.caption_policy, rate=0.02, seed=0, attack=name)
    assert poisoned.manifest.n_poison == 6 and poisoned.manifest.attack == name


@pytest.mark.parametrize(
    "config_class, kwargs",
    [
        (BadNetConfig, {"trigger_size": 0}),
        (BadNetConfig, {"location": "middle"}),
        (BadNetConfig, {"target": ""}),
        (BadNetConfig, {"templates": ["no placeholder"]}),
        (BlendedConfig, {"alpha": 0.0}),
        (BlendedConfig, {"alpha": 1.5}),
        (BadCLIPConfig, {"location": "random"}),
        (BadCLIPConfig, {"steps": 0}),
        (BadCLIPConfig, {"lr": -1.0}),
    ],
)
def test_configs_validate(config_class, kwargs):
    with pytest.raises(ValueError):
        config_class(**kwargs)


def test_patch_size_default_scales_with_the_image():
    small = build_attack("badnet", BadNetConfig(target="zero"), AttackContext((32, 32)))
    large = build_attack("badnet", BadNetConfig(target="zero"), AttackContext((224, 224)))
    assert small.trigger.patch_mask.shape[-1] == 4  # at least 4 px
    assert large.trigger.patch_mask.shape[-1] == 16  # the literature's 16 px at 224 px


def test_badclip_needs_a_model_and_data():
    with pytest.raises(ValueError, match="victim model"):
        build_attack("badclip", BadCLIPConfig(target="zero"), AttackContext((32, 32)))


def test_badclip_optimisation_raises_the_target_similarity(digits_defender, tiny_clip):
    """The patch optimisation increases what it maximises: the triggered images' similarity to the target text.

    On a random-init tiny CLIP every digit embeds to nearly the same point (mean pairwise cosine 0.999) and one
    4x4 patch token barely moves it, so the test optimises a 16x16 patch (a quarter of the image). The full
    attack against a trained victim is covered by the slow recipe test."""
    model = tiny_clip
    clean = [i for i, caption in enumerate(digits_defender.captions) if not mentions(caption, "zero")][:64]
    images = torch.stack([digits_defender[i][0] for i in clean])
    captions = [digits_defender.captions[i] for i in clean]
    target_captions = ["a photo of the number zero.", "a handwritten digit zero."]
    # the target-image term is degenerate on a random encoder (every image is already at the mean): left out; no
    # augmentation, so each step's objective is measured on the same (resampled) images and the trend is clean
    config = BadCLIPConfig(target="zero", trigger_size=16, steps=40, batch_size=64, lambda_image=0.0, augment=False)
    before = [p.detach().clone() for p in model.parameters()]

    trigger, history = optimize_badclip_patch(model, images, captions, target_captions, None, config)

    assert isinstance(trigger, PatchBlendTrigger) and len(history) == 40
    assert set(history[0]) >= {"objective", "target_text_similarity", "target_image_similarity"}
    first, last = history[:5], history[-5:]
    mean = lambda rows, key: sum(row[key] for row in rows) / len(rows)  # noqa: E731
    assert mean(last, "objective") > mean(first, "objective") + 0.05
    assert mean(last, "target_text_similarity") > mean(first, "target_text_similarity")

    # measured without augmentation on all images: the optimised patch beats its noise initialisation
    with torch.no_grad():
        text = F.normalize(model.encode_text(target_captions).mean(0), dim=-1)
        initial = PatchBlendTrigger.patch(32, 16, location="bottom-right", pattern="noise", seed=0)
        similarity_before = (model.encode_image(initial.apply(images)) @ text).mean()
        similarity_after = (model.encode_image(trigger.apply(images)) @ text).mean()
    assert similarity_after > similarity_before + 0.05
    # the victim is frozen and left as it was
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.requires_grad for p in model.parameters())
    # the mask stays the fixed binary square, only the pattern moved, within [0, 1]
    assert torch.equal(trigger.patch_mask, torch.ones(1, 16, 16))
    assert 0 <= float(trigger.patch_pattern.min()) and float(trigger.patch_pattern.max()) <= 1
