"""Hidden units of an image encoder: record their activations, score them by a trigger, zero or re-initialise them.

Shared by activation-guided editing (:mod:`clipclean.defenses.age`, which zeroes the units a trigger drives) and
BI-BAU's unit reset (:mod:`clipclean.defenses.bibau`, which re-initialises them so a retuning attack finds no trigger
detector left to reconnect; docs/method.md, "Complete unlearning").

A *unit layer* is one of

* :class:`MLPUnits` -- the hidden units of a ViT block's MLP (open_clip ``c_fc``/``c_proj``, transformers
  ``fc1``/``fc2``); a unit's activation is its token-averaged input of the projection;
* :class:`ConvUnits` -- the output channels of a ``Conv2d`` (a CNN classifier); a unit's activation is its spatially
  averaged output.

:func:`editable_unit_layers` lists a model's unit layers from input to output.

Example::

    >>> layers = editable_unit_layers(model)
    >>> clean = record_unit_activations(model, layers, range(len(layers)), images)        # {layer: (N, units)}
    >>> triggered = record_unit_activations(model, layers, range(len(layers)), trigger.apply(images))
    >>> scores = unit_scores(clean[0], triggered[0])                                      # (units,)
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from clipclean.classifiers import ImageClassifier
from clipclean.inversion import ReduceFn, no_reduce, process_share
from clipclean.models import PixelModel, unwrap


class MLPUnits:
    """The hidden units of a ViT block's MLP: ``fc`` -> activation -> ``proj`` (open_clip ``resblock.mlp``:
    ``c_fc``/``c_proj``; transformers ``CLIPEncoderLayer.mlp``: ``fc1``/``fc2``).

    A unit's activation is the token-averaged input of ``proj``; zeroing it zeroes its ``fc`` row (weight and bias)
    and its ``proj`` column; re-initialising it draws a fresh ``fc`` row and zeroes its ``proj`` column.
    """

    def __init__(self, mlp: nn.Module, batch_first: bool = True, fc: str = "c_fc", proj: str = "c_proj") -> None:
        self.token_dim = 1 if batch_first else 0
        self.fc, self.proj = getattr(mlp, fc), getattr(mlp, proj)

    def record(self, recorded: dict, index: int):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            recorded[index] = inputs[0].float().mean(dim=self.token_dim)

        return self.proj.register_forward_pre_hook(hook)

    def keep_masks(self, units: list[int]) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """``(parameter, 0/1 mask)`` pairs that zero the units when multiplied in."""
        fc, proj = self.fc, self.proj
        masks = [(fc.weight, _zeroed(fc.weight, units, 0)), (proj.weight, _zeroed(proj.weight, units, 1))]
        if fc.bias is not None:
            masks.append((fc.bias, _zeroed(fc.bias, units, 0)))
        return masks

    @torch.no_grad()
    def reinitialise(self, units: list[int], generator: torch.Generator) -> None:
        """Fresh units: new ``fc`` rows drawn with the layer's own weight scale, zero bias, zero ``proj`` columns.

        The block's output does not change at once (the units' outgoing weights are zero) and every re-initialised
        unit still gets a gradient (through its ``proj`` column), so training can give it a new function.
        """
        index = torch.tensor(units, dtype=torch.long, device=self.fc.weight.device)
        _redraw_rows(self.fc.weight, index, generator)
        if self.fc.bias is not None:
            self.fc.bias.index_fill_(0, index, 0.0)
        self.proj.weight.index_fill_(1, index, 0.0)


class ConvUnits:
    """The output channels of a ``Conv2d`` (a CNN classifier's units): a unit's activation is its spatially averaged
    output; zeroing it zeroes its filter and bias (what follows sees a constant 0, e.g. ReLU(0) = 0);
    re-initialising it draws a fresh filter (with the layer's own weight scale) and a zero bias."""

    def __init__(self, conv: nn.Conv2d) -> None:
        self.conv = conv

    def record(self, recorded: dict, index: int):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            recorded[index] = output.float().mean(dim=(2, 3))

        return self.conv.register_forward_hook(hook)

    def keep_masks(self, units: list[int]) -> list[tuple[nn.Parameter, torch.Tensor]]:
        masks = [(self.conv.weight, _zeroed(self.conv.weight, units, 0))]
        if self.conv.bias is not None:
            masks.append((self.conv.bias, _zeroed(self.conv.bias, units, 0)))
        return masks

    @torch.no_grad()
    def reinitialise(self, units: list[int], generator: torch.Generator) -> None:
        index = torch.tensor(units, dtype=torch.long, device=self.conv.weight.device)
        _redraw_rows(self.conv.weight, index, generator)
        if self.conv.bias is not None:
            self.conv.bias.index_fill_(0, index, 0.0)


UnitLayer = MLPUnits | ConvUnits


def _zeroed(parameter: torch.Tensor, units: list[int], dim: int) -> torch.Tensor:
    keep = torch.ones_like(parameter)
    keep.index_fill_(dim, torch.tensor(units, dtype=torch.long, device=parameter.device), 0)
    return keep


def _redraw_rows(weight: torch.Tensor, index: torch.Tensor, generator: torch.Generator) -> None:
    """Replace ``weight[index]`` (rows of the first dimension) by Gaussian draws with the tensor's own std."""
    scale = float(weight.float().std())
    fresh = torch.randn((len(index), *weight.shape[1:]), generator=generator) * scale
    weight.index_copy_(0, index, fresh.to(device=weight.device, dtype=weight.dtype))


def editable_unit_layers(model: nn.Module) -> list[UnitLayer]:
    """The unit layers of ``model``'s image encoder, input to output: a CLIP's ViT MLP blocks (open_clip or
    transformers), else the ``Conv2d`` layers of its image tower (a ResNet CLIP) or of an image classifier.

    Raises:
        TypeError: none of these (e.g. a classifier without convolutions).
    """
    pixel_model = unwrap(model, PixelModel)
    tower = pixel_model.network if isinstance(pixel_model, ImageClassifier) else pixel_model.model.visual
    # a transformers CLIPModel (clipclean.transformers_clip): the MLP of every CLIPEncoderLayer
    if isinstance(tower, nn.ModuleDict) and "vision_model" in tower:
        return [MLPUnits(layer.mlp, True, "fc1", "fc2") for layer in tower["vision_model"].encoder.layers]
    transformer = getattr(tower, "transformer", None)
    if transformer is not None and hasattr(transformer, "resblocks"):  # an open_clip VisionTransformer
        batch_first = getattr(transformer, "batch_first", True)
        return [MLPUnits(block.mlp, batch_first) for block in transformer.resblocks]
    convs = [module for module in tower.modules() if isinstance(module, nn.Conv2d)]  # a CNN, a ResNet image tower
    if not convs:
        raise TypeError(
            "unit editing needs a vision transformer's MLP units or Conv2d channels in the image encoder; this one "
            f"is a {type(tower).__name__} with neither"
        )
    return [ConvUnits(conv) for conv in convs]


def collect_images(batches: Iterable[tuple[torch.Tensor, ...]], count: int, world_size: int = 1) -> torch.Tensor:
    """This process's first images (fewer if the batches run out) of ``(images, ...)`` batches, concatenated:
    ``count`` images over all ``world_size`` processes, each taking its share (at least 2;
    :func:`~clipclean.inversion.process_share`). Fed the per-process batches of the recipe's loader, N processes
    together take the images one process would.

    Raises:
        ValueError: fewer than 2 images (no spread to score units against).
    """
    count = max(2, process_share(count, world_size))
    chunks, total = [], 0
    for images, *_rest in batches:
        chunks.append(images[: count - total])
        total += chunks[-1].shape[0]
        if total >= count:
            break
    if total < 2:
        raise ValueError("scoring units needs at least 2 clean images")
    return torch.cat(chunks)


@torch.no_grad()
def record_unit_activations(
    model: PixelModel, layers: list[UnitLayer], indices: Iterable[int], images: torch.Tensor
) -> dict[int, torch.Tensor]:
    """Averaged unit activations ``{layer index: (N, units)}`` of ``(N, 3, H, W)`` images in [0, 1] (one forward of
    the image encoder with hooks on the chosen ``layers``)."""
    recorded: dict[int, torch.Tensor] = {}
    handles = [layers[index].record(recorded, index) for index in indices]
    try:
        model.encode_image(images.to(model.device))
    finally:
        for handle in handles:
            handle.remove()
    return recorded


def top_units(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """Indices (ascending) of the ``ceil(fraction * units)`` highest ``scores`` (at least one)."""
    count = max(1, math.ceil(fraction * scores.numel()))
    return scores.topk(count).indices.sort().values


def unit_scores(clean: torch.Tensor, triggered: torch.Tensor, reduce_fn: ReduceFn = no_reduce) -> torch.Tensor:
    """``|mean_i (triggered_i - clean_i)| / (std_i clean_i + 1e-6)`` per unit, from ``(N, units)`` pairs.

    The sums behind the mean and the standard deviation go through ``reduce_fn`` (e.g. the accelerator's sum), so
    every process scores the units on all processes' samples and picks the same units.
    """
    sums = torch.stack([(triggered - clean).sum(dim=0), clean.sum(dim=0), clean.pow(2).sum(dim=0)])
    difference_sum, clean_sum, clean_square_sum = reduce_fn(sums, "sum")
    count = reduce_fn(torch.tensor(float(clean.shape[0]), device=clean.device), "sum")
    variance = ((clean_square_sum - clean_sum.pow(2) / count) / (count - 1).clamp_min(1)).clamp_min(0)
    return (difference_sum / count).abs() / (variance.sqrt() + 1e-6)
