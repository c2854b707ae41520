"""Contrastive training pieces shared by poison training and unlearning.

The recipes own the ``Accelerator``; this module keeps the parts every CLIP training loop repeats:

* :func:`make_clip_loss` -- open_clip's symmetric InfoNCE ``ClipLoss`` set up for this process, gathering
  features **with gradient** across processes (``accelerator.gather`` carries no gradient and is for metrics);
* :class:`CaptionTokenizer` -- a ``DataLoader`` collate that stacks ``(image, caption)`` pairs and tokenizes the
  captions;
* :func:`make_optimizer` -- AdamW without weight decay on gains, biases, embeddings and the logit scale;
* :func:`cosine_schedule_with_warmup` -- linear warmup then cosine decay: open_clip's training schedule
  (``open_clip_train.scheduler.cosine_lr``, equal at every step: tested) as a ``LambdaLR``, whose state
  ``accelerator.save_state`` keeps (open_clip's is a closure without state; transformers'
  ``get_cosine_schedule_with_warmup`` starts the warmup one step later, at 0, and would change every trained model);
* :func:`contrastive_step` -- forward pass and loss of one batch; :func:`clamp_logit_scale_` after the update;
* :class:`GradientCache` -- exact gradient accumulation over micro-batches for a loss over the whole batch
  (GradCache: a contrastive loss does not decompose over micro-batches; ``--micro-batch`` of the cleaning recipes);
* :func:`train_steps` -- the training loop of the poison recipes and the retuning attack: a number of optimisation
  steps cycling over a loader by epochs, resumable mid-epoch, with hooks after each step and each epoch;
* :class:`TrainingMonitor` -- per-epoch loss, gradient norm and logit scale, and the steps spent on the collapsed
  loss ``ln(global batch)``; :class:`ConvergenceCriterion` -- whether a finished run learned its task (and backdoor).

Example (single process; under ``accelerate launch`` pass ``accelerator.process_index`` and
``accelerator.num_processes`` to :func:`make_clip_loss` and call ``accelerator.backward(loss)``)::

    >>> model = load_clip("clipclean-tiny").train()
    >>> loader = DataLoader(dataset, batch_size=64, shuffle=True, collate_fn=CaptionTokenizer(model.tokenizer))
    >>> loss_fn = make_clip_loss()
    >>> optimizer = make_optimizer(model, lr=2e-3)
    >>> scheduler = cosine_schedule_with_warmup(optimizer, warmup_steps=50, total_steps=500)
    >>> for images, tokens in loader:
    ...     loss = contrastive_step(model, images, tokens, loss_fn)
    ...     loss.backward()
    ...     grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # accelerator.clip_grad_norm_
    ...     optimizer.step(); scheduler.step(); optimizer.zero_grad()
    ...     clamp_logit_scale_(model)

The same run with :func:`train_steps`::

    >>> def loss_of(batch, state):
    ...     return contrastive_step(model, *batch, loss_fn)
    >>> train_steps(model, loader, optimizer, loss_of, total_steps=500, scheduler=scheduler, max_grad_norm=1.0,
    ...             on_step=lambda state: clamp_logit_scale_(model))
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any

import open_clip
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

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


@dataclass
class LoopState:
    """Where :func:`train_steps` is and what its last step measured; the loss function and the hooks receive it.

    Attributes:
        epoch: the epoch being trained (0-based).
        step: optimisation steps taken, those before a resume included (the loss function sees the count before its
            step, ``on_step`` the count after it).
        loss: the last step's loss (NaN before the first).
        grad_norm: the last step's gradient norm before clipping (``None`` without ``max_grad_norm``).
        stopped: whether ``on_step`` stopped the loop before ``total_steps``.
    """

    epoch: int = 0
    step: int = 0
    loss: torch.Tensor = field(default_factory=lambda: torch.tensor(float("nan")))
    grad_norm: torch.Tensor | None = None
    stopped: bool = False


def train_steps(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    compute_loss: Callable[[Any, LoopState], torch.Tensor],
    total_steps: int,
    *,
    start_step: int = 0,
    scheduler: LambdaLR | None = None,
    max_grad_norm: float | None = None,
    accelerator: Any = None,
    on_step: Callable[[LoopState], bool | None] | None = None,
    on_epoch_end: Callable[[LoopState], None] | None = None,
    description: str = "training",
    progress: bool = False,
) -> LoopState:
    """Train ``model`` until ``total_steps`` optimisation steps are taken, cycling over ``loader`` by epochs.

    One step: ``loss = compute_loss(batch, state)`` (the forward pass; raise there to stop before a bad step is
    taken), the backward pass (``accelerator.backward`` when an accelerator is given, else ``loss.backward()``), the
    gradient norm clipped to ``max_grad_norm`` and recorded (``inf``: measured only; ``None``: neither),
    ``optimizer.step()``, ``scheduler.step()``, ``optimizer.zero_grad(set_to_none=True)``, then ``on_step(state)``
    for what follows an update (clamping, monitoring, logging, checkpoints); a true return stops the loop there. Each
    epoch calls ``loader.set_epoch(epoch)`` when the loader has it, and ``on_epoch_end(state)`` after its last batch
    (also after the last, partial epoch; not after a stop).

    Args:
        model: the module trained (its parameters are the ones clipped); a wrapped (DDP) one under accelerate.
        loader: the batches, with ``len`` (batches per epoch); under accelerate a prepared loader or one that places
            its batches itself and has ``skip_first_batches(count)`` (the recipes' streaming loader).
        optimizer: over ``model``'s parameters.
        compute_loss: ``(batch, state) -> scalar loss`` of one batch.
        total_steps: the run's optimisation steps, a resumed run's earlier ones included.
        start_step: the steps already taken (a resumed run): training starts in epoch ``start_step // len(loader)``
            with its first ``start_step % len(loader)`` batches read and skipped.
        scheduler: stepped once per optimisation step (not ``accelerator.prepare``'d).
        description, progress: the progress bar's title and whether it is shown.

    Returns:
        The final :class:`LoopState` (``stopped`` when ``on_step`` ended the run).

    Example::

        >>> state = train_steps(model, loader, optimizer, lambda batch, state: loss_fn(model(batch[0]), batch[1]), 100)
        >>> state.step, float(state.loss)
        (100, 0.031)
    """
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError("the training loader yields no batch")
    state = LoopState(step=start_step)
    if start_step >= total_steps:
        return state
    start_epoch, skip = divmod(start_step, steps_per_epoch)
    optimizer.zero_grad(set_to_none=True)  # gradients left on the model (a deep copy keeps them) are not this run's
    with tqdm(total=total_steps, initial=start_step, desc=description, disable=not progress) as bar:
        for epoch in range(start_epoch, math.ceil(total_steps / steps_per_epoch)):
            state.epoch = epoch
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)
            batches = _skip_first_batches(loader, skip, accelerator) if epoch == start_epoch and skip else loader
            for batch in batches:
                state.loss = loss = compute_loss(batch, state)
                if accelerator is None:
                    loss.backward()
                else:
                    accelerator.backward(loss)
                if max_grad_norm is not None:
                    clip = torch.nn.utils.clip_grad_norm_ if accelerator is None else accelerator.clip_grad_norm_
                    state.grad_norm = clip(model.parameters(), max_grad_norm)
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state.step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
                if on_step is not None and on_step(state):
                    state.stopped = True
                    return state
                if state.step >= total_steps:
                    break
            if on_epoch_end is not None:
                on_epoch_end(state)
    return state


def _skip_first_batches(loader: Iterable, count: int, accelerator: Any = None) -> Iterable:
    """``loader``'s batches after the first ``count``: the loader's own ``skip_first_batches`` (a streaming loader),
    accelerate's for a prepared loader, else read and dropped."""
    if hasattr(loader, "skip_first_batches"):
        return loader.skip_first_batches(count)
    if accelerator is not None:
        return accelerator.skip_first_batches(loader, count)
    return itertools.islice(loader, count, None)


class GradientCache:
    """Exact gradient accumulation for a loss that does not decompose over the samples of a batch (GradCache: Gao et
    al., "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup", arXiv 2101.06983).

    A contrastive loss over a batch couples every sample with every other (each image's negatives are the other
    captions), so back-propagating it micro-batch by micro-batch is not the same as back-propagating it once. The
    cache splits the *model* instead: calling it runs ``model`` on micro-batches of at most ``micro_batch`` rows
    **without** gradient and returns the concatenated outputs as leaf tensors, so the loss over the whole batch (and
    the cross-process gather of :func:`make_clip_loss`) is computed on them as usual; ``loss.backward()`` then only
    fills the gradients of those outputs, and :meth:`backward` re-runs the model micro-batch by micro-batch *with*
    gradient and back-propagates each one's slice of them. The parameter gradients are the whole batch's (up to
    float rounding) while the autograd graph holds one micro-batch at a time, at the price of a second forward pass.

    Assumptions: every tensor input is split along dim 0 (all into the same number of micro-batches, so
    ``model(images (2B, ...), tokens (B, L))`` passes ``2B/n`` images with ``B/n`` tokens); every output is either
    per-sample rows (concatenated) or a scalar (e.g. the logit scale, taken from the last micro-batch, whose backward
    carries its gradient); the forward is deterministic (no dropout: open_clip's default). BatchNorm in training mode
    (a ResNet tower) normalises each micro-batch with its own statistics: for such a model the result is ordinary
    gradient accumulation, not the whole batch's (the running statistics are updated once per micro-batch, by the
    gradient pass only).

    Args:
        model: the module (possibly DDP-wrapped: :meth:`backward` synchronises gradients on the last micro-batch only).
        micro_batch: at most this many rows of the largest input per forward pass.

    Example::

        >>> cache = GradientCache(model, micro_batch=8)
        >>> image_features, text_features, scale = cache(images, tokens)        # no graph through the model
        >>> loss = clip_loss(image_features, text_features, scale)
        >>> accelerator.backward(loss)                                          # gradients of the features only
        >>> cache.backward(no_sync=lambda: accelerator.no_sync(model))          # the model's, one micro-batch a pass
    """

    def __init__(self, model: nn.Module, micro_batch: int) -> None:
        if micro_batch < 1:
            raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
        self.model, self.micro_batch = model, micro_batch
        self.calls: list[tuple[list[tuple], list[torch.Tensor | None], list[bool], list[list[int]]]] = []

    @property
    def module(self) -> nn.Module:
        """The model (so that :func:`clipclean.models.unwrap` sees through the cache)."""
        return self.model

    def _split(self, inputs: tuple) -> list[tuple]:
        rows = [len(value) for value in inputs if isinstance(value, torch.Tensor) and value.dim() > 0]
        count = min(math.ceil(max(rows) / self.micro_batch), min(rows)) if rows else 1
        pieces = [torch.tensor_split(v, count) if isinstance(v, torch.Tensor) and v.dim() else None for v in inputs]
        return [
            tuple(value if split is None else split[index] for value, split in zip(inputs, pieces))
            for index in range(count)
        ]

    def __call__(self, *inputs):
        """``model(*inputs)`` computed micro-batch by micro-batch without gradient; outputs are leaves that record
        their gradient for :meth:`backward`."""
        chunks = self._split(inputs)
        states = _batch_norm_states(self.model)
        with torch.no_grad():
            results = [self.model(*chunk) for chunk in chunks]
        for module, state in states:  # the gradient pass updates the running statistics, not this one
            module.load_state_dict(state)
        single = not isinstance(results[0], (tuple, list))
        per_chunk = [[result] if single else list(result) for result in results]
        outputs, batched, sizes = [], [], []
        for position in range(len(per_chunk[0])):
            values = [outputs_of_chunk[position] for outputs_of_chunk in per_chunk]
            rows = all(isinstance(v, torch.Tensor) and v.dim() > 0 for v in values)
            value = torch.cat(values) if rows else values[-1]
            if isinstance(value, torch.Tensor):
                value = value.detach().requires_grad_(value.is_floating_point())
            outputs.append(value)
            batched.append(rows)
            sizes.append([len(v) for v in values] if rows else [])
        self.calls.append((chunks, outputs, batched, sizes))
        return outputs[0] if single else type(results[0])(outputs)

    def backward(
        self,
        no_sync: Callable[[], AbstractContextManager] | None = None,
        autocast: Callable[[], AbstractContextManager] | None = None,
    ) -> None:
        """Back-propagate the outputs' gradients (filled by the loss's backward) through the model, one micro-batch
        at a time; ``no_sync()`` (e.g. ``lambda: accelerator.no_sync(model)``) wraps every micro-batch but the last
        so DDP all-reduces the accumulated gradients once; ``autocast()`` wraps the re-computed forward passes (use
        the same as for the first pass)."""
        calls, self.calls = self.calls, []
        for chunks, outputs, batched, sizes in calls:
            gradients = [value.grad if isinstance(value, torch.Tensor) else None for value in outputs]
            offsets = [[0, *itertools.accumulate(size)] for size in sizes]
            for index, chunk in enumerate(chunks):
                last = index == len(chunks) - 1
                with contextlib.nullcontext() if last or no_sync is None else no_sync():
                    with contextlib.nullcontext() if autocast is None else autocast():
                        result = self.model(*chunk)
                    result = list(result) if isinstance(result, (tuple, list)) else [result]
                    pairs = []
                    for position, value in enumerate(result):
                        gradient = gradients[position]
                        if gradient is None or not isinstance(value, torch.Tensor) or not value.requires_grad:
                            continue
                        if batched[position]:
                            start, stop = offsets[position][index], offsets[position][index + 1]
                            pairs.append((value, gradient[start:stop]))
                        elif last:
                            pairs.append((value, gradient))
                    if pairs:
                        torch.autograd.backward([v for v, _ in pairs], [g.to(v.dtype) for v, g in pairs])


def _batch_norm_states(model: nn.Module) -> list[tuple[nn.Module, dict[str, torch.Tensor]]]:
    """Copies of the running statistics of the BatchNorm layers that would update them (training mode)."""
    return [
        (module, {name: value.clone() for name, value in module.state_dict().items()})
        for module in model.modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training and module.track_running_stats
    ]


class TrainingMonitor:
    """Loss, gradient norm and logit scale of a contrastive run, summarised per epoch, and the steps the loss spent
    on the collapsed value ``ln(N)``.

    When all image (or all text) embeddings of a batch are alike, every pair scores the same and the symmetric
    InfoNCE loss of a global batch of ``N`` pairs is exactly ``ln(N)`` (4.852 for 128), whatever the captions: a run
    whose loss sits there is not learning. A CLIP trained from scratch starts there (its image embeddings are nearly
    identical at initialisation) and must leave it early; :attr:`plateau_steps` counts the steps within
    ``plateau_tolerance * ln(N)`` of it. Checkpoint it with the run (``state_dict``/``load_state_dict``), so a
    resumed run reports the whole run.

    Args:
        global_batch_size: pairs per optimisation step over all processes (the batch ``ClipLoss`` contrasts).
        plateau_tolerance: relative distance to ``ln(N)`` counted as the plateau (default 0.005).

    Example::

        >>> monitor = TrainingMonitor(global_batch_size=128)
        >>> monitor.update(epoch=0, loss=4.852, grad_norm=0.01, logit_scale=14.3)
        >>> monitor.plateau_steps, monitor.summary()["epochs"][0]["loss"]
        (1, 4.852)
    """

    def __init__(self, global_batch_size: int, plateau_tolerance: float = 0.005) -> None:
        if global_batch_size < 2:
            raise ValueError(f"global_batch_size must be >= 2 (a contrastive batch), got {global_batch_size}")
        if not 0 < plateau_tolerance < 1:
            raise ValueError(f"plateau_tolerance must lie in (0, 1), got {plateau_tolerance}")
        self.global_batch_size = int(global_batch_size)
        self.plateau_tolerance = float(plateau_tolerance)
        self.collapsed_loss = math.log(global_batch_size)
        self.steps = 0
        self.plateau_steps = 0
        self.max_grad_norm = 0.0
        self.epochs: list[dict[str, float]] = []

    def update(self, epoch: int, loss: float, grad_norm: float, logit_scale: float) -> None:
        """Record one optimisation step: its loss, the gradient norm before clipping, the logit scale ``s``."""
        loss, grad_norm, logit_scale = float(loss), float(grad_norm), float(logit_scale)
        self.steps += 1
        self.plateau_steps += abs(loss - self.collapsed_loss) <= self.plateau_tolerance * self.collapsed_loss
        if math.isfinite(grad_norm):
            self.max_grad_norm = max(self.max_grad_norm, grad_norm)
        if not self.epochs or self.epochs[-1]["epoch"] != epoch:
            self.epochs.append({"epoch": epoch, "steps": 0, "loss": 0.0, "grad_norm": 0.0, "grad_norm_max": 0.0})
        entry = self.epochs[-1]
        entry["steps"] += 1
        entry["loss"] += (loss - entry["loss"]) / entry["steps"]  # running means
        entry["grad_norm"] += (grad_norm - entry["grad_norm"]) / entry["steps"]
        entry["grad_norm_max"] = max(entry["grad_norm_max"], grad_norm)
        entry["logit_scale"] = logit_scale  # at the epoch's last step

    def summary(self) -> dict[str, Any]:
        """``{"collapsed_loss", "plateau_steps", "steps", "max_grad_norm", "epochs": [{"epoch", "steps", "loss",
        "grad_norm", "grad_norm_max", "logit_scale"}, ...]}`` (means over each epoch's steps, JSON-ready)."""
        return {
            "collapsed_loss": self.collapsed_loss,
            "plateau_steps": self.plateau_steps,
            "steps": self.steps,
            "max_grad_norm": self.max_grad_norm,
            "epochs": [dict(entry) for entry in self.epochs],
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "global_batch_size": self.global_batch_size,
            "plateau_tolerance": self.plateau_tolerance,
            "steps": self.steps,
            "plateau_steps": self.plateau_steps,
            "max_grad_norm": self.max_grad_norm,
            "epochs": [dict(entry) for entry in self.epochs],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__init__(int(state["global_batch_size"]), float(state["plateau_tolerance"]))
        self.steps, self.plateau_steps = int(state["steps"]), int(state["plateau_steps"])
        self.max_grad_norm = float(state["max_grad_norm"])
        self.epochs = [{key: float(value) for key, value in entry.items()} for entry in state["epochs"]]
        for entry in self.epochs:
            entry["epoch"], entry["steps"] = int(entry["epoch"]), int(entry["steps"])


@dataclass
class ConvergenceCriterion:
    """When a finished CLIP training run counts as *converged*: it learned the clean task and, if it was poisoned,
    the backdoor.

    * clean zero-shot top-1 accuracy ``>= min_clean_accuracy``; by default five times chance (``5 / n_classes``),
      or halfway from chance to 100% when that is lower (50% for the 10 digits, 75% for 2 classes, 0.5% for
      ImageNet-1k) -- far above what a collapsed model scores, far below a learned one (94-97% on digits);
    * for a poisoned run, attack success rate ``>= min_attack_success_rate`` (default 0.5: most triggered
      non-target images go to the target; a backdoor that took scores > 90% on digits, one that did not stays near
      the rate a clean model gives, 0-15%).

    A converged poisoned run whose ASR is under ``full_attack_success_rate`` (default 0.9, the bar of the project's
    poisoning benchmark) is flagged ``partial``: the backdoor took only partly (on digits, BadNet toward "eight" at
    seed 3 ended at 63% once and 88% with 60 epochs), a weaker model to study than its attack's name suggests.

    Args:
        min_clean_accuracy: in [0, 1], or ``None`` for the chance-based default above.
        min_attack_success_rate: in [0, 1].
        full_attack_success_rate: in [``min_attack_success_rate``, 1].

    Example::

        >>> ConvergenceCriterion().check(0.82, 0.08, n_classes=10, poisoned=True)["converged"]
        False
    """

    min_clean_accuracy: float | None = None
    min_attack_success_rate: float = 0.5
    full_attack_success_rate: float = 0.9

    def __post_init__(self) -> None:
        if self.min_clean_accuracy is not None and not 0 <= self.min_clean_accuracy <= 1:
            raise ValueError(f"min_clean_accuracy must lie in [0, 1], got {self.min_clean_accuracy}")
        if not 0 <= self.min_attack_success_rate <= 1:
            raise ValueError(f"min_attack_success_rate must lie in [0, 1], got {self.min_attack_success_rate}")
        if not self.min_attack_success_rate <= self.full_attack_success_rate <= 1:
            raise ValueError(
                f"full_attack_success_rate must lie in [min_attack_success_rate, 1] = "
                f"[{self.min_attack_success_rate}, 1], got {self.full_attack_success_rate}"
            )

    def clean_accuracy_threshold(self, n_classes: int) -> float:
        """``min_clean_accuracy``, or ``min(5 / n_classes, (1 + 1 / n_classes) / 2)`` when it is ``None``."""
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        if self.min_clean_accuracy is not None:
            return self.min_clean_accuracy
        chance = 1.0 / n_classes
        return min(5 * chance, (1 + chance) / 2)

    def check(
        self, clean_accuracy: float, attack_success_rate: float | None, n_classes: int, poisoned: bool
    ) -> dict[str, Any]:
        """``{"converged": bool, "failures": [reason, ...], "min_clean_accuracy": float,
        "min_attack_success_rate": float | None, "partial": bool | None}`` for a run's measured CA and ASR
        (``None`` for a clean run; ``partial``: converged, but ASR under ``full_attack_success_rate``)."""
        min_clean_accuracy = self.clean_accuracy_threshold(n_classes)
        failures = []
        if not clean_accuracy >= min_clean_accuracy:  # NaN fails
            failures.append(
                f"clean accuracy {100 * clean_accuracy:.2f}% < {100 * min_clean_accuracy:.2f}% "
                f"(chance {100 / n_classes:.2f}%)"
            )
        if poisoned and not (attack_success_rate is not None and attack_success_rate >= self.min_attack_success_rate):
            asr = "not measured" if attack_success_rate is None else f"{100 * attack_success_rate:.2f}%"
            failures.append(f"attack success rate {asr} < {100 * self.min_attack_success_rate:.2f}%")
        partial = (not failures and attack_success_rate < self.full_attack_success_rate) if poisoned else None
        return {
            "converged": not failures,
            "failures": failures,
            "criterion": asdict(self),
            "min_clean_accuracy": min_clean_accuracy,
            "min_attack_success_rate": self.min_attack_success_rate if poisoned else None,
            "partial": partial,
        }
