"""Image classifiers as the degenerate case: adapter, files, E-step over classes, loss terms, defenses, poisoning.

Mirrors the CLIP tests (``test_inversion.py``, ``test_defenses.py``, ``test_poisoning.py``) on a classifier with a
*planted* backdoor: a white bottom-right square sends every image to class ``TARGET``.
"""

import io
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clipclean.classifiers import (
    ClassifierInversion,
    ImageClassifier,
    SmallCNN,
    ZeroShotHead,
    build_network,
    create_classifier,
    load_classifier,
    read_classifier_config,
    save_classifier,
)
from clipclean.data import DIGIT_CLASSNAMES, load_classification_dataset
from clipclean.defenses import DEFENSES, DefenseContext, build_defense
from clipclean.defenses.objectives import ClassificationObjective
from clipclean.evaluation import evaluate_zeroshot
from clipclean.inversion import BlindInversion, InversionConfig, build_inverter, cycle
from clipclean.models import unwrap
from clipclean.poisoning import PoisonManifest, poison_classification_dataset
from clipclean.triggers import PatchBlendTrigger, Trigger

CLASSES = ["apple", "banana", "car", "dog", "house", "tree"]
TARGET = "banana"
PATCH = 4


class PlantedBackdoorNet(nn.Module):
    """Logits from a fixed random projection of each image's mean colour, plus a large logit on the target when
    the bottom-right square is bright (differentiable, so inversion can find it)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.projection = nn.Linear(3, len(CLASSES))
        with torch.no_grad():
            self.projection.weight.copy_(torch.randn(len(CLASSES), 3, generator=generator))
            self.projection.bias.zero_()
        self.register_buffer("target", F.one_hot(torch.tensor(CLASSES.index(TARGET)), len(CLASSES)).float())

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # images normalised with mean 0.5, std 0.5
        pixels = images * 0.5 + 0.5
        logits = 10 * self.projection(pixels.mean(dim=(2, 3)) - 0.15)
        gate = torch.sigmoid(20 * (pixels[:, :, -PATCH:, -PATCH:].mean(dim=(1, 2, 3)) - 0.4))
        return logits + 20 * gate[:, None] * self.target


def planted_classifier() -> ImageClassifier:
    return ImageClassifier(PlantedBackdoorNet(), CLASSES, image_size=32)


def true_trigger() -> PatchBlendTrigger:
    return PatchBlendTrigger.patch(32, PATCH, "bottom-right", "white")


def clean_images(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Dark tinted images (the planted detector is off) labelled with the clean model's own predictions."""
    generator = torch.Generator().manual_seed(seed)
    tint = torch.rand(n, 3, 1, 1, generator=generator) * 0.3
    images = (tint + 0.05 * torch.rand(n, 3, 32, 32, generator=generator)).clamp(0, 1)
    with torch.no_grad():
        labels = planted_classifier().logits(images).argmax(-1)
    return images, labels


# ---- the adapter -------------------------------------------------------------------------------------------
def test_adapter_is_the_degenerate_clip():
    model = create_classifier("small-cnn", DIGIT_CLASSNAMES, image_size=32, width=8)
    images = torch.rand(5, 3, 32, 32)
    log_probabilities = model.encode_image(images)
    assert log_probabilities.shape == (5, 10) and model.embed_dim == 10
    assert torch.allclose(log_probabilities.exp().sum(-1), torch.ones(5), atol=1e-5)
    assert torch.allclose(log_probabilities, F.log_softmax(model(images), -1), atol=1e-6)
    # the "text side": one-hot class embeddings, from names, indices or a label tensor
    assert torch.equal(model.encode_text(["two", "zero"]), F.one_hot(torch.tensor([2, 0]), 10).float())
    assert torch.equal(model.encode_text(torch.tensor([3])), model.class_embeddings[3:4])
    assert torch.equal(model.class_embeddings, torch.eye(10))
    # encode_image @ e_k = log p(k | x): zero-shot evaluation is plain accuracy
    assert torch.allclose(log_probabilities @ model.class_embeddings.T, log_probabilities)
    # pixels are normalised inside, and other sizes resized
    assert torch.allclose(model.logits(images), model.network((images - 0.5) / 0.5), atol=1e-6)
    assert model.logits(torch.rand(2, 3, 16, 16)).shape == (2, 10)
    with pytest.raises(ValueError):
        model.class_index("eleven")

    class Wrapper(nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

    assert unwrap(Wrapper(model), ImageClassifier) is model
    with pytest.raises(ValueError):
        ImageClassifier(SmallCNN(2), ["only"], 32)


def test_any_logits_module_and_a_zero_shot_clip_fit_the_adapter(tiny_clip):
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    model = ImageClassifier(mlp, ["a", "b", "c"], image_size=8, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    images = torch.rand(4, 3, 8, 8)
    assert torch.allclose(model(images), mlp(images))

    names, templates = ["zero", "one", "two"], ["a photo of the number {}."]
    zero_shot = ImageClassifier.from_clip(tiny_clip, names, templates)
    assert isinstance(zero_shot.network, ZeroShotHead) and zero_shot.network.visual is tiny_clip.model.visual
    with torch.no_grad():
        images = torch.rand(4, 3, 32, 32)
        embeddings = tiny_clip.encode_text([template.format(n) for n in names for template in templates])
        expected = tiny_clip.logit_scale * tiny_clip.encode_image(images) @ F.normalize(embeddings, dim=-1).T
        assert torch.allclose(zero_shot(images), expected, atol=1e-4)
    # the classifier's image parameters are the CLIP's image tower: cleaning one cleans the other
    objective = ClassificationObjective(DefenseContext())
    assert {id(p) for p in objective.image_parameters(zero_shot)} == {
        id(p) for p in tiny_clip.model.visual.parameters()
    }


def make_mlp(num_classes: int, hidden: int = 4) -> nn.Module:
    """A user architecture, referred to as ``test_classifier:make_mlp``."""
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def test_save_and_load_round_trip_builtin_and_user_architectures(tmp_path):
    torch.manual_seed(0)
    for architecture, kwargs, size in (
        ("small-cnn", {"width": 4}, 32),
        ("test_classifier:make_mlp", {"hidden": 5}, 8),
    ):
        model = create_classifier(architecture, CLASSES, image_size=size, trust_code=True, **kwargs)
        folder = save_classifier(model, tmp_path / architecture.replace(":", "_"), metadata={"note": "x"})
        assert {p.name for p in folder.iterdir()} == {"clipclean_classifier.json", "model.safetensors"}
        config = read_classifier_config(folder)
        assert config["architecture"] == architecture and config["architecture_kwargs"] == kwargs
        assert config["classnames"] == CLASSES and config["metadata"] == {"note": "x"}
        loaded = load_classifier(folder, trust_code=True)
        images = torch.rand(3, 3, size, size)
        assert torch.equal(loaded(images), model.eval()(images)) and not loaded.training
    with pytest.raises(ValueError, match="unknown architecture"):
        build_network("no-such-net", 3)
    with pytest.raises(ValueError, match="no architecture name"):
        save_classifier(ImageClassifier(SmallCNN(2), ["a", "b"], 32), tmp_path / "anonymous")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "clipclean_classifier.json").write_text(json.dumps({"format": "pickle"}))
    with pytest.raises(ValueError, match="not a clipclean classifier"):
        load_classifier(tmp_path / "bad")


def test_evaluation_is_the_shared_zero_shot_protocol():
    model = planted_classifier()
    images, labels = clean_images(32)
    dataset = torch.utils.data.TensorDataset(images, labels)
    metrics = evaluate_zeroshot(
        model, dataset, CLASSES, classifier=model.class_embeddings, trigger=true_trigger(), target=TARGET
    )
    assert metrics["top1"] == 1.0  # the labels are the model's own predictions
    assert metrics["asr_top1"] == 1.0 and metrics["n_asr_images"] == int((labels != 1).sum())


# ---- the E-step over classes and the M-step -------------------------------------------------------------------
def test_build_inverter_picks_the_classifier_variant():
    inverter = build_inverter(planted_classifier(), InversionConfig(patch_hypotheses=1))
    assert type(inverter) is ClassifierInversion
    assert inverter.candidate_names == CLASSES and torch.equal(inverter.candidate_embeddings, torch.eye(6))


def test_e_step_posterior_over_classes_recovers_the_planted_target():
    images, labels = clean_images(64)
    inverter = ClassifierInversion(planted_classifier(), InversionConfig(patch_hypotheses=1), class_hypotheses=False)
    inverter.population = [true_trigger()]
    stats = inverter.e_step([(images[:32], labels[:32]), (images[32:], labels[32:])])
    posterior = stats.directions[0]
    assert stats.n_images == 64 and posterior.shape == (6,)
    assert float(posterior.sum()) == pytest.approx(1.0, abs=1e-5)
    assert int(posterior.argmax()) == CLASSES.index(TARGET) and float(posterior.max()) > 0.99
    not_target = labels != CLASSES.index(TARGET)
    assert float(stats.hijacked_fractions[0]) == pytest.approx(float(not_target.float().mean()))
    assert float(stats.backdoor_scores[0]) > 5  # log-odds of the target over the own class
    assert inverter.name_candidates(posterior, top=1)[0][0] == TARGET
    # no trigger effect: the posterior does not single out the target
    inverter.population = [PatchBlendTrigger.blend(32, alpha=0.01, pattern="black")]
    stats = inverter.e_step([(images, labels)])
    assert float(stats.directions[0][CLASSES.index(TARGET)]) < 0.5 and float(stats.backdoor_scores[0]) < 0


def test_m_step_raises_the_expected_log_probability_and_keeps_the_budget():
    images, labels = clean_images(64)
    config = InversionConfig(patch_hypotheses=2, steps_per_round=30, mask_budgets=(0.02,), online_direction=False)
    inverter = ClassifierInversion(planted_classifier(), config, class_hypotheses=False)
    batches = [(images, labels)]
    inverter.e_step(batches)
    own = inverter._text_features(labels)
    before = inverter.population_objective(inverter.population, images, own, inverter.directions).detach()
    inverter.m_step(cycle(batches))
    after = inverter.population_objective(inverter.population, images, own, inverter.directions).detach()
    assert (after > before).all(), (before, after)
    assert all(trigger.coverage() <= 0.02 + 1e-6 for trigger in inverter.population)


def test_an_image_classifier_has_its_own_verdict_threshold_and_the_config_still_wins():
    model = planted_classifier()
    default = ClassifierInversion(model, InversionConfig())
    assert default.verdict_statistic == "winner-lift" and default.verdict_threshold == 3.22  # the CNN zoo's choice
    assert ClassifierInversion(model, InversionConfig(anomaly_threshold=3)).verdict_threshold == 3.0
    other = ClassifierInversion(model, InversionConfig(verdict_statistic="winner-logit"))
    assert other.verdict_threshold == InversionConfig().threshold_for("winner-logit")  # not the lift's CNN threshold
    assert BlindInversion.default_verdict_threshold is None  # a CLIP keeps the statistic's own (1.29)


def test_untargeted_inversion_and_verdict_on_the_planted_classifier():
    images, labels = clean_images(64)
    config = InversionConfig(
        rounds=3, steps_per_round=40, mask_budgets=(0.004, 0.016, 0.03), verdict_steps=30, batch_size=32
    )
    result = ClassifierInversion(planted_classifier(), config).fit(images, labels.tolist())
    assert result.recovered_target == TARGET and result.verdict == "backdoored"
    assert result.candidate_asr[TARGET] == max(result.candidate_asr.values())
    assert result.anomaly_index > result.verdict_threshold
    # targeted mode fixes the posterior on the known class
    targeted = ClassifierInversion(planted_classifier(), InversionConfig(patch_hypotheses=1), target_caption=TARGET)
    stats = targeted.e_step([(images, labels)])
    assert torch.equal(stats.directions[0], F.one_hot(torch.tensor(1), 6).float())


# ---- the unlearning loss and the defenses -----------------------------------------------------------------------
def _context(model: ImageClassifier) -> DefenseContext:
    return DefenseContext(
        candidate_names=model.classnames,
        candidate_embeddings=model.class_embeddings,
        reference=model.fresh_copy().requires_grad_(False),
    )


def test_classifier_unlearning_loss_terms_have_the_right_signs():
    model = planted_classifier()
    objective = ClassificationObjective(_context(model))
    images, labels = clean_images(16)
    triggered = true_trigger()(images)
    with torch.no_grad():
        (clean, hijacked), own, scale = objective.forward(model, torch.cat([images, triggered]), labels, parts=2)
    reference = objective.reference_outputs(images)
    assert float(objective.anchor(clean, reference)) == pytest.approx(0.0, abs=1e-6)  # KL(f_ref || f) at the start
    assert float(objective.anchor(hijacked, reference)) > 1.0  # the trigger moves the prediction away
    assert float(objective.task_loss(hijacked, own, scale)) > float(objective.task_loss(clean, own, scale)) + 5
    posterior = F.one_hot(torch.tensor(1), 6).float()
    push = float(objective.push_off(hijacked, own, posterior))
    # the target's probability on triggered non-target images (target-class images count 0)
    assert push == pytest.approx(float((own != 1).float().mean()), abs=0.02)
    assert 0 <= float(objective.push_off(clean, own, posterior)) < 0.1


# tiny overrides per defense (as in test_defenses.py)
TINY_INVERSION = {"rounds": 1, "steps_per_round": 2, "patch_hypotheses": 1, "verdict_steps": 1, "batch_size": 32}
TINY = {
    "age": {"n_samples": 16, "inversion": TINY_INVERSION},
    "baerase": {"generator_steps": 2, "inversion": TINY_INVERSION},
    "bibau": {"inversion": TINY_INVERSION, "reinversion_steps": 1, "verdict": False},
    "ibau": {"inner_steps": 2},
}
MULTIMODAL_ONLY = {"cleanclip"}


@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_defense_contract_on_a_classifier(name):
    torch.manual_seed(0)
    model = create_classifier("small-cnn", CLASSES, image_size=32, width=4)
    images, labels = clean_images(64)
    batches = [(images[:32], labels[:32]), (images[32:], labels[32:])]
    if name in MULTIMODAL_ONLY:
        with pytest.raises(TypeError, match="classifier"):
            build_defense(name, model, _context(model), TINY.get(name, {}))
        return
    defense = build_defense(name, model, _context(model), TINY.get(name, {}))
    defense.begin_round(0, batches)
    trainable = defense.trainable_parameters()
    assert {id(p) for p in trainable} <= {id(p) for p in model.network.parameters()} and trainable
    model.train()
    losses, _ = defense.forward(model, batches[0])
    assert all(torch.isfinite(value) and value.dim() == 0 for value in losses.values())
    assert all(float(value.detach()) >= 0 for value in losses.values())
    losses["loss"].backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in trainable)
    stop, report = defense.end_round(0, batches)
    json.dumps(report)
    trigger = defense.trigger_for_report()
    assert trigger is None or isinstance(trigger, Trigger)
    buffer = io.BytesIO()
    torch.save(defense.state_dict(), buffer)
    buffer.seek(0)
    fresh = create_classifier("small-cnn", CLASSES, image_size=32, width=4)
    restored = build_defense(name, fresh, _context(fresh), TINY.get(name, {}))
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert json.dumps(restored.summary(), default=str) == json.dumps(defense.summary(), default=str)


def test_bibau_unlearning_removes_the_planted_backdoor_signal():
    model = planted_classifier()
    images, labels = clean_images(64)
    batches = [(images[:32], labels[:32]), (images[32:], labels[32:])]
    inversion = {"rounds": 2, "steps_per_round": 30, "patch_hypotheses": 2, "batch_size": 32}
    defense = build_defense("bibau", model, _context(model), {"inversion": inversion, "verdict": False, "lr": 1e-2})
    report = defense.begin_round(0, batches)
    assert report["inversion"]["recovered_target"] == TARGET
    optimizer = torch.optim.Adam(defense.trainable_parameters(), lr=1e-2)
    target = CLASSES.index(TARGET)

    def triggered_target_probability() -> float:
        with torch.no_grad():
            return float(model.encode_image(true_trigger()(images)).exp()[:, target].mean())

    start = triggered_target_probability()
    for _ in range(15):
        for batch in batches:
            losses, _ = defense.forward(model, batch)
            optimizer.zero_grad()
            losses["loss"].backward()
            optimizer.step()
    assert set(losses) >= {"ce_clean", "ce_triggered", "anchor", "push_off", "loss"}
    assert start > 0.9 and triggered_target_probability() < start


# ---- poisoning labelled images ---------------------------------------------------------------------------------
def test_poisoning_relabels_to_the_target_and_leaves_the_rest_untouched(tmp_path):
    train = load_classification_dataset("digits:train", image_size=32)
    trigger = PatchBlendTrigger.patch(32, 4, "bottom-right", "noise")
    poisoned = poison_classification_dataset(train, trigger, "zero", n_poison=40, seed=3, attack="badnet")
    target = DIGIT_CLASSNAMES.index("zero")
    assert len(poisoned) == len(train) and poisoned.manifest.n_poison == 40 == len(set(poisoned.poison_indices))
    labels_before = list(train.labels)
    for index in range(len(train)):
        image, label = poisoned[index]
        clean_image, clean_label = train[index]
        if poisoned.is_poisoned(index):
            assert clean_label != target and label == target
            assert torch.equal(image, trigger.apply(clean_image[None])[0])
        elif index % 50 == 0:
            assert torch.equal(image, clean_image) and label == clean_label
    assert poisoned.labels == [poisoned[i][1] for i in range(len(poisoned))]
    assert sum(a != b for a, b in zip(poisoned.labels, labels_before)) == 40 and train.labels == labels_before
    again = poison_classification_dataset(train, trigger, "zero", n_poison=40, seed=3, attack="badnet")
    assert again.poison_indices == poisoned.poison_indices
    assert PoisonManifest.load(poisoned.manifest.save(tmp_path / "manifest.json")).indices == again.poison_indices
    assert poisoned.manifest.caption_policy == {"policy": "relabel", "target": "zero"}
    rate = poison_classification_dataset(train, trigger, "zero", rate=0.1, seed=0)
    assert rate.manifest.n_poison == int(0.1 * len(train))
    with pytest.raises(ValueError, match="not a class"):
        poison_classification_dataset(train, trigger, "banana", n_poison=1)
