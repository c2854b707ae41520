"""Every loader path of ``load_clip`` (offline, tiny random-init CLIPs) and the PixelCLIP contract."""

from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from hub_cache import lay_out_hub_cache
from safetensors.torch import save_file
from torch import nn

from clipclean.hub import save_pretrained
from clipclean.models import ModelLoadError, PixelCLIP, load_clip, register_model_configs, unwrap


def assert_same_outputs(model: PixelCLIP, reference: PixelCLIP) -> None:
    torch.manual_seed(1)
    images = torch.rand(3, 3, 32, 32)
    captions = ["a photo of a cat", "a photo of a dog"]
    with torch.no_grad():
        assert torch.equal(model.encode_image(images), reference.encode_image(images))
        assert torch.equal(model.encode_text(captions), reference.encode_text(captions))
        assert torch.equal(model.logit_scale, reference.logit_scale)


@pytest.fixture
def saved_folder(tiny_clip, tmp_path) -> Path:
    return save_pretrained(tiny_clip, tmp_path / "checkpoint")


# ------------------------------------------------------------------------------------------------- loader paths


def test_tiny_configs_are_registered_and_random_init():
    names = register_model_configs()
    assert names == ["clipclean-small", "clipclean-tiny"]
    assert set(names) <= set(open_clip.list_models())
    torch.manual_seed(0)
    first = load_clip("clipclean-tiny")
    torch.manual_seed(1)
    second = load_clip("clipclean-tiny")
    assert isinstance(first, PixelCLIP) and not first.training
    assert first.image_size == (32, 32) and first.embed_dim == 64 and first.context_length == 32
    assert first.name == "clipclean-tiny"
    assert first.model_config == open_clip.get_model_config("clipclean-tiny")
    assert not torch.equal(first.model.text_projection, second.model.text_projection)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_config_name_with_checkpoint_file(tiny_clip, tmp_path, suffix):
    checkpoint = tmp_path / f"weights{suffix}"
    state_dict = {key: value.contiguous() for key, value in tiny_clip.model.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state_dict, str(checkpoint))
    else:
        torch.save(state_dict, checkpoint)
    torch.manual_seed(123)  # a different random init, overwritten by the checkpoint
    loaded = load_clip("clipclean-tiny", pretrained=str(checkpoint))
    assert_same_outputs(loaded, tiny_clip)


@pytest.mark.parametrize("prefix", ["", "local-dir:"])
def test_directory(tiny_clip, saved_folder, prefix):
    loaded = load_clip(f"{prefix}{saved_folder}")
    assert loaded.model_config == tiny_clip.model_config
    assert_same_outputs(loaded, tiny_clip)


def test_hub_cache_offline(tiny_clip, saved_folder, tmp_path):
    cache = tmp_path / "hub-cache"
    lay_out_hub_cache(saved_folder, cache, "clipclean-test/tiny")
    loaded = load_clip("hf-hub:clipclean-test/tiny", cache_dir=str(cache))
    assert loaded.name == "hf-hub:clipclean-test/tiny"
    assert_same_outputs(loaded, tiny_clip)


# ------------------------------------------------------------------------------------------------------- errors


def test_unknown_name():
    with pytest.raises(ModelLoadError) as error:
        load_clip("no-such-clip")
    message = str(error.value)
    assert "unknown model name 'no-such-clip'" in message
    assert "Tried: open_clip model config 'no-such-clip'" in message
    assert "clipclean-tiny" in message  # says what would have worked


def test_missing_directory(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(ModelLoadError) as error:
        load_clip(f"local-dir:{missing}")
    assert f"directory not found: {missing}" in str(error.value)
    assert f"Tried: local directory {missing}" in str(error.value)


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelLoadError) as error:
        load_clip(str(tmp_path))
    assert "open_clip_config.json is missing" in str(error.value)
    assert f"Tried: local directory {tmp_path}" in str(error.value)


def test_directory_without_weights(saved_folder):
    (saved_folder / "open_clip_model.safetensors").unlink()
    with pytest.raises(ModelLoadError) as error:  # open_clip itself would only warn and initialise randomly
        load_clip(f"local-dir:{saved_folder}")
    assert "no weights" in str(error.value) and f"Tried: local directory {saved_folder}" in str(error.value)


def test_nonexistent_pretrained_file(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(ModelLoadError) as error:
        load_clip("clipclean-tiny", pretrained=str(missing))
    message = str(error.value)
    assert f"pretrained '{missing}' is neither a file nor a known tag of 'clipclean-tiny'" in message
    assert "Tried: open_clip model config 'clipclean-tiny'" in message


def test_pretrained_tag_offline_miss(tmp_path):
    # A real tag of a real config, but offline with an empty cache: must fail fast, naming the tag.
    with pytest.raises(ModelLoadError) as error:
        load_clip("RN50", pretrained="openai", cache_dir=str(tmp_path))
    assert "Tried: open_clip model config 'RN50'; open_clip pretrained tag 'openai'" in str(error.value)


def test_hub_offline_miss(tmp_path):
    with pytest.raises(ModelLoadError) as error:
        load_clip("hf-hub:clipclean-test/absent", cache_dir=str(tmp_path))
    message = str(error.value)
    assert "could not load CLIP 'hf-hub:clipclean-test/absent'" in message
    assert "Tried: Hugging Face Hub repo 'clipclean-test/absent' (offline: local cache only)" in message


def test_hub_cache_without_weights(saved_folder, tmp_path):
    snapshot = lay_out_hub_cache(saved_folder, tmp_path / "hub-cache", "clipclean-test/no-weights")
    (snapshot / "open_clip_model.safetensors").unlink()
    with pytest.raises(ModelLoadError) as error:
        load_clip("hf-hub:clipclean-test/no-weights", cache_dir=str(tmp_path / "hub-cache"))
    assert "open_clip weights could not be found" in str(error.value)


# --------------------------------------------------------------------------------------------------- PixelCLIP


def test_encode_image_is_unit_norm(tiny_clip):
    features = tiny_clip.encode_image(torch.rand(5, 3, 32, 32))
    assert features.shape == (5, 64)
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(5))
    raw = tiny_clip.encode_image(torch.rand(5, 3, 32, 32), normalize=False)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(5))


def test_encode_image_resizes_other_sizes(tiny_clip):
    images = torch.rand(2, 3, 48, 40)
    resized = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    with torch.no_grad():
        assert torch.equal(tiny_clip.encode_image(images), tiny_clip.encode_image(resized))


@pytest.mark.parametrize("shape", [(3, 32, 32), (2, 1, 32, 32), (2, 4, 32, 32), (1, 2, 3, 32, 32)])
def test_rejects_wrong_shapes(tiny_clip, shape):
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, H, W\)"):
        tiny_clip.encode_image(torch.rand(*shape))


def test_normalisation_uses_the_models_mean_and_std(tiny_clip):
    visual = tiny_clip.model.visual
    mean = torch.tensor(visual.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(visual.image_std).view(1, 3, 1, 1)
    images = torch.rand(2, 3, 32, 32)
    assert torch.equal(tiny_clip.normalize_pixels(images), (images - mean) / std)

    visual.image_mean, visual.image_std = (0.5, 0.25, 0.75), (0.5, 0.25, 0.125)
    custom = PixelCLIP(tiny_clip.model, tiny_clip.tokenizer, tiny_clip.model_config)
    pixels = torch.tensor([0.5, 0.25, 0.75]).view(1, 3, 1, 1).expand(2, 3, 32, 32)
    assert torch.equal(custom.normalize_pixels(pixels), torch.zeros(2, 3, 32, 32))
    with torch.no_grad():
        expected = tiny_clip.model.encode_image((images - custom.image_mean) / custom.image_std, normalize=True)
        assert torch.equal(custom.encode_image(images), expected)


def test_text_from_strings_or_tokens(tiny_clip):
    tokens = tiny_clip.tokenize(["a photo of a cat", "a dog"])
    assert tokens.shape == (2, 32) and tokens.dtype == torch.long
    assert torch.equal(tiny_clip.tokenize("a dog"), tokens[1:])
    with torch.no_grad():
        features = tiny_clip.encode_text(["a photo of a cat", "a dog"])
        assert torch.equal(features, tiny_clip.encode_text(tokens))
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(2))


def test_forward_feeds_clip_loss(tiny_clip):
    tiny_clip.train()
    images, tokens = torch.rand(4, 3, 32, 32), tiny_clip.tokenize([f"caption {i}" for i in range(4)])
    image_features, text_features, logit_scale = tiny_clip(images, tokens)
    assert image_features.shape == text_features.shape == (4, 64)
    torch.testing.assert_close(logit_scale, tiny_clip.model.logit_scale.exp())
    loss = open_clip.ClipLoss()(image_features, text_features, logit_scale)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert tiny_clip.model.visual.proj.grad is not None and tiny_clip.model.text_projection.grad is not None
    assert tiny_clip.model.logit_scale.grad is not None

    only_images = tiny_clip(images)
    assert only_images[1] is None and only_images[0].shape == (4, 64)


def test_fresh_copy_is_independent(tiny_clip):
    copy = tiny_clip.fresh_copy()
    with torch.no_grad():
        copy.model.text_projection.add_(1.0)
    assert not torch.equal(copy.model.text_projection, tiny_clip.model.text_projection)


def test_unwrap(tiny_clip):
    class Wrapper(nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

    assert unwrap(Wrapper(Wrapper(tiny_clip))) is tiny_clip
    with pytest.raises(TypeError, match="expected a PixelCLIP"):
        unwrap(nn.Linear(2, 2))
