"""The task a defense unlearns on: contrastive (a CLIP) or classification (the degenerate case).

Every defense writes its loss once, in terms of an objective's pieces, and works on both kinds of model:

==========================  ===========================================  ==========================================
piece                       CLIP (:class:`ContrastiveObjective`)         classifier (:class:`ClassificationObjective`)
==========================  ===========================================  ==========================================
``forward(model, x, own)``  ``g(x)`` chunks, ``h(c)``, ``s`` (one pass)  logits chunks, labels ``y``, ``None``
``task_loss``               ``L_clip(g(x), h(c))`` (gathered with grad)  ``CE(f(x), y)``
``anchor(out, ref)``        ``||g(x) - g_ref(x)||^2``                    ``KL(f_ref(x) || f(x))``
``push_off(out, own, u)``   ``relu(cos(g(T x), u))``                     ``sum_{k != y} r_k p(k | T x)``
``target_probability``      ``softmax(s g [u, h(c_1..B)])[0]``           ``sum_{k != y} r_k p(k | x)``
``image_parameters``        the image tower                              the whole network
==========================  ===========================================  ==========================================

so BI-BAU's classifier loss is ``CE(f(T x), y) + CE(f(x), y) + gamma KL(f_ref(x) || f(x))`` (docs/method.md, "Image
classifiers: the degenerate case")
(plus clipclean's push-off and triggered-distillation terms, weights ``beta`` and ``delta``).

Example::

    >>> objective = make_objective(model, context)           # picks the kind from the model
    >>> (clean, triggered), own, scale = objective.forward(model, torch.cat([x, T(x)]), labels, parts=2)
    >>> loss = objective.task_loss(clean, own, scale) + objective.task_loss(triggered, own, scale)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from clipclean.classifiers import ImageClassifier
from clipclean.models import PixelCLIP, PixelModel, lookup_by_kind, unwrap
from clipclean.registry import Registry
from clipclean.training import make_clip_loss

if TYPE_CHECKING:
    from clipclean.defenses.base import DefenseContext


def feature_anchor_loss(features: torch.Tensor, reference_features: torch.Tensor) -> torch.Tensor:
    """``mean_i ||g(x_i) - g_ref(x_i)||^2``: keeps the clean function close to the starting encoder."""
    return (features - reference_features).pow(2).sum(-1).mean()


def target_probability(
    image_features: torch.Tensor, text_features: torch.Tensor, direction: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """``(B,)`` probability that each image matches the target direction ``u`` rather than any batch caption.

    ``softmax(s * g(x') @ [u, h(c_1), ..., h(c_B)])[0]`` with unit features ``(B, d)``, ``(B, d)`` and ``u (d,)``.
    """
    features = image_features.float()
    logits = torch.cat([features @ direction.float()[:, None], features @ text_features.float().T], dim=1)
    return (logit_scale.float() * logits).softmax(dim=-1)[:, 0]


class ContrastiveObjective:
    """A CLIP's pieces (see the module table); ``context`` gives the reference model and the process group.

    Images are ``(B, 3, H, W)`` in [0, 1]; ``own`` is caption token ids ``(B, L)``.
    """

    prefix = "clip"
    default_anchor_weight = 20.0  # BI-BAU's gamma on the squared distance of unit image embeddings
    default_reset_fraction = 0.25  # BI-BAU's unit reset (measured on the digits CLIPs, benchmarks/README.md)
    default_stop_early = False  # BI-BAU runs every EM round (the early stop left BadNet removal superficial)

    def __init__(self, context: DefenseContext) -> None:
        self.context = context
        self.clip_loss = make_clip_loss(context.rank, context.world_size)

    def forward(self, model: nn.Module, images: torch.Tensor, own: torch.Tensor, parts: int = 1):
        """One forward of ``parts`` stacked image batches with one text batch: ``(image chunks, h(c), s)``.

        A single forward through a DDP-wrapped model keeps gradient synchronisation simple.
        """
        image_features, text_features, logit_scale = model(images, own)
        return image_features.chunk(parts), text_features, logit_scale

    def task_loss(self, outputs: torch.Tensor, own: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.clip_loss(outputs, own, scale)

    @torch.no_grad()
    def reference_outputs(self, images: torch.Tensor) -> torch.Tensor:
        return self.context.reference.encode_image(images).float()

    def anchor(self, outputs: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        return feature_anchor_loss(outputs.float(), reference)

    def push_off(self, outputs: torch.Tensor, own: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
        return F.relu(outputs.float() @ direction.to(outputs.device).float()).mean()

    def target_probability(self, outputs, own, direction, scale) -> torch.Tensor:
        """:func:`target_probability` (the captions and the temperature are held fixed)."""
        return target_probability(outputs, own.detach(), direction, scale.detach())

    @staticmethod
    def image_parameters(model: PixelModel) -> list[nn.Parameter]:
        return list(unwrap(model).model.visual.parameters())


class ClassificationObjective(ContrastiveObjective):
    """An :class:`~clipclean.classifiers.ImageClassifier`'s pieces (see the module table); ``own`` is labels ``(B,)``
    and a target "direction" is a posterior ``r (C,)`` over the classes."""

    prefix = "ce"
    default_anchor_weight = 5.0  # BI-BAU's gamma on KL(f_ref(x) || f(x))
    default_reset_fraction = 0.0  # the unit reset was measured on CLIPs only
    default_stop_early = True  # the CNN settings of benchmarks/classifier.md stop when the trigger no longer hijacks

    def forward(self, model: nn.Module, images: torch.Tensor, own: torch.Tensor, parts: int = 1):
        return model(images).float().chunk(parts), own.to(images.device).long(), None

    def task_loss(self, outputs: torch.Tensor, own: torch.Tensor, scale: None) -> torch.Tensor:
        return F.cross_entropy(outputs, own)

    @torch.no_grad()
    def reference_outputs(self, images: torch.Tensor) -> torch.Tensor:
        return self.context.reference.logits(images).float()

    def anchor(self, outputs: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """``KL(f_ref(x) || f(x))`` averaged over the batch."""
        return F.kl_div(
            F.log_softmax(outputs, -1), F.log_softmax(reference, -1), log_target=True, reduction="batchmean"
        )

    def target_probability(self, outputs, own, direction, scale) -> torch.Tensor:
        """``(B,)`` ``sum_{k != y_i} r_k p(k | x_i)``: the probability mass on the (posterior-weighted) target."""
        other = 1 - F.one_hot(own, outputs.shape[-1]).float()
        return (outputs.softmax(-1) * direction.to(outputs.device).float()[None] * other).sum(-1)

    def push_off(self, outputs: torch.Tensor, own: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
        return self.target_probability(outputs, own, direction, None).mean()

    @staticmethod
    def image_parameters(model: PixelModel) -> list[nn.Parameter]:
        return list(unwrap(model, ImageClassifier).network.parameters())


OBJECTIVES: Registry[type[PixelModel], type[ContrastiveObjective]] = Registry("defense objective")
OBJECTIVES.register(PixelCLIP, ContrastiveObjective)
OBJECTIVES.register(ImageClassifier, ClassificationObjective)


def make_objective(model: nn.Module, context: DefenseContext) -> ContrastiveObjective:
    """The objective for ``model``'s kind (looked up along its class hierarchy in :data:`OBJECTIVES`)."""
    return lookup_by_kind(OBJECTIVES, model)(context)
