"""Contrastive training pieces shared by poison training and unlearning.

The recipes own the loop and the ``Accelerator``; this module keeps the parts every CLIP training loop repeats:

* :func:`make_clip_loss` -- open_clip's symmetric InfoNCE ``ClipLoss`` set up for this process, gathering
  features **with gradient** across processes (``accelerator.gather`` carries no gradient and is for metrics);
* :class:`CaptionTokenizer` -- a ``DataLoader`` collate that stacks ``(image, caption)`` pairs and tokenizes the
  captions;
* :func:`make_optimizer` -- AdamW without weight decay on gains, biases, embeddings and the logit scale;
* :func:`cosine_schedule_with_warmup` -- linear warmup then cosine decay (open_clip's ``cosine_lr``);
* :func:`contrastive_step` -- forward pass and loss of one batch; :func:`clamp_logit_scale_` after the update.

Example (single process; under ``accelerate launch`` pass ``accelerator.process_index`` and
``accelerator.num_processes`` to :func:`make_clip_loss` and call ``accelerator.backward(loss)``)::

    >>> model = load_clip("clipclean-tiny").train()
    >>> loader = DataLoader(dataset, batch_size=64, shuffle=True, collate_fn=CaptionTokenizer(model.tokenizer))
    >>> loss_fn = make_clip_loss()
    >>> optimizer = make_optimizer(model, lr=2e-3)
    >>> scheduler = cosine_schedule_with_warmup(optimizer, warmup_steps=50, total_steps=500)
    >>> for images, tokens in loader:
    ...     loss = contrastive_step(model, images, tokens, loss_fn)
    ...     loss.backward(); optimizer.step(); scheduler.step(); optimizer.zero_grad()
    ...     clamp_logit_scale_(model)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import open_clip
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from clipclean.models import unwrap

MAX_LOGIT_SCALE = math.log(100.0)


def make_clip_loss(rank: int = 0, world_size: int = 1) -> open_clip.ClipLoss:
    """open_clip's ``ClipLoss`` for process ``rank`` of ``world_size``.

    Features are all-gathered with gradient (``gather_with_grad=True``) and the loss is computed over the
    global batch (``local_loss=False``), so two processes with batch ``B`` each train exactly like one process
    with batch ``2B``.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, world_size), got rank={rank}, world_size={world_size}")
    return open_clip.ClipLoss(local_loss=False, gather_with_grad=True, rank=rank, world_size=world_size)


class CaptionTokenizer:
    """``collate_fn``: ``[(image (3, H, W), caption), ...] -> (images (B, 3, H, W), tokens (B, context_length))``.

    Args:
        tokenizer: the model's tokenizer (``PixelCLIP.tokenizer``), ``list[str] -> LongTensor``.
    """

    def __init__(self, tokenizer: Callable[[list[str]], torch.Tensor]) -> None:
        self.tokenizer = tokenizer

    def __call__(self, batch: Sequence[tuple[torch.Tensor, str]]) -> tuple[torch.Tensor, torch.Tensor]:
        if len(batch) == 0:
            raise ValueError("cannot collate an empty batch")
        images = torch.stack([image for image, _ in batch])
        return images, self.tokenizer([caption for _, caption in batch])


def make_optimizer(
    model: nn.Module, lr: float, weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.98), eps: float = 1e-6
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters: no weight decay on 1-D tensors (gains, biases) and the logit scale
    (open_clip's rule) nor on the token, positional and class embeddings; ``weight_decay`` on the rest.
    ``betas``/``eps`` are open_clip's defaults for ViTs."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        exclude = parameter.ndim < 2 or "bn" in name or "ln" in name or "bias" in name
        exclude = exclude or "logit_scale" in name or "embedding" in name or "token" in name
        (no_decay if exclude else decay).append(parameter)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters")
    groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def cosine_schedule_with_warmup(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """Linear warmup from ~0 to the base learning rate over ``warmup_steps``, then cosine decay to
    ``min_lr_ratio * lr`` at ``total_steps``. Call ``scheduler.step()`` once per optimisation step."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must lie in [0, total_steps={total_steps}], got {warmup_steps}")
    if not 0 <= min_lr_ratio <= 1:
        raise ValueError(f"min_lr_ratio must lie in [0, 1], got {min_lr_ratio}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def contrastive_step(
    model: nn.Module, images: torch.Tensor, tokens: torch.Tensor, loss_fn: open_clip.ClipLoss
) -> torch.Tensor:
    """The CLIP loss of one batch: ``loss_fn(*model(images, tokens))``. The caller runs the backward pass
    (``accelerator.backward(loss)``) and the optimiser step.

    Args:
        model: a :class:`~clipclean.models.PixelCLIP`, possibly wrapped by DDP/accelerate (its ``forward``
            returns ``(image_features, text_features, logit_scale)``).
        images: ``(B, 3, H, W)`` un-normalised pixels in [0, 1].
        tokens: ``(B, context_length)`` token ids.
        loss_fn: from :func:`make_clip_loss`.

    Returns:
        The scalar loss (mean of the image->text and text->image cross-entropies over the global batch).
    """
    image_features, text_features, logit_scale = model(images, tokens)
    return loss_fn(image_features, text_features, logit_scale)


@torch.no_grad()
def clamp_logit_scale_(model: nn.Module) -> None:
    """Keep the learned temperature in ``[0, ln 100]`` after each update, as open_clip's training does."""
    unwrap(model).model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
