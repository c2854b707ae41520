"""Defenses: contract tests parametrised over the registry, per-method behaviour, one recipe run per defense.

Everything runs on a planted-backdoor tiny CLIP (``tests/planted.py``) or a saved random-init tiny CLIP, with
64 images and a few steps, on one CPU thread (the tiny models are faster single-threaded on shared cores).
"""

import json
import math
import tempfile
from pathlib import Path

import pytest
import torch
from planted import TARGET, PlantedBackdoorCLIP, clean_images, planted_candidates

from clipclean.classifiers import create_classifier
from clipclean.cli import clean_clip
from clipclean.defenses import DEFENSES, DefenseConfig, DefenseContext, build_defense
from clipclean.defenses.baerase import TriggerGenerator, mode_seeking_diversity, target_probability
from clipclean.defenses.cleanclip import augment_images, augment_tokens
from clipclean.fileio import load_state_tree, save_state_tree, to_jsonable
from clipclean.models import load_clip
from clipclean.triggers import Trigger, load_trigger

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "clean_clip.py"
RESULT_KEYS = {"defense", "before", "after", "inversion", "inverted_trigger_asr", "wall_time_s", "config"}

TINY_INVERSION = {"rounds": 1, "steps_per_round": 2, "patch_hypotheses": 1, "verdict_steps": 1, "batch_size": 32}
# Tiny overrides per defense; a defense missing here is still tested, with its defaults.
TINY = {
    "age": {"n_samples": 16, "inversion": TINY_INVERSION},
    "baerase": {"generator_steps": 2, "inversion": TINY_INVERSION},
    "bibau": {"inversion": TINY_INVERSION, "reinversion_steps": 1, "verdict": False},
    "cleanclip": {},
    "finetune": {},
    "ibau": {"inner_steps": 2},
}
# Values each config must reject (besides the shared lr=-1).
BAD_VALUES = {
    "age": {"edit_fraction": 1.5},
    "baerase": {"target_cap": 0.0},
    "bibau": {"alpha": -1.0},
    "cleanclip": {"token_dropout": 1.5},
    "finetune": {"tune": "text"},
    "ibau": {"eps": 2.0},
}
# recipes/clean_clip.py --set options that keep each run to a few seconds
RECIPE_OPTIONS = {
    "age": ["n_samples=16", "inversion.rounds=1", "inversion.steps_per_round=2", "inversion.patch_hypotheses=1"],
    "baerase": ["generator_steps=2", "inversion.rounds=1", "inversion.steps_per_round=2"],
    "bibau": ["inversion.rounds=1", "inversion.steps_per_round=2", "reinversion_steps=1", "verdict=false"],
    "ibau": ["inner_steps=2"],
}


def _setup(target_caption: str | None = None):
    model = PlantedBackdoorCLIP()
    names, embeddings = planted_candidates(model)
    images, captions = clean_images(64)
    tokens = model.tokenize(captions)
    batches = [(images[:32], tokens[:32]), (images[32:], tokens[32:])]
    context = DefenseContext(
        candidate_names=names,
        candidate_embeddings=embeddings,
        target_caption=target_caption,
        reference=model.fresh_copy().requires_grad_(False),
    )
    return model, context, batches


def _prepare_like_the_recipe(model, defense) -> list[torch.nn.Parameter]:
    trainable = defense.trainable_parameters()
    ids = {id(p) for p in trainable}
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in ids)
    model.train()
    return trainable


def _json(value) -> str:
    return json.dumps(to_jsonable(value))


# ---- contract ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_defense_contract(name):
    model, context, batches = _setup()
    defense = build_defense(name, model, context, TINY.get(name, {}))
    config_class, defense_class = DEFENSES[name]
    assert type(defense) is defense_class and defense.name == name and isinstance(defense.config, config_class)

    begin_report = defense.begin_round(0, batches)
    assert isinstance(begin_report, dict)
    _json(begin_report)
    trainable = _prepare_like_the_recipe(model, defense)
    assert trainable

    losses, step_report = defense.forward(model, batches[0])
    assert isinstance(step_report, dict) and "loss" in losses
    for term, value in losses.items():
        assert isinstance(term, str) and isinstance(value, torch.Tensor) and value.dim() == 0, term
        assert torch.isfinite(value), term
    losses["loss"].backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in trainable)

    stop, end_report = defense.end_round(0, batches)
    assert isinstance(stop, bool) and isinstance(end_report, dict)
    _json(end_report)
    summary = _json(defense.summary())

    trigger = defense.trigger_for_report()
    if trigger is not None:
        assert isinstance(trigger, Trigger)
        with torch.no_grad():
            triggered = trigger.apply(batches[0][0])
        assert triggered.shape == batches[0][0].shape and 0 <= float(triggered.min()) <= float(triggered.max()) <= 1

    # the checkpointed state holds only plain values (JSON + safetensors, no pickle) and restores the summary
    state = _state_round_trip(defense.state_dict())
    fresh_model, fresh_context, _ = _setup()
    restored = build_defense(name, fresh_model, fresh_context, TINY.get(name, {}))
    restored.load_state_dict(state)
    assert _json(restored.summary()) == summary


@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_config_validation_and_unknown_overrides(name, planted_setup):
    config_class, _ = DEFENSES[name]
    assert issubclass(config_class, DefenseConfig)
    config_class()  # the defaults are valid
    with pytest.raises(ValueError):
        config_class(lr=-1.0)
    for field, value in BAD_VALUES.get(name, {}).items():
        with pytest.raises(ValueError):
            config_class(**{field: value})
    model, context, _ = planted_setup
    with pytest.raises(ValueError, match="no option"):
        build_defense(name, model, context, {"not_an_option": 1})


@pytest.fixture(scope="module")
def planted_setup():
    return _setup()


# ---- per-method behaviour --------------------------------------------------------------------------------


def test_ibau_perturbation_stays_within_eps_and_raises_the_clean_loss():
    model, context, batches = _setup()
    eps = 8 / 255
    defense = build_defense("ibau", model, context, {"eps": eps, "inner_steps": 8})
    images, tokens = batches[0]

    def perturbed_loss() -> float:
        with torch.no_grad():
            return float(defense.clip_loss(*model(defense.trigger.apply(images), tokens)))

    with torch.no_grad():
        clean_loss = float(defense.clip_loss(*model(images, tokens)))
    start_loss = perturbed_loss()
    report = defense.begin_round(0, [batches[0]])
    assert defense.perturbation_linf() <= eps + 1e-7
    assert report["inner"]["perturbed_loss_last"] > report["inner"]["perturbed_loss_first"]
    assert perturbed_loss() > start_loss and perturbed_loss() > clean_loss
    assert all(p.grad is None for p in model.parameters())  # the inner problem leaves the model's gradients alone


def test_age_zeroes_the_chosen_units_and_repair_keeps_them_zero():
    model, context, batches = _setup()
    defense = build_defense("age", model, context, TINY["age"])
    defense.begin_round(0, batches)
    hidden = model.model.visual.transformer.resblocks[-1].mlp.c_fc.out_features
    assert sorted(defense.edited_units) == defense.block_indices == [0, 1]
    assert all(len(units) == math.ceil(0.02 * hidden) for units in defense.edited_units.values())

    def assert_zero():
        for index, units in defense.edited_units.items():
            mlp = model.model.visual.transformer.resblocks[index].mlp
            assert mlp.c_fc.weight[units].abs().sum() == 0 and mlp.c_fc.bias[units].abs().sum() == 0
            assert mlp.c_proj.weight[:, units].abs().sum() == 0
        activations = defense.hidden_activations(batches[0][0])
        for index, units in defense.edited_units.items():
            assert activations[index][:, units].abs().max() == 0

    assert_zero()
    trainable = _prepare_like_the_recipe(model, defense)
    optimizer = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.1)
    for images, tokens in batches:
        defense.forward(model, (images, tokens))[0]["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
    assert_zero()
    # the scores rank the edited units first
    scores = defense.unit_scores(torch.zeros(4, 5), torch.tensor([[0.0, 3, 0, 1, 0]]).expand(4, 5) + torch.rand(4, 5))
    assert scores.argmax() == 1


def test_cleanclip_token_augmentation_keeps_sot_and_eot():
    model = load_clip("clipclean-tiny")
    tokens = model.tokenize(["a photo of a small red dog on the grass .", "a cat", ""])
    generator = torch.Generator().manual_seed(0)
    augmented = augment_tokens(tokens, generator, dropout=0.5, swap=1.0)
    sot, eot = tokens[0, 0], tokens[0].max()
    assert augmented.shape == tokens.shape and (augmented[:, 0] == sot).all()
    for original, new in zip(tokens, augmented):
        end = int(new.argmax())
        assert new[end] == eot and (new == eot).sum() == 1 and (new[end + 1 :] == 0).all()
        kept = new[1:end].tolist()
        content = original[1 : int(original.argmax())].tolist()
        assert 1 <= len(kept) <= len(content) or not content
        assert all(kept.count(token) <= content.count(token) for token in kept)
    assert augmented[0].ne(0).sum() < tokens[0].ne(0).sum()  # something was dropped from the long caption
    assert augmented[2].tolist() == tokens[2].tolist()  # an empty caption stays [SOT, EOT]

    images = torch.rand(8, 3, 32, 32)
    views = augment_images(images, generator)
    assert views.shape == images.shape and 0 <= float(views.min()) <= float(views.max()) <= 1
    assert not torch.allclose(views, images)


def test_baerase_generator_respects_the_budget_and_learns_the_known_target():
    model, context, batches = _setup(target_caption=f"a photo of a {TARGET}.")
    defense = build_defense("baerase", model, context, {"generator_steps": 30, "generator_lr": 1e-2})
    report = defense.begin_round(0, batches)
    assert report["target_source"] == "target_caption" and defense.summary()["inversion"] is None
    assert float(defense.direction @ model.planted) > 0.99  # targeted mode: u is the target caption's embedding
    generator = report["generator"]
    assert generator["target_probability_last"] > generator["target_probability_first"]

    with torch.no_grad():
        masks, patterns = defense.generator(torch.randn(16, defense.config.noise_dim))
    assert masks.shape == (16, 1, 32, 32) and patterns.shape == (16, 3, 32, 32)
    assert float(masks.mean(dim=(1, 2, 3)).max()) <= defense.config.mask_budget + 1e-6
    assert 0 <= float(patterns.min()) and float(patterns.max()) <= 1
    assert float(mode_seeking_diversity(masks, patterns, torch.randn(16, 32))) >= 0
    # the forgetting term is bounded below: -log(1 - p) >= 0 and it is 0 when the target is never matched
    features = torch.nn.functional.normalize(torch.randn(4, 64), dim=-1)
    probability = target_probability(features, features, -features[0], torch.tensor(100.0))
    assert float(probability.max()) < 1e-3


def _restored_bibau(defense, config: dict):
    """A fresh BI-BAU on a fresh planted model, restored from ``defense``'s state through a saved checkpoint."""
    state = _state_round_trip(defense.state_dict())
    fresh_model, fresh_context, _ = _setup()
    restored = build_defense("bibau", fresh_model, fresh_context, config)
    restored.load_state_dict(state)
    return restored


def _state_round_trip(state: dict) -> dict:
    """``state`` written and read back the way a checkpoint holds it (:func:`clipclean.fileio.save_state_tree`)."""
    with tempfile.TemporaryDirectory() as folder:
        save_state_tree(folder, "state", state)
        return load_state_tree(folder, "state")


def test_bibau_unit_reset_reinitialises_the_top_units_and_resumes_with_its_report():
    model, context, batches = _setup()
    config = {**TINY["bibau"], "reset_fraction": 0.05, "reset_samples": 32}
    defense = build_defense("bibau", model, context, config)
    begin = defense.begin_round(0, batches)
    blocks = model.model.visual.transformer.resblocks
    hidden = blocks[0].mlp.c_fc.out_features
    assert begin["unit_reset"] == {str(index): math.ceil(0.05 * hidden) for index in range(len(blocks))}
    reference_blocks = context.reference.model.visual.transformer.resblocks
    for index, block in enumerate(blocks):
        item = defense.reset_report[str(index)]
        units, others = item["units"], sorted(set(range(hidden)) - set(item["units"]))
        assert item["mean_score_reset"] >= item["mean_score_all"]
        assert block.mlp.c_proj.weight[:, units].abs().max() == 0  # fresh units: no output yet
        assert torch.equal(block.mlp.c_fc.weight[others], reference_blocks[index].mlp.c_fc.weight[others])
        assert not torch.equal(block.mlp.c_fc.weight[units], reference_blocks[index].mlp.c_fc.weight[units])
    trainable = _prepare_like_the_recipe(model, defense)
    losses, _ = defense.forward(model, batches[0])
    losses["loss"].backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in trainable)
    assert defense.summary()["unit_reset"] == defense.reset_report
    restored = _restored_bibau(defense, config)
    assert restored.reset_report == defense.reset_report
    for bad in ({"reset_fraction": 1.0}, {"reset_samples": 1}):
        with pytest.raises(ValueError):
            build_defense("bibau", model, context, {**config, **bad})


def test_bibau_resolves_its_persistence_defaults_per_kind_of_model():
    """A CLIP gets the unit reset and every EM round (measured on CLIPs); an image classifier keeps the measured CNN
    behaviour (no reset, early stop); explicit values win and are what the config records."""
    model, context, _ = _setup()
    config = build_defense("bibau", model, context, TINY["bibau"]).config
    assert (config.reset_fraction, config.stop_early, config.gamma) == (0.25, False, 20.0)
    classifier = create_classifier("small-cnn", [str(k) for k in range(10)], image_size=32)
    classifier_context = DefenseContext(reference=classifier.fresh_copy().requires_grad_(False))
    config = build_defense("bibau", classifier, classifier_context, TINY["bibau"]).config
    assert (config.reset_fraction, config.stop_early, config.gamma) == (0.0, True, 5.0)
    explicit = {**TINY["bibau"], "reset_fraction": 0.0, "stop_early": True}
    config = build_defense("bibau", model, context, explicit).config
    assert (config.reset_fraction, config.stop_early) == (0.0, True)


def test_trigger_generator_starts_small_and_within_budget():
    generator = TriggerGenerator((32, 32), mask_budget=0.05, init_mask=0.01)
    with torch.no_grad():
        masks, _ = generator(torch.randn(8, 32))
    assert float(masks.mean(dim=(1, 2, 3)).max()) < 0.03  # near init_mask, well inside the budget


# ---- the recipe, in process ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recipe():
    return clean_clip


@pytest.fixture(scope="module")
def saved_tiny_model(tmp_path_factory):
    from clipclean.hub import save_pretrained

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny") / "model"
    save_pretrained(load_clip("clipclean-tiny"), directory)
    return directory


@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_recipe_runs_every_defense(name, recipe, saved_tiny_model, tmp_path):
    output = tmp_path / name
    options = [item for option in RECIPE_OPTIONS.get(name, []) for item in ("--set", option)]
    argv = [
        "--model",
        str(saved_tiny_model),
        "--clean-data",
        "digits:defender",
        "--eval-data",
        "digits:test",
        "--defense",
        name,
        "--rounds",
        "1",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--max-clean-pairs",
        "64",
        "--no-progress",
        "--output_dir",
        str(output),
        *options,
    ]
    results = recipe.main(argv)
    assert RESULT_KEYS <= set(results)
    written = json.loads((output / "results.json").read_text())
    assert RESULT_KEYS <= set(written) and written["defense"] == name
    assert written["config"]["defense"]["rounds"] == 1 and written["config"]["defense"]["epochs"] == 1
    assert 0 <= written["after"]["clean_accuracy"] <= 1 and written["wall_time_s"] > 0
    assert (output / "cleaned" / "open_clip_config.json").is_file()
    trigger_file = output / "inversion" / "trigger.json"
    if name in ("age", "baerase", "bibau", "ibau"):
        assert trigger_file.is_file()
    if trigger_file.is_file():
        assert isinstance(load_trigger(trigger_file), Trigger)
