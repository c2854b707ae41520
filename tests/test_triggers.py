"""Contract tests of every trigger family: shapes and ranges, mask semantics, budgets, files, gradients."""

import json

import pytest
import torch
from PIL import Image

from clipclean.triggers import (
    LOCATIONS,
    TRIGGER_FAMILIES,
    AdditiveTrigger,
    IdentityTrigger,
    PatchBlendTrigger,
    Trigger,
    WarpTrigger,
    draw_trigger,
    load_trigger,
    mask_iou,
    read_trigger_metadata,
    register_trigger_family,
    save_trigger,
)

SIZE = 32


@pytest.fixture
def pattern_png(tmp_path):
    """A 48x40 RGB gradient PNG (not the image size, so loading must resize it)."""
    xs = torch.linspace(0, 255, 48).round().byte()
    ys = torch.linspace(0, 255, 40).round().byte()
    array = torch.stack(
        [xs[None, :].expand(40, 48), ys[:, None].expand(40, 48), torch.full((40, 48), 128, dtype=torch.uint8)],
        dim=-1,
    )
    path = tmp_path / "pattern.png"
    Image.fromarray(array.numpy(), mode="RGB").save(path)
    return path


# one constructor per family and variant; contract tests are parametrised over this (and cover the registry)
FACTORIES = {
    **{f"patch-{location}": (lambda loc=location: PatchBlendTrigger.patch(SIZE, 5, loc)) for location in LOCATIONS},
    "patch-at-(3,7)-checkerboard": lambda: PatchBlendTrigger.patch(SIZE, 4, (3, 7), pattern="checkerboard"),
    "blend-noise": lambda: PatchBlendTrigger.blend(SIZE, alpha=0.2, pattern="noise", seed=1),
    "free-budget": lambda: PatchBlendTrigger.free(SIZE, mask_budget=0.05, init_mask=0.3, seed=2),
    "additive-random": lambda: AdditiveTrigger.random(SIZE, eps=8 / 255, seed=3),
    "additive-sinusoid": lambda: AdditiveTrigger.sinusoid(SIZE, eps=20 / 255, frequency=6),
    "warp-random": lambda: WarpTrigger.random(SIZE, grid_size=4, strength=0.5, seed=4),
    "identity": lambda: IdentityTrigger(SIZE),
}
LEARNABLE = [name for name in FACTORIES if name != "identity"]


def _images(n=6, seed=0):
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _apply(trigger, images, seed=0):
    return trigger.apply(images, generator=torch.Generator().manual_seed(seed))


def test_every_registered_family_is_covered():
    covered = {factory().family for factory in FACTORIES.values()}
    assert covered == set(TRIGGER_FAMILIES)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_output_shape_and_range(name):
    trigger = FACTORIES[name]()
    images = _images()
    images[0] = 0.0
    images[1] = 1.0
    with torch.no_grad():
        triggered = _apply(trigger, images)
    assert isinstance(trigger, Trigger)
    assert triggered.shape == images.shape
    assert triggered.dtype == images.dtype
    assert float(triggered.min()) >= 0.0 and float(triggered.max()) <= 1.0
    with torch.no_grad():
        assert torch.equal(trigger(images, generator=torch.Generator().manual_seed(0)), triggered)  # forward == apply


@pytest.mark.parametrize("name", [name for name in sorted(FACTORIES) if name != "identity"])
def test_non_identity_triggers_change_images(name):
    images = _images()
    assert not torch.allclose(_apply(FACTORIES[name](), images), images)


def test_identity_is_a_no_op():
    images = _images()
    assert torch.equal(_apply(IdentityTrigger(SIZE), images), images)


def test_wrong_image_size_is_refused():
    with pytest.raises(ValueError, match="resiz"):
        PatchBlendTrigger.patch(SIZE, 4).apply(torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        AdditiveTrigger.random(SIZE).apply(torch.rand(3, SIZE, SIZE))


@pytest.mark.parametrize("location", [loc for loc in LOCATIONS if loc != "random"] + [(3, 7)])
def test_fixed_patch_replaces_exactly_the_patch(location):
    size = 5
    trigger = PatchBlendTrigger.patch(SIZE, size, location, pattern="noise", seed=7)
    expected_top_left = {
        "top-left": (0, 0),
        "top-right": (0, SIZE - size),
        "bottom-left": (SIZE - size, 0),
        "bottom-right": (SIZE - size, SIZE - size),
        "center": ((SIZE - size) // 2, (SIZE - size) // 2),
        (3, 7): (3, 7),
    }[location]
    assert trigger.position == expected_top_left
    top, left = expected_top_left
    images = _images()
    triggered = _apply(trigger, images)
    inside = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    inside[top : top + size, left : left + size] = True
    assert torch.equal(triggered[:, :, ~inside], images[:, :, ~inside])
    pattern = trigger.patch_pattern.detach()
    for index in range(images.shape[0]):
        assert torch.equal(triggered[index, :, top : top + size, left : left + size], pattern)


def _patch_positions(triggered, images, pattern):
    """All (top, left) where ``triggered`` equals ``pattern`` inside the patch and ``images`` outside."""
    size = pattern.shape[-1]
    found = []
    for top in range(SIZE - size + 1):
        for left in range(SIZE - size + 1):
            inside = torch.zeros(SIZE, SIZE, dtype=torch.bool)
            inside[top : top + size, left : left + size] = True
            if torch.equal(triggered[:, inside], pattern.flatten(1)) and torch.equal(
                triggered[:, ~inside], images[:, ~inside]
            ):
                found.append((top, left))
    return found


def test_random_patch_places_one_patch_per_image_reproducibly():
    size = 4
    trigger = PatchBlendTrigger.patch(SIZE, size, "random", pattern="noise", seed=5)
    images = _images(n=8)
    triggered = _apply(trigger, images, seed=11)
    pattern = trigger.patch_pattern.detach()
    positions = [_patch_positions(triggered[i], images[i], pattern) for i in range(images.shape[0])]
    assert all(len(found) == 1 for found in positions)
    assert len({found[0] for found in positions}) > 1  # placements vary between images
    assert torch.equal(_apply(trigger, images, seed=11), triggered)  # same seed, same placements
    assert not torch.equal(_apply(trigger, images, seed=12), triggered)
    with pytest.raises(ValueError, match="random"):
        trigger.full_mask_and_pattern()


def test_blend_is_the_exact_convex_combination():
    alpha = 0.3
    trigger = PatchBlendTrigger.blend(SIZE, alpha=alpha, pattern="noise", seed=3)
    images = _images()
    pattern = trigger.patch_pattern.detach()
    torch.testing.assert_close(_apply(trigger, images), (1 - alpha) * images + alpha * pattern, rtol=0, atol=1e-6)
    assert trigger.coverage() == pytest.approx(alpha, abs=1e-6)


def test_blend_with_an_image_file_pattern(pattern_png):
    trigger = PatchBlendTrigger.blend(SIZE, alpha=1.0, pattern=str(pattern_png))
    with Image.open(pattern_png) as image:
        resized = image.convert("RGB").resize((SIZE, SIZE), Image.BICUBIC)
        expected = torch.tensor(list(resized.getdata()), dtype=torch.float32).view(SIZE, SIZE, 3).permute(2, 0, 1)
    expected = expected / 255.0
    images = _images()
    triggered = _apply(trigger, images)
    torch.testing.assert_close(triggered, expected.expand_as(images), rtol=0, atol=1e-6)
    # a half blend with the same file (given as a Path) is halfway between image and pattern
    half = PatchBlendTrigger.blend(SIZE, alpha=0.5, pattern=pattern_png)
    torch.testing.assert_close(_apply(half, images), 0.5 * images + 0.5 * expected, rtol=0, atol=1e-6)
    with pytest.raises(FileNotFoundError):
        PatchBlendTrigger.blend(SIZE, pattern=str(pattern_png.with_name("missing.png")))


def _effective_mask(trigger):
    """Recover the full-image mask from outputs: T(1) - T(0) = 1 - m for a patch/blend trigger."""
    ones, zeros = torch.ones(1, 3, SIZE, SIZE), torch.zeros(1, 3, SIZE, SIZE)
    with torch.no_grad():
        return 1 - (_apply(trigger, ones) - _apply(trigger, zeros))[0, :1]


@pytest.mark.parametrize("budget", [0.01, 0.05, 0.2])
def test_mask_budget_bounds_coverage(budget):
    trigger = PatchBlendTrigger.free(SIZE, mask_budget=budget, init_mask=0.5, seed=0)
    assert trigger.patch_mask.mean() > budget  # the raw mask is over budget ...
    assert trigger.coverage() <= budget + 1e-6  # ... the applied one is not
    assert float(_effective_mask(trigger).mean()) <= budget + 1e-5
    with torch.no_grad():
        trigger.mask_param.fill_(10.0)  # even a saturated mask is scaled down to the budget
    assert trigger.coverage() == pytest.approx(budget, rel=1e-4)
    small = PatchBlendTrigger.free(SIZE, mask_budget=0.5, init_mask=0.01, seed=0)
    torch.testing.assert_close(_effective_mask(small), small.patch_mask.detach(), rtol=0, atol=1e-5)  # under budget
    with pytest.raises(ValueError, match="mask_budget"):
        PatchBlendTrigger.free(SIZE, mask_budget=0.0)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_save_load_round_trip_gives_identical_outputs(name, tmp_path):
    trigger = FACTORIES[name]()
    json_path = save_trigger(trigger, tmp_path / "trigger", metadata={"attack": name, "target": "banana"})
    assert json_path == tmp_path / "trigger.json" and (tmp_path / "trigger.safetensors").is_file()
    document = read_trigger_metadata(json_path)
    assert document["family"] == trigger.family and document["metadata"] == {"attack": name, "target": "banana"}
    images = _images()
    for reference in (json_path, tmp_path / "trigger", tmp_path / "trigger.safetensors"):
        loaded = load_trigger(reference)
        assert type(loaded) is type(trigger) and loaded.image_size == trigger.image_size
        with torch.no_grad():
            torch.testing.assert_close(
                _apply(loaded, images, seed=3), _apply(trigger, images, seed=3), rtol=0, atol=1e-6
            )


@pytest.mark.parametrize("name", LEARNABLE)
def test_gradients_reach_the_trigger_parameters(name):
    trigger = FACTORIES[name]()
    parameters = list(trigger.parameters())
    assert parameters
    images = _images(n=4)
    weights = torch.randn(images.shape, generator=torch.Generator().manual_seed(1))
    loss = (_apply(trigger, images) * weights).sum()
    loss.backward()
    for parameter in parameters:
        assert parameter.grad is not None and float(parameter.grad.abs().sum()) > 0


def test_project_keeps_parameters_feasible():
    patch = PatchBlendTrigger.patch(SIZE, 4, "center")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a gradient step that leaves [0, 1] on both sides
        patch.mask_param.add_(torch.randn(patch.mask_param.shape, generator=generator))
        patch.pattern_param.add_(torch.randn(patch.pattern_param.shape, generator=generator))
    stepped = [patch.mask_param.detach().clone(), patch.pattern_param.detach().clone()]
    assert any(float(v.min()) < 0 for v in stepped) and any(float(v.max()) > 1 for v in stepped)
    patch.project_()
    for before, after in zip(stepped, (patch.mask_param.detach(), patch.pattern_param.detach())):
        assert torch.equal(after, before.clamp(0, 1))  # the Euclidean projection onto the box

    additive = AdditiveTrigger.random(SIZE, eps=4 / 255)
    with torch.no_grad():
        additive.delta.mul_(10)
    assert float(additive.delta.detach().abs().max()) > additive.eps
    additive.project_()
    assert float(additive.delta.detach().abs().max()) <= additive.eps + 1e-7

    free = PatchBlendTrigger.free(SIZE, mask_budget=0.05)  # logit parametrisation: always feasible
    before = [parameter.detach().clone() for parameter in free.parameters()]
    free.project_()
    assert all(torch.equal(a, b) for a, b in zip(before, free.parameters()))
    assert free.coverage() <= 0.05 + 1e-6


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_draw_trigger_writes_a_png(name, tmp_path):
    path = draw_trigger(FACTORIES[name](), tmp_path / "drawing" / "trigger.png", images=_images(n=2), scale=2)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 2 * SIZE and image.height > 2 * SIZE


def test_draw_identity_without_images_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="nothing to draw"):
        draw_trigger(IdentityTrigger(SIZE), tmp_path / "identity.png")


@pytest.mark.parametrize(
    "content", [{"format": "something-else", "family": "patch_blend"}, {"family": "patch_blend"}, [1, 2], "{not json"]
)
def test_load_trigger_refuses_foreign_json(content, tmp_path):
    path = tmp_path / "foreign.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    with pytest.raises(ValueError, match="not a clipclean trigger file"):
        load_trigger(path)


def test_load_trigger_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_trigger(tmp_path / "missing.json")
    json_path = save_trigger(PatchBlendTrigger.patch(SIZE, 3), tmp_path / "trigger")
    document = json.loads(json_path.read_text())
    document["family"] = "no_such_family"
    json_path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match="unknown trigger family"):
        load_trigger(json_path)


def test_registry_rejects_duplicate_and_uppercase_names():
    before = dict(TRIGGER_FAMILIES)

    class Dummy(IdentityTrigger):
        pass

    for bad_name in ("patch_blend", "identity", "Patch", "UPPER", "has space", "-dash", "two__underscores"):
        with pytest.raises(ValueError):
            register_trigger_family(bad_name)(Dummy)
    assert TRIGGER_FAMILIES == before
    assert all(name == name.lower() for name in TRIGGER_FAMILIES)


def test_mask_iou():
    mask = torch.zeros(1, 8, 8)
    mask[:, :4, :4] = 1
    assert mask_iou(mask, mask) == 1.0
    assert mask_iou(0.3 * mask, mask) == 1.0  # thresholds are relative to each mask's maximum
    shifted = torch.zeros(1, 8, 8)
    shifted[:, :4, 2:6] = 1  # overlaps half of ``mask``: intersection 8, union 24
    assert mask_iou(shifted, mask) == pytest.approx(8 / 24)
    assert mask_iou(shifted, mask) == mask_iou(mask, shifted)
    disjoint = torch.zeros(1, 8, 8)
    disjoint[:, 4:, 4:] = 1
    assert mask_iou(disjoint, mask) == 0.0
    found = PatchBlendTrigger.patch(SIZE, 4, "top-left").full_mask_and_pattern()[0].detach()
    true = PatchBlendTrigger.patch(SIZE, 4, "top-left", pattern="white").full_mask_and_pattern()[0].detach()
    assert mask_iou(found, true) == 1.0
