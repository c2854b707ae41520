"""Hidden units (clipclean.units): recording, scoring, zeroing and re-initialising, on a tiny CLIP and a small CNN."""

import open_clip
import pytest
import torch

from clipclean.classifiers import create_classifier
from clipclean.models import PixelCLIP
from clipclean.units import (
    ConvUnits,
    MLPUnits,
    collect_images,
    editable_unit_layers,
    record_unit_activations,
    top_units,
    unit_scores,
)

RESNET_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "patch_size": None},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1},
}


def test_unit_layers_of_a_vit_clip_a_resnet_clip_and_a_cnn(tiny_clip):
    layers = editable_unit_layers(tiny_clip)
    blocks = tiny_clip.model.visual.transformer.resblocks
    assert len(layers) == len(blocks) and all(isinstance(layer, MLPUnits) for layer in layers)
    images = torch.rand(6, 3, 32, 32)
    recorded = record_unit_activations(tiny_clip, layers, range(len(layers)), images)
    assert {index: tuple(value.shape) for index, value in recorded.items()} == {
        index: (6, block.mlp.c_fc.out_features) for index, block in enumerate(blocks)
    }
    resnet = open_clip.model.CLIP(**RESNET_CONFIG)
    resnet.visual.image_mean, resnet.visual.image_std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    resnet_layers = editable_unit_layers(PixelCLIP(resnet, tiny_clip.tokenizer, RESNET_CONFIG, name="resnet"))
    assert len(resnet_layers) == sum(isinstance(m, torch.nn.Conv2d) for m in resnet.visual.modules())
    assert all(isinstance(layer, ConvUnits) for layer in resnet_layers)
    cnn_layers = editable_unit_layers(create_classifier("small-cnn", [str(i) for i in range(10)], image_size=32))
    assert cnn_layers and all(isinstance(layer, ConvUnits) for layer in cnn_layers)


def test_reinitialised_mlp_units_drop_their_output_and_still_learn(tiny_clip):
    """A re-initialised unit contributes nothing at first (its outgoing column is zero, exactly as a zeroed unit), has
    fresh incoming weights at the layer's scale, and gets a gradient, so training can give it a new function."""
    layers = editable_unit_layers(tiny_clip)
    units = [1, 7, 30]
    mlp = tiny_clip.model.visual.transformer.resblocks[0].mlp
    old_rows = mlp.c_fc.weight[units].clone()
    images = torch.rand(8, 3, 32, 32)
    zeroed = tiny_clip.fresh_copy()
    for parameter, keep in editable_unit_layers(zeroed)[0].keep_masks(units):
        with torch.no_grad():
            parameter.mul_(keep)
    layers[0].reinitialise(units, torch.Generator().manual_seed(0))
    assert mlp.c_proj.weight[:, units].abs().max() == 0 and mlp.c_fc.bias[units].abs().max() == 0
    assert not torch.allclose(mlp.c_fc.weight[units], old_rows)
    weight = mlp.c_fc.weight.detach()
    assert float(weight[units].std()) == pytest.approx(float(weight.std()), rel=0.5)
    with torch.no_grad():
        assert torch.allclose(tiny_clip.encode_image(images), zeroed.encode_image(images), atol=1e-5)
    tiny_clip.encode_image(images).sum().backward()
    assert float(mlp.c_proj.weight.grad[:, units].abs().sum()) > 0


def test_reinitialised_conv_units_get_fresh_filters():
    network = create_classifier("small-cnn", [str(i) for i in range(10)], image_size=32)
    layer = editable_unit_layers(network)[0]
    before = layer.conv.weight.detach().clone()
    layer.reinitialise([0, 3], torch.Generator().manual_seed(0))
    after = layer.conv.weight.detach()
    assert not torch.allclose(after[[0, 3]], before[[0, 3]])
    assert torch.equal(after[[1, 2]], before[[1, 2]])
    if layer.conv.bias is not None:
        assert layer.conv.bias[[0, 3]].abs().max() == 0


def test_unit_scores_rank_the_unit_the_trigger_drives_and_collect_images_stops_at_the_count():
    clean = torch.randn(16, 5)
    triggered = clean.clone()
    triggered[:, 2] += 4.0
    triggered[:, 4] += 1.0
    scores = unit_scores(clean, triggered)
    assert scores.argsort(descending=True)[:2].tolist() == [2, 4]
    assert top_units(scores, 0.4).tolist() == [2, 4] and top_units(scores, 0.01).tolist() == [2]
    batches = [(torch.rand(4, 3, 8, 8), None), (torch.rand(4, 3, 8, 8), None), (torch.rand(4, 3, 8, 8), None)]
    assert collect_images(batches, 6).shape[0] == 6
    with pytest.raises(ValueError, match="at least 2"):
        collect_images([(torch.rand(1, 3, 8, 8), None)], 6)
