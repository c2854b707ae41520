"""Legacy CleanCLIP/BadCLIP checkpoints: safe loading, architecture inference, equal embeddings after conversion."""

import argparse

import open_clip
import pytest
import torch

from clipclean.hub import save_pretrained
from clipclean.legacy import (
    LegacyCheckpointError,
    convert_legacy_checkpoint,
    infer_open_clip_config,
    known_config_name,
    load_legacy_state_dict,
)
from clipclean.models import load_clip

# OpenAI's conventions at a tiny size: QuickGELU, 64-wide attention heads, OpenAI's BPE vocabulary.
TINY_VIT = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
}
TINY_RESNET = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "patch_size": None},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1},
}


def openai_layout_model(config: dict, seed: int = 0) -> open_clip.model.CLIP:
    """A random-init CLIP whose state dict has OpenAI CLIP's layout (open_clip keeps OpenAI's parameter names)."""
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**config).eval()
    with torch.no_grad():  # non-trivial norms and logit scale, so a mix-up of parameters would show
        for name, parameter in model.named_parameters():
            if "ln" in name or "bn" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def cleanclip_checkpoint(model: torch.nn.Module, path, prefix: str = "module.") -> None:
    """What CleanCLIP's / BadCLIP's training code saves (DistributedDataParallel: ``module.`` prefixes)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.logit_scale.sum().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    state_dict = {prefix + key: value for key, value in model.state_dict().items()}
    torch.save({"epoch": 64, "name": "cleanclip", "state_dict": state_dict, "optimizer": optimizer.state_dict()}, path)


def embeddings(model, images, tokens):
    with torch.no_grad():
        return model.encode_image(images, normalize=True), model.encode_text(tokens, normalize=True)


@pytest.mark.parametrize("config", [TINY_VIT, TINY_RESNET], ids=["vit", "resnet"])
def test_conversion_gives_the_same_embeddings(config, tmp_path):
    source = openai_layout_model(config)
    cleanclip_checkpoint(source, tmp_path / "epoch_64.pt")
    size = config["vision_cfg"]["image_size"]
    pixels = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(3))
    tokens = open_clip.tokenizer.SimpleTokenizer(context_length=16)(["a photo of a banana", "a dog", "a truck"])
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    expected_images, expected_text = embeddings(source, (pixels - mean) / std, tokens)

    converted = convert_legacy_checkpoint(tmp_path / "epoch_64.pt")
    assert converted.name == "legacy:epoch_64.pt" and converted.image_size == (size, size)
    assert converted.model_config == {**config, "vision_cfg": {**config["vision_cfg"]}}
    assert torch.equal(converted.encode_image(pixels), expected_images)  # PixelCLIP normalises with OpenAI's stats
    assert torch.equal(converted.encode_text(tokens), expected_text)
    assert torch.equal(converted.tokenize(["a photo of a banana"]), tokens[:1])

    folder = save_pretrained(converted, tmp_path / "converted", provenance={"converted_from": "epoch_64.pt"})
    reloaded = load_clip(str(folder))  # plain open_clip Hub layout
    assert torch.equal(reloaded.encode_image(pixels), expected_images)
    assert torch.equal(reloaded.encode_text(tokens), expected_text)


def test_half_precision_bare_state_dicts_with_openai_scalars_load(tmp_path):
    source = openai_layout_model(TINY_VIT)
    state_dict = {key: value.half() for key, value in source.state_dict().items()}
    state_dict.update(
        input_resolution=torch.tensor(32), context_length=torch.tensor(16), vocab_size=torch.tensor(49408)
    )
    torch.save(state_dict, tmp_path / "bare.pt")
    loaded = load_legacy_state_dict(tmp_path / "bare.pt")
    assert set(loaded) == set(source.state_dict()) and all(v.dtype == torch.float32 for v in loaded.values())
    converted = convert_legacy_checkpoint(tmp_path / "bare.pt")
    expected = {key: value.half().float() for key, value in source.state_dict().items()}
    for key, value in converted.model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_checkpoints_that_need_code_to_unpickle_are_refused(tmp_path):
    source = openai_layout_model(TINY_VIT)
    torch.save({"state_dict": source.state_dict(), "args": argparse.Namespace(lr=1e-5)}, tmp_path / "with_args.pt")
    with pytest.raises(LegacyCheckpointError, match="arbitrary code"):
        convert_legacy_checkpoint(tmp_path / "with_args.pt")
    torch.save(source, tmp_path / "whole_module.pt")
    with pytest.raises(LegacyCheckpointError, match="weights_only=True"):
        convert_legacy_checkpoint(tmp_path / "whole_module.pt")


def test_checkpoints_without_a_clip_are_refused(tmp_path):
    torch.save({"state_dict": {"module.fc.weight": torch.zeros(2, 2)}}, tmp_path / "resnet.pt")
    with pytest.raises(LegacyCheckpointError, match="not an OpenAI-layout CLIP"):
        convert_legacy_checkpoint(tmp_path / "resnet.pt")
    with pytest.raises(FileNotFoundError):
        convert_legacy_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize("name", ["RN50-quickgelu", "ViT-B-32-quickgelu"])
def test_the_real_architectures_are_recognised_from_shapes(name):
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = open_clip.model.CLIP(**open_clip.get_model_config(name))
    config = infer_open_clip_config(model.state_dict())
    assert known_config_name(config) == name


def test_resnet_state_dicts_without_batchnorm_counters_convert(tmp_path):
    """OpenAI's exported ResNet state dicts carry no ``num_batches_tracked``; they do not change the function."""
    source = openai_layout_model(TINY_RESNET)
    state_dict = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": state_dict}, tmp_path / "rn.pt")
    converted = convert_legacy_checkpoint(tmp_path / "rn.pt")
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.equal(converted.encode_image(pixels), source.encode_image((pixels - mean) / std, normalize=True))
    del state_dict["visual.attnpool.c_proj.weight"]
    torch.save({"state_dict": state_dict}, tmp_path / "broken.pt")
    with pytest.raises(LegacyCheckpointError, match="do not fit"):
        convert_legacy_checkpoint(tmp_path / "broken.pt")
