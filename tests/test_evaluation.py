"""The zero-shot evaluation protocol: classifier construction, CA, ASR, target resolution, templates."""

import hashlib
import json

import open_clip
import pytest
import torch
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES
from torch.utils.data import DataLoader, Subset, TensorDataset

from clipclean.data import DIGIT_CLASSNAMES, load_classification_dataset
from clipclean.evaluation import (
    PROTOCOL,
    evaluate_zeroshot,
    fill_template,
    imagenet_classnames,
    load_templates,
    openai_imagenet_templates,
    resolve_target,
    zeroshot_classifier,
    zeroshot_metrics,
    zeroshot_predictions,
)
from clipclean.triggers import IdentityTrigger, PatchBlendTrigger

TEMPLATES = ["a photo of the number {c}.", "a handwritten {c}.", "{c}"]


@pytest.fixture(scope="module")
def digits():
    """80 real scikit-learn digits (test split), 32x32, [0, 1] pixels, labels 0..9."""
    dataset = load_classification_dataset("digits", image_size=32, split="test")
    subset = Subset(dataset, list(range(80)))
    subset.classnames = dataset.classnames
    subset.labels = [dataset.labels[i] for i in subset.indices]
    return subset


def _clean_predictions(model, data, classifier):
    loader = DataLoader(data, batch_size=32, shuffle=False)
    return zeroshot_predictions(model, loader, classifier)


def test_openai_templates_and_classnames_are_shipped():
    templates = openai_imagenet_templates()
    assert len(templates) == 80 and all("{c}" in template for template in templates)
    assert fill_template("a photo of a {c}.", "dog") == "a photo of a dog."
    assert fill_template("a {} photo", "dog") == "a dog photo"


def test_templates_and_classnames_are_open_clips_and_unchanged():
    templates = openai_imagenet_templates()
    assert templates == [template("{c}") for template in OPENAI_IMAGENET_TEMPLATES]
    # the 80 templates clipclean shipped as openai_imagenet_templates.json before it took them from open_clip
    fingerprint = hashlib.sha256("\n".join(templates).encode()).hexdigest()
    assert fingerprint == "c078f4d4ced9e360a3050ace0c5abd7bed09693bceb3ed0c7a39aba61a668c5c"
    names = imagenet_classnames()
    assert names == list(IMAGENET_CLASSNAMES) and len(names) == 1000
    assert (names[0], names[1], names[-1]) == ("tench", "goldfish", "toilet paper")


def _previous_zeroshot_classifier(model, classnames, templates, batch_size=256):
    """clipclean's own implementation before it called open_clip.build_zero_shot_classifier."""
    prompts = [fill_template(template, name) for name in classnames for template in templates]
    embeddings = []
    for start in range(0, len(prompts), batch_size):
        embeddings.append(model.encode_text(prompts[start : start + batch_size]).float())
    per_template = torch.cat(embeddings).view(len(classnames), len(templates), -1)
    return torch.nn.functional.normalize(per_template.mean(dim=1), dim=-1)


@pytest.mark.parametrize("batch_size", [1, 7, 256])
def test_zeroshot_classifier_gives_what_it_gave_before_open_clip_built_it(tiny_clip, batch_size):
    templates = [*openai_imagenet_templates()[:5], "a {} photo."]  # both placeholders
    with torch.no_grad():
        previous = _previous_zeroshot_classifier(tiny_clip, DIGIT_CLASSNAMES, templates, batch_size)
    ours = zeroshot_classifier(tiny_clip, DIGIT_CLASSNAMES, templates, batch_size=batch_size)
    assert ours.shape == previous.shape == (10, tiny_clip.embed_dim) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, previous, rtol=0, atol=1e-6)


def test_classifier_rows_are_unit_norm_and_match_open_clip(tiny_clip):
    templates = openai_imagenet_templates()
    ours = zeroshot_classifier(tiny_clip, DIGIT_CLASSNAMES, templates, batch_size=100)
    assert ours.shape == (len(DIGIT_CLASSNAMES), tiny_clip.embed_dim)
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(len(DIGIT_CLASSNAMES)), rtol=0, atol=1e-5)
    as_callables = [lambda c, t=t: fill_template(t, c) for t in templates]
    as_format_strings = [t.replace("{c}", "{}") for t in templates]
    for open_clip_templates in (as_callables, as_format_strings):
        reference = open_clip.build_zero_shot_classifier(
            tiny_clip.model,
            tokenizer=tiny_clip.tokenizer,
            classnames=DIGIT_CLASSNAMES,
            templates=open_clip_templates,
            num_classes_per_batch=3,
            device="cpu",
        )
        assert reference.shape == (tiny_clip.embed_dim, len(DIGIT_CLASSNAMES))  # open_clip stores (d, C)
        torch.testing.assert_close(ours, reference.T, rtol=0, atol=1e-5)


def test_top1_matches_open_clip_pipeline(tiny_clip, digits):
    classifier = zeroshot_classifier(tiny_clip, digits.classnames, TEMPLATES)
    predictions = _clean_predictions(tiny_clip, digits, classifier)

    # the open_clip side: its own classifier, its own normalisation, its own encoder call
    reference_classifier = open_clip.build_zero_shot_classifier(
        tiny_clip.model, tiny_clip.tokenizer, digits.classnames, [t.replace("{c}", "{}") for t in TEMPLATES]
    )
    images = torch.stack([digits[i][0] for i in range(len(digits))])
    labels = torch.tensor(digits.labels)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        features = tiny_clip.model.encode_image((images - mean) / std, normalize=True)
    reference_top1 = (features @ reference_classifier).argmax(dim=-1)

    assert torch.equal(predictions["labels"], labels)
    assert torch.equal(predictions["topk"][:, 0], reference_top1)
    assert len(set(reference_top1.tolist())) > 1  # a random model still spreads its predictions
    metrics = evaluate_zeroshot(tiny_clip, digits, digits.classnames, TEMPLATES, batch_size=32)
    assert metrics["top1"] == pytest.approx(float((reference_top1 == labels).float().mean()))
    assert metrics["n_images"] == len(digits) and metrics["protocol"] == PROTOCOL
    assert metrics["asr_top1"] is None and metrics["asr_top10"] is None and metrics["n_asr_images"] == 0


def test_top5_is_at_least_top1_and_topk_shapes(tiny_clip, digits):
    classifier = zeroshot_classifier(tiny_clip, digits.classnames, TEMPLATES)
    trigger = PatchBlendTrigger.patch(32, 4, "bottom-right")
    predictions = zeroshot_predictions(tiny_clip, DataLoader(digits, batch_size=16), classifier, trigger=trigger)
    assert predictions["topk"].shape == (len(digits), 10) and predictions["trigger_topk"].shape == (len(digits), 10)
    metrics = zeroshot_metrics(predictions["labels"], predictions["topk"])
    assert 0 <= metrics["top1"] <= metrics["top5"] <= 1
    assert metrics["top5"] > metrics["top1"]  # 10 classes: top-5 covers strictly more on 80 images
    three = zeroshot_predictions(tiny_clip, DataLoader(digits, batch_size=16), classifier, k=3)
    assert three["topk"].shape == (len(digits), 3)


def test_metrics_asr_excludes_target_class_images():
    labels = torch.tensor([0, 0, 1, 2, 3])
    topk = torch.tensor([[0, 1], [1, 0], [1, 2], [3, 2], [3, 0]])
    # triggered top-1: image 0 (a target image) and images 2, 3 go to the target 0; image 4 has it second
    trigger_topk = torch.tensor([[0, 1], [1, 2], [0, 1], [0, 2], [3, 0]])
    metrics = zeroshot_metrics(labels, topk, trigger_topk, target=0)
    assert metrics["n_images"] == 5 and metrics["n_asr_images"] == 3
    assert metrics["top1"] == pytest.approx(3 / 5)  # images 0, 2 and 4
    assert metrics["top5"] == 1.0  # images 1 and 3 have their label second
    assert metrics["asr_top1"] == pytest.approx(2 / 3)  # images 2 and 3 of the non-target images 2, 3, 4
    assert metrics["asr_top10"] == pytest.approx(3 / 3)
    with pytest.raises(ValueError, match="undefined"):
        zeroshot_metrics(torch.tensor([1, 1]), topk[:2], trigger_topk[:2], target=1)


def test_metrics_counts_by_hand():
    labels = torch.tensor([2, 1, 0, 1])
    topk = torch.tensor([[2, 0, 1], [0, 1, 2], [1, 2, 0], [1, 0, 2]])
    metrics = zeroshot_metrics(labels, topk)
    assert metrics["top1"] == pytest.approx(2 / 4)  # images 0 and 3
    assert metrics["top5"] == 1.0  # only 3 classes
    assert metrics["asr_top1"] is None and metrics["n_asr_images"] == 0


def test_trigger_to_a_fixed_target_image_gives_full_asr(tiny_clip, digits):
    classifier = zeroshot_classifier(tiny_clip, digits.classnames, TEMPLATES)
    target_image, _ = digits[0]
    with torch.no_grad():
        target = int((tiny_clip.encode_image(target_image[None]) @ classifier.T).argmax())
    # alpha = 1 over the whole image: every triggered image *is* the target image
    trigger = PatchBlendTrigger.blend(32, alpha=1.0, pattern=target_image)
    metrics = evaluate_zeroshot(
        tiny_clip,
        digits,
        digits.classnames,
        TEMPLATES,
        trigger=trigger,
        target=digits.classnames[target],
        batch_size=32,
    )
    labels = torch.tensor(digits.labels)
    assert metrics["n_asr_images"] == int((labels != target).sum()) < len(digits)
    assert metrics["asr_top1"] == 1.0 and metrics["asr_top10"] == 1.0
    same = evaluate_zeroshot(
        tiny_clip, digits, digits.classnames, TEMPLATES, trigger=trigger, target=target, classifier=classifier
    )
    assert same["asr_top1"] == 1.0 and same["top1"] == metrics["top1"]


def test_identity_trigger_asr_is_the_clean_target_rate(tiny_clip, digits):
    classifier = zeroshot_classifier(tiny_clip, digits.classnames, TEMPLATES)
    predictions = _clean_predictions(tiny_clip, digits, classifier)
    labels, top1 = predictions["labels"], predictions["topk"][:, 0]
    target = int(torch.mode(top1).values)  # the most predicted class, so the rate is not trivially 0
    keep = labels != target
    clean_rate = float((top1[keep] == target).float().mean())
    top10_rate = float((predictions["topk"][keep] == target).any(dim=1).float().mean())
    metrics = evaluate_zeroshot(
        tiny_clip, digits, digits.classnames, trigger=IdentityTrigger(32), target=target, classifier=classifier
    )
    assert clean_rate > 0
    assert metrics["asr_top1"] == pytest.approx(clean_rate)
    assert metrics["asr_top10"] == pytest.approx(top10_rate)
    assert metrics["n_asr_images"] == int(keep.sum())


def test_random_location_asr_is_reproducible_with_the_seed(tiny_clip, digits):
    classifier = zeroshot_classifier(tiny_clip, digits.classnames, TEMPLATES)
    trigger = PatchBlendTrigger.patch(32, 8, "random")
    loader = DataLoader(digits, batch_size=16)
    first = zeroshot_predictions(tiny_clip, loader, classifier, trigger=trigger, seed=3)
    again = zeroshot_predictions(tiny_clip, loader, classifier, trigger=trigger, seed=3)
    assert torch.equal(first["trigger_topk"], again["trigger_topk"])


def test_gather_hook_sees_every_batch(tiny_clip):
    images = torch.rand(10, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    data = TensorDataset(images, torch.arange(10) % 3)
    classifier = zeroshot_classifier(tiny_clip, ["red", "green", "blue"], TEMPLATES)
    calls = []

    def gather(tensor):
        calls.append(tuple(tensor.shape))
        return tensor

    predictions = zeroshot_predictions(
        tiny_clip, DataLoader(data, batch_size=4), classifier, trigger=IdentityTrigger(32), gather=gather
    )
    assert calls == [(4,), (4, 3), (4, 3)] * 2 + [(2,), (2, 3), (2, 3)]  # labels, topk, trigger_topk per batch
    assert predictions["labels"].tolist() == (torch.arange(10) % 3).tolist()


def test_evaluate_needs_trigger_and_target_together(tiny_clip, digits):
    with pytest.raises(ValueError, match="both"):
        evaluate_zeroshot(tiny_clip, digits, digits.classnames, TEMPLATES, trigger=IdentityTrigger(32))
    with pytest.raises(ValueError, match="both"):
        evaluate_zeroshot(tiny_clip, digits, digits.classnames, TEMPLATES, target="zero")
    with pytest.raises(ValueError, match="at least one class"):
        zeroshot_classifier(tiny_clip, [], TEMPLATES)
    with pytest.raises(ValueError, match="at least one template"):
        zeroshot_classifier(tiny_clip, ["a"], [])


def test_resolve_target():
    names = ["tench", "Goldfish", "great white shark"]
    assert resolve_target("tench", names) == 0
    assert resolve_target("goldfish", names) == 1  # case-insensitive
    assert resolve_target("GREAT WHITE SHARK", names) == 2
    assert resolve_target(2, names) == 2
    assert resolve_target("1", names) == 1  # an index given on the command line
    assert resolve_target("3", ["1", "2", "3"]) == 2  # ... unless it is a class name
    with pytest.raises(ValueError, match="out of range"):
        resolve_target(3, names)
    with pytest.raises(ValueError, match="out of range"):
        resolve_target("7", names)
    with pytest.raises(ValueError, match="not a class name"):
        resolve_target("banana", names)


def test_load_templates_from_json_and_text(tmp_path):
    assert load_templates() == openai_imagenet_templates()
    json_file = tmp_path / "templates.json"
    json_file.write_text(json.dumps(["a photo of a {c}.", "a {} in the wild."]), encoding="utf-8")
    assert load_templates(json_file) == ["a photo of a {c}.", "a {} in the wild."]
    text_file = tmp_path / "templates.txt"
    text_file.write_text("a photo of a {c}.\n\n   \n  itap of a {c}.  \n", encoding="utf-8")
    assert load_templates(str(text_file)) == ["a photo of a {c}.", "itap of a {c}."]


@pytest.mark.parametrize(
    ("name", "content", "error", "match"),
    [
        ("empty.txt", "\n\n", ValueError, "no templates"),
        ("empty.json", "[]", ValueError, "no templates"),
        ("noplaceholder.txt", "a photo of a {c}.\na photo.\n", ValueError, "placeholder"),
        ("object.json", '{"templates": ["a {c}"]}', ValueError, "JSON list"),
        ("numbers.json", "[1, 2]", ValueError, "JSON list"),
        ("broken.json", '["a {c}"', ValueError, "JSON"),
    ],
)
def test_load_templates_rejects_bad_files(tmp_path, name, content, error, match):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(error, match=match):
        load_templates(path)


def test_load_templates_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_templates(tmp_path / "missing.txt")
