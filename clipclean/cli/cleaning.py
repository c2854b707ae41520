"""The cleaning loop shared by the jobs :mod:`clipclean.cli.clean_clip` and :mod:`clipclean.cli.clean_classifier`.

A defense (:class:`~clipclean.defenses.base.Defense`) is step-level; this module owns the loop. Both recipes run
the same one: for each round ``begin_round`` (inversion, editing...), ``epochs`` passes of ``forward`` /
``accelerator.backward`` / optimiser step, ``end_round``, ``accelerator.save_state``; resumable with
``--resume_from_checkpoint``. This module keeps that loop, its checkpointed state and the output pieces the
two recipes share (evaluation before/after, the inverted-trigger folder, the results summary), and the whole job
around them: :func:`run_cleaning` takes a :class:`CleaningJob` that holds only what differs between the two
(model and data loading, the collate function, the step hook, the outputs writer, the complete-unlearning tests).

Example (inside a recipe, after ``accelerator``, ``model``, ``defense`` and the loader exist)::

    >>> session = CleaningSession.prepare(accelerator, model, defense, train_loader, args)
    >>> session.run(after_step=clamp_logit_scale_)
    >>> session.state.rounds_done
    3
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import resource
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from clipclean.cli.common import RunCheckpoints, negative_verdict_notes, print_table, stop_if_diverged
from clipclean.errors import ClipcleanError
from clipclean.evaluation import evaluate_zeroshot, resolve_target
from clipclean.fileio import write_json
from clipclean.timing import PhaseTimer
from clipclean.triggers import Trigger, draw_trigger, load_trigger, read_trigger_metadata, save_trigger

logger = logging.getLogger(__name__)

CLEANED_FOLDER = "cleaned"
INVERSION_FOLDER = "inversion"
INVERSION_REPORT_KEYS = (
    "verdict",
    "recovered_target",
    "target_candidates",
    "backdoor_score",
    "anomaly_index",
    "verdict_statistic",
    "verdict_threshold",
    "concentration",
    "hijacked_fraction",
    "candidate_asr",
    "search_trigger_asr",
    "lift_handicap",
    "confirmed_lifts",
    "named_by",
    "untargeted_winner",
    "mask_budget",
    "trigger",
)


def prepare_demo(args: argparse.Namespace, poison_main: Callable[[list[str]], Any], description: str) -> None:
    """A cleaning job's embedded demo: train (once, cached under ``args.demo_cache``) a model backdoored on digits
    with a BadNet patch toward "zero" by running ``poison_main`` (a poisoning job's ``main``, e.g.
    :func:`clipclean.cli.poison_clip.main`), then point ``args`` at it (``--model``, the true trigger) and at the
    digits defender/test splits (unless given)."""
    from clipclean.cli.smoke import smoke_cache

    cache = smoke_cache(args.demo_cache)  # a smoke run's model is never reused by a full-size demo
    if not (cache / "results.json").is_file():
        logger.info("demo: training %s on digits into %s (once)", description, cache)
        # --overwrite: the cache is the demo's own; a run interrupted before it finished left only part of it
        flags = ["--attack", "badnet", "--seed", str(args.seed), "--overwrite"]
        flags += [] if args.progress else ["--no-progress"]  # the demo's longest phase shows its progress bar
        flags += ["--keep-checkpoints"] if args.keep_checkpoints else []
        poison_main([*flags, "--output-dir", str(cache)])
    args.model = str(cache / "model")
    args.clean_data = args.clean_data or "digits:defender"
    args.eval_data = args.eval_data or "digits:test"
    args.eval_trigger = args.eval_trigger or str(cache / "trigger.json")


class RecipeState:
    """Rounds completed and the defense's state, checkpointed by :class:`~clipclean.cli.common.RunCheckpoints`."""

    def __init__(self, defense) -> None:
        self.defense = defense
        self.rounds_done = 0
        self.reports: list[dict] = []

    def state_dict(self) -> dict:
        return {
            "rounds_done": self.rounds_done,
            "reports": json.dumps(self.reports),
            "defense": self.defense.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.rounds_done = int(state["rounds_done"])
        self.reports = json.loads(state["reports"])
        self.defense.load_state_dict(state["defense"])


def make_defense(args, accelerator, model, candidate_names, candidate_embeddings):
    """The ``--defense`` of a recipe, with its config defaults updated by ``--rounds/--epochs/--lr/--set``, in a
    context holding the candidates, a frozen reference copy of ``model`` and the accelerator's reductions.

    Returns ``(defense, reference)``.
    """
    from clipclean.cli.common import parse_key_values
    from clipclean.cli.smoke import smoke_overrides
    from clipclean.defenses import DEFENSES, DefenseContext, build_defense

    reference = model.fresh_copy().requires_grad_(False).eval()
    context = DefenseContext(
        candidate_names=candidate_names,
        candidate_embeddings=candidate_embeddings,
        target_caption=args.target_caption,
        reference=reference,
        reduce_fn=lambda tensor, op: accelerator.reduce(tensor, reduction=op),
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
        progress=args.progress and accelerator.is_main_process,
    )
    overrides = {"rounds": args.rounds, "epochs": args.epochs, "lr": args.lr, **parse_key_values(args.defense_options)}
    if args.micro_batch is not None and "inversion" in DEFENSES[args.defense][0].field_names():
        # the trigger search's micro-batches; the unlearning steps' are the CleaningSession's (unlearning_step)
        overrides["inversion"] = {"micro_batch": args.micro_batch, **overrides.get("inversion", {})}
    overrides = smoke_overrides(DEFENSES[args.defense][0], overrides)  # CLIPCLEAN_SMOKE: tiny run lengths
    return build_defense(args.defense, model, context, overrides), reference


@dataclass
class CleaningSession:
    """A prepared cleaning run: the DDP-wrapped model, optimiser, loader and checkpointed state.

    Build it with :meth:`prepare`, then :meth:`run` the rounds.
    """

    accelerator: Any
    defense: Any
    wrapped: torch.nn.Module
    optimizer: torch.optim.Optimizer
    train_loader: Any
    state: RecipeState
    checkpoints: RunCheckpoints
    progress: bool = False
    report_to: str | None = None
    stopped_early: bool = False
    timer: PhaseTimer = field(default_factory=PhaseTimer)  # begin_round / steps / end_round / checkpoint seconds
    micro_batch: int | None = None  # --micro-batch: images per forward/backward pass of the unlearning steps

    @classmethod
    def prepare(cls, accelerator, model: torch.nn.Module, defense, train_loader, args, tracker: str = "clean"):
        """Freeze all but the defense's trainable parameters, build AdamW, ``accelerator.prepare`` everything,
        register the state for checkpointing, resume from ``args.resume_from_checkpoint`` (a folder or
        ``"latest"`` under ``args.output_dir``) and start the ``--report_to`` trackers under ``tracker``."""
        trainable = {id(p) for p in defense.trainable_parameters()}
        for parameter in model.parameters():
            parameter.requires_grad_(id(parameter) in trainable)
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad],
            lr=defense.config.lr,
            weight_decay=defense.config.weight_decay,
        )
        model.train()
        wrapped, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
        state = RecipeState(defense)
        checkpoints = RunCheckpoints(accelerator, args.output_dir, recipe=state)
        resume_path = checkpoints.resume(args.resume_from_checkpoint)
        if resume_path is not None:
            logger.info("resumed from %s after %d round(s)", resume_path, state.rounds_done)
        if args.report_to:
            accelerator.init_trackers(tracker, config={k: v for k, v in vars(args).items() if v is not None})
        return cls(
            accelerator, defense, wrapped, optimizer, train_loader, state, checkpoints, args.progress, args.report_to,
            micro_batch=getattr(args, "micro_batch", None),
        )  # fmt: skip

    def _stop_if_diverged(self, loss: torch.Tensor, round_index: int, epoch: int) -> None:
        """Stop before a NaN or infinite loss (on any process) reaches the weights: the step is not taken and no
        checkpoint is written, so the last one is the last good state (:func:`~clipclean.cli.common.stop_if_diverged`).
        """
        saved = (
            "the last good state is the newest checkpoint in OUTPUT_DIR/checkpoints (continue from it with "
            "--resume_from_checkpoint latest)"
            if self.state.rounds_done > 0
            else "no checkpoint was written yet"
        )
        advice = f"lower --lr (now {self.defense.config.lr}) or check the data; {saved}"
        stop_if_diverged(
            self.accelerator, loss, f"in {self.defense.name} round {round_index + 1}, epoch {epoch + 1}", advice
        )

    def run(self, after_step: Callable[[torch.nn.Module], None] | None = None) -> None:
        """The remaining rounds; ``after_step(wrapped_model)`` runs after every optimiser step (e.g. clamping a
        CLIP's logit scale). Saves the state after each round."""
        accelerator, defense, loader, state = self.accelerator, self.defense, self.train_loader, self.state
        config = defense.config
        step = state.rounds_done * config.epochs * len(loader)
        timer = self.timer
        for round_index in range(state.rounds_done, config.rounds):
            with timer("begin_round"):
                report = defense.begin_round(round_index, loader)
            if report.get("stop"):  # the defense decided there is nothing to remove
                logger.info("%s: nothing to remove, model left unchanged", defense.name)
                state.rounds_done = round_index
                break
            bar = tqdm(
                total=config.epochs * len(loader),
                desc=f"{defense.name} round {round_index + 1}/{config.rounds}",
                disable=not (self.progress and accelerator.is_main_process),
            )
            for epoch in range(config.epochs):
                loader.set_epoch(round_index * config.epochs + epoch)
                for batch in loader:
                    with timer("unlearning_steps"):
                        check = functools.partial(self._stop_if_diverged, round_index=round_index, epoch=epoch)
                        losses = unlearning_step(accelerator, self.wrapped, defense, batch, self.micro_batch, check)
                        self.optimizer.step()
                        self.optimizer.zero_grad(set_to_none=True)
                        if after_step is not None:
                            after_step(self.wrapped)
                    step += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses['loss'].item():.3f}")
                    if self.report_to:
                        accelerator.log({f"train/{k}": float(v) for k, v in losses.items()}, step=step)
            bar.close()
            with timer("end_round"):
                stop, end_report = defense.end_round(round_index, loader)
            state.reports.append(
                {"round": round_index, **end_report, **{k: v for k, v in report.items() if k != "inversion"}}
            )
            state.rounds_done = round_index + 1
            with timer("checkpoint"):
                self.checkpoints.save()
            if stop:
                self.stopped_early = round_index + 1 < config.rounds
                break


def unlearning_step(
    accelerator,
    wrapped: torch.nn.Module,
    defense,
    batch,
    micro_batch: int | None = None,
    before_backward: Callable[[torch.Tensor], None] | None = None,
) -> dict[str, torch.Tensor]:
    """One optimisation step's forward and backward of ``defense`` on ``batch`` (the optimiser step is the caller's);
    returns the loss terms. ``before_backward(loss)`` runs between the two (e.g. stop on a NaN loss).

    With ``micro_batch``, the model sees at most that many images per forward/backward pass
    (:class:`~clipclean.training.GradientCache`: the loss over the whole batch, the contrastive terms included, is
    computed on embeddings made without gradient, then the model is back-propagated micro-batch by micro-batch):
    the same gradients as one pass for a ViT (ordinary gradient accumulation for BatchNorm towers), one graph of
    ``micro_batch`` images in memory, one extra forward pass per step.
    """
    from clipclean.training import GradientCache

    cache = GradientCache(wrapped, micro_batch) if micro_batch else None
    with accelerator.autocast():
        losses, _ = defense.forward(wrapped if cache is None else cache, batch)
    if before_backward is not None:
        before_backward(losses["loss"])
    accelerator.backward(losses["loss"])
    if cache is not None:
        cache.backward(no_sync=lambda: accelerator.no_sync(wrapped), autocast=accelerator.autocast)
    return losses


def weights_unchanged(model: torch.nn.Module, reference: torch.nn.Module) -> bool:
    """Whether ``model`` (possibly wrapped) holds bit for bit the weights of ``reference``, its copy from before the
    cleaning loop."""
    from clipclean.models import PixelModel, unwrap

    current, before = unwrap(model, PixelModel).state_dict(), unwrap(reference, PixelModel).state_dict()
    return current.keys() == before.keys() and all(
        torch.equal(current[key], before[key].to(current[key].device)) for key in current
    )


def check_model_changed(session: CleaningSession, reference: torch.nn.Module) -> bool:
    """After the loop: whether the weights are unchanged, which is honest only when no round ran (the defense found
    nothing to remove; the model card then says so). Unchanged weights after a round raise
    :class:`~clipclean.errors.ClipcleanError` before anything is written: never a "cleaned" card on the input model.
    """
    unchanged = weights_unchanged(session.wrapped, reference)
    if unchanged and session.state.rounds_done > 0:
        config = session.defense.config
        raise ClipcleanError(
            f"{session.defense.name} ran {session.state.rounds_done} round(s) but the weights are bit-identical to "
            f"the input model (epochs {config.epochs}, lr {config.lr}): nothing written; give --epochs >= 1 and a "
            "larger --lr"
        )
    return unchanged


def phase_wall_times(recipe: PhaseTimer, session: CleaningSession) -> dict[str, float]:
    """The ``phase_wall_time_s`` block of ``results.json`` (seconds, main process): the recipe's phases (``load``,
    ``evaluate_before``, ``cleaning``, ``evaluate_after``, ``complete_eval``), the cleaning loop's
    (``cleaning/begin_round``, ``cleaning/unlearning_steps``, ``cleaning/end_round``, ``cleaning/checkpoint``) and the
    defense's own (``defense/inversion``, ``defense/verdict``... inside ``cleaning/begin_round`` and ``end_round``)."""
    return {
        **recipe.rounded(),
        **{f"cleaning/{phase}": seconds for phase, seconds in session.timer.rounded().items()},
        **{f"defense/{phase}": seconds for phase, seconds in session.defense.timer.rounded().items()},
    }


def prepare_cleaning_output(args: argparse.Namespace) -> None:
    """:func:`~clipclean.cli.common.prepare_output_dir` for a cleaning recipe, before any work: its previous results
    are ``results.json``, ``inversion/``, ``checkpoints/`` and the ``cleaned/`` model folder."""
    from clipclean.cli.common import CHECKPOINTS_FOLDER, RESULTS_FILENAME, prepare_output_dir

    prepare_output_dir(
        args.output_dir,
        overwrite=args.overwrite,
        resume=args.resume_from_checkpoint,
        results=(RESULTS_FILENAME, CHECKPOINTS_FOLDER, INVERSION_FOLDER),
        model_folders=(CLEANED_FOLDER,),
    )


def load_eval_trigger(
    path: str | None, target: str | None, eval_data, device, image_size: tuple[int, int] | None = None
) -> tuple[Trigger | None, str | None]:
    """The true trigger (``--eval-trigger``) and its target class (``--eval-target``, else the file's metadata),
    checked against the evaluation classes and, given ``image_size``, the model's input size (triggers act on the
    images the model takes); ``(None, None)`` without a trigger. Raises ``SystemExit``/``ValueError`` on bad input.
    """
    if path is None:
        return None, None
    trigger = load_trigger(path).to(device)
    if image_size is not None and tuple(trigger.image_size) != tuple(image_size):
        raise ValueError(
            f"--eval-trigger {path} is defined on {tuple(trigger.image_size)} images but the model takes "
            f"{tuple(image_size)}: use a trigger made for this model's input size"
        )
    target = target or read_trigger_metadata(path).get("metadata", {}).get("target")
    if target is None:
        raise SystemExit(f"{path} records no target: give --eval-target")
    if eval_data is None:
        raise SystemExit("--eval-trigger needs --eval-data to measure the ASR on")
    resolve_target(target, eval_data.classnames)
    return trigger, target


def evaluate_phase(
    model, loader, classnames, classifier, trigger, target, accelerator, templates=None, seed=0, progress=False
):
    """``{"clean_accuracy", "attack_success_rate", "eval"}`` with clipclean's protocol (one phase: before/after);
    ``progress`` shows a progress bar on the main process."""
    metrics = evaluate_zeroshot(
        model,
        loader,
        classnames,
        templates=templates,
        trigger=trigger,
        target=target,
        seed=seed,
        classifier=classifier,
        gather=accelerator.gather_for_metrics,
        progress=progress and accelerator.is_main_process,
    )
    return {"clean_accuracy": metrics["top1"], "attack_success_rate": metrics["asr_top1"], "eval": metrics}


def inverted_trigger_asr(defense, summary: dict, evaluate: Callable, models: dict, classnames: Sequence[str]):
    """ASR of the defense's inverted trigger toward the recovered target, per phase (``models``: phase -> model);
    ``None`` when the defense inverted nothing or named no evaluation class. ``evaluate(model, trigger, target)``
    returns a phase dict of :func:`evaluate_phase`."""
    inverted = defense.trigger_for_report()
    inversion = summary.get("inversion")
    recovered = inversion.get("recovered_target") if inversion else None
    if inverted is None or recovered not in classnames:
        return None
    rates = {phase: evaluate(model, inverted, recovered)["attack_success_rate"] for phase, model in models.items()}
    return {**rates, "target": recovered}


def inversion_report(summary: dict) -> dict | None:
    """The ``inversion`` block of ``results.json`` from a defense's summary."""
    inversion = summary.get("inversion")
    return None if inversion is None else {key: inversion.get(key) for key in INVERSION_REPORT_KEYS}


def peak_memory_mb(accelerator) -> float:
    """Peak resident memory of this process (and peak GPU memory when on a GPU), in MiB."""
    if accelerator.device.type == "cuda":
        return torch.cuda.max_memory_allocated(accelerator.device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def trigger_identical_across_ranks(accelerator, trigger) -> bool | None:
    """Whether every process holds bit-identical trigger parameters (they are all-reduced, so they must)."""
    if trigger is None:
        return None
    flat = torch.cat([p.detach().reshape(-1).double() for p in trigger.parameters()]).to(accelerator.device)
    gathered = accelerator.gather(flat[None])
    return bool((gathered == gathered[0:1]).all())


def write_inversion_folder(output: Path, defense, method: str, recovered_target: str | None, dataset, device) -> None:
    """``inversion/``: the defense's inverted trigger (``trigger.json`` + ``.safetensors``), ``trigger.png`` drawn
    on four images of ``dataset`` and the defense's ``report.json``. Call on the main process only."""
    inverted = defense.trigger_for_report()
    if inverted is None:
        return
    folder = Path(output) / "inversion"
    save_trigger(inverted, folder / "trigger", metadata={"source": f"{method} inversion", "target": recovered_target})
    examples = torch.stack([dataset[i][0] for i in range(min(4, len(dataset)))]).to(device)
    title = f"inverted trigger ({method})"
    draw_trigger(inverted, folder / "trigger.png", images=examples, title=title, target=recovered_target)
    write_json(folder / "report.json", defense.summary())


def card_metrics(results: dict) -> dict:
    """Before/after clean accuracy and ASR for a model card."""
    return {
        phase: {key: results[phase][key] for key in ("clean_accuracy", "attack_success_rate")}
        for phase in ("before", "after")
        if results[phase] is not None
    }


def print_summary(accelerator, results: dict, templates: str | None = None) -> None:
    """The before/after table, the verdict line and, given ``templates`` (the zero-shot template set the clean
    accuracy was measured with), the template set and why ``eval/zeroshot_imagenet.py`` may differ (main process
    only)."""
    if not accelerator.is_main_process:
        return

    def percent(value):
        return "n/a" if value is None else f"{100 * value:.1f}%"

    rows = [
        (phase, percent(results[phase]["clean_accuracy"]), percent(results[phase]["attack_success_rate"]))
        for phase in ("before", "after")
        if results[phase] is not None
    ]
    if rows:
        print_table(rows, ("model", "clean accuracy", "attack success rate"))
        if templates is not None:
            print(templates_note(templates))
    inversion = results["inversion"]
    if inversion:
        line = f"verdict: {inversion['verdict']}  recovered target: {inversion['recovered_target']}"
        if inversion.get("anomaly_index") is not None:
            statistic = inversion.get("verdict_statistic") or "anomaly index"
            line += f"  {statistic}: {inversion['anomaly_index']:.2f} (threshold {inversion.get('verdict_threshold')})"
        print(line)
        for note in negative_verdict_notes(inversion):
            print(note)


def templates_note(templates: str) -> str:
    """The line under a recipe's accuracy table that names its zero-shot template set: the recipes take the digit
    caption templates for the built-in digits, ``eval/zeroshot_imagenet.py`` the 80 OpenAI ImageNet templates, so
    the same model's clean accuracy differs slightly between the two (docs/evaluation.md, "Template sets")."""
    note = f"zero-shot templates: {templates}"
    if "openai_imagenet" not in templates:
        note += (
            " (eval/zeroshot_imagenet.py uses the 80 OpenAI ImageNet templates unless --templates: its clean "
            "accuracy for the same model can differ slightly; docs/evaluation.md)"
        )
    return note


@dataclass
class CleaningInputs:
    """What a cleaning job's :attr:`CleaningJob.load` returns: the model to clean, the data and the zero-shot
    templates, in the forms :func:`run_cleaning` needs.

    ``eval_templates`` go to :func:`evaluate_phase` (``None``: the model's own class embeddings);
    ``config_templates`` is ``results.json``'s ``config["templates"]``; ``summary_templates`` the template-set line
    under the summary table (``None``: no line); ``clip`` the CLIP behind a zero-shot classifier head, if any.
    """

    model: torch.nn.Module
    clean: Any
    eval_data: Any = None
    eval_templates: list[str] | None = None
    config_templates: Any = None
    summary_templates: str | None = None
    clip: Any = None


@dataclass
class CleaningJob:
    """What differs between the cleaning jobs (:mod:`~clipclean.cli.clean_clip` and
    :mod:`~clipclean.cli.clean_classifier`); :func:`run_cleaning` runs the rest.

    ``name``: the job's logger and tracker name; ``clean_data_description``: what ``--clean-data`` holds, for the
    error without it; ``outputs``: the output folder's entries, printed at the end; ``build_demo(args)``: the
    embedded demo (every process); ``load(args, device)``: the model and data (:class:`CleaningInputs`, inside the
    ``load`` phase under ``main_process_first``); ``candidates(inputs)``: ``(candidate names, their embeddings)``
    after ``--max-clean-pairs``; ``collate_fn(inputs)``: the training loader's collate function; ``after_step``:
    runs after every optimiser step (:meth:`CleaningSession.run`); ``complete_eval(args, accelerator, inputs,
    trigger, target)``: the ``complete`` block of ``results.json`` (``None``: the job has no such key);
    ``write_outputs(args, accelerator, inputs, defense, results)``: ``cleaned/``, ``inversion/``, ``results.json``.
    """

    name: str
    clean_data_description: str
    outputs: dict[str, str]
    build_demo: Callable[[argparse.Namespace], None]
    load: Callable[[argparse.Namespace, Any], CleaningInputs]
    candidates: Callable[[CleaningInputs], tuple[list[str], torch.Tensor]]
    collate_fn: Callable[[CleaningInputs], Callable]
    write_outputs: Callable[..., None]
    after_step: Callable[[torch.nn.Module], None] | None = None
    complete_eval: Callable[..., dict | None] | None = None


def defender_loader(clean, batch, seed: int, collate_fn: Callable, workers: int = 0):
    """The defender's training batches of a cleaning run (``clean``: its dataset; ``batch``: the run's
    :class:`~clipclean.cli.common.BatchSizes`), shuffled by ``seed``: what :func:`run_cleaning` trains on and what
    ``benchmarks/reverdict.py`` re-measures a verdict on.

    Batches are per process; ``accelerator.prepare`` deals them to the processes in turn, so one optimisation step
    takes ``batch.global_batch_size`` pairs. The last partial batch is dropped when the set holds two global batches
    or more (judged on the global batch, so 1 and N processes at equal global batch take the same steps)."""
    from torch.utils.data import DataLoader

    return DataLoader(
        clean,
        batch_size=batch.per_process,
        shuffle=True,
        drop_last=len(clean) >= 2 * batch.global_batch_size,
        num_workers=workers,
        collate_fn=collate_fn,
        generator=torch.Generator().manual_seed(seed),
    )


def load_eval_data(args: argparse.Namespace, image_size: tuple[int, int]):
    """The ``--eval-data`` classification set (``--classnames``, ``--skip-bad``) at ``image_size``; ``None``
    without ``--eval-data``."""
    from clipclean.data import load_classification_dataset

    if not args.eval_data:
        return None
    return load_classification_dataset(
        args.eval_data, image_size=image_size, classnames=args.classnames, skip_bad=args.skip_bad
    )


def run_cleaning(args: argparse.Namespace, job: CleaningJob) -> dict[str, Any]:
    """A cleaning job from parsed ``args`` to its output folder; returns the ``results.json`` dict.

    Load the model and data, evaluate before, run the defense's rounds (:class:`CleaningSession`), evaluate after
    (with the true and the inverted trigger), optionally the complete-unlearning tests, then write and summarise.
    """
    import time

    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader

    from clipclean.cli.common import (
        configure_cpu_threads,
        finish_run,
        log_batch_sizes,
        make_accelerator,
        resolve_batch_sizes,
        setup_logging,
    )

    prepare_cleaning_output(args)  # before any work: a used or unwritable folder fails now, not after the cleaning
    start_time = time.time()
    accelerator = make_accelerator(args)
    setup_logging(accelerator, job.name)
    configure_cpu_threads(accelerator)
    batch = resolve_batch_sizes(args, accelerator.num_processes)  # --global-batch-size: args.batch_size per process
    set_seed(args.seed)
    demo_run = args.model is None
    if demo_run:
        job.build_demo(args)  # every process: the poison recipes train with all of them
    if args.clean_data is None:
        raise SystemExit(f"--clean-data is required when --model is given ({job.clean_data_description})")

    # 1. the model, the defender's clean data, the evaluation data and the true trigger (when known)
    timer = PhaseTimer()
    with timer("load"), accelerator.main_process_first():
        inputs = job.load(args, accelerator.device)
    model, eval_data = inputs.model, inputs.eval_data
    if args.max_clean_pairs is not None:
        inputs.clean = torch.utils.data.Subset(inputs.clean, range(min(args.max_clean_pairs, len(inputs.clean))))
    clean = inputs.clean
    true_trigger, true_target = load_eval_trigger(
        args.eval_trigger, args.eval_target, eval_data, accelerator.device, image_size=model.image_size
    )
    # candidates that name the recovered target (the evaluation classes' embeddings)
    model.eval()
    candidate_names, classifier = job.candidates(inputs)

    eval_loader = DataLoader(eval_data, batch_size=256, shuffle=False) if eval_data is not None else None
    train_loader = defender_loader(clean, batch, args.seed, job.collate_fn(inputs), workers=args.workers)

    # 2. evaluate before
    evaluate = before = None
    if eval_loader is not None:
        eval_loader = accelerator.prepare(eval_loader)
        evaluate = functools.partial(
            evaluate_phase,
            loader=eval_loader,
            classnames=candidate_names,
            classifier=classifier,
            accelerator=accelerator,
            templates=inputs.eval_templates,
            seed=args.seed,
            progress=args.progress,
        )
        with timer("evaluate_before"):
            before = evaluate(model, trigger=true_trigger, target=true_target)

    # 3. the defense's rounds
    defense, reference = make_defense(args, accelerator, model, candidate_names, classifier)
    session = CleaningSession.prepare(accelerator, model, defense, train_loader, args, tracker=job.name)
    steps_per_epoch = len(session.train_loader)  # per process, after sharding: the optimiser steps of one epoch
    log_batch_sizes(batch, steps_per_epoch)
    with timer("cleaning"):
        session.run(after_step=job.after_step)
    unchanged = check_model_changed(session, reference)

    # 4. evaluate after, with the true trigger and the inverted one
    model.eval()
    trigger_equal = trigger_identical_across_ranks(accelerator, defense.trigger_for_report())
    summary = defense.summary()
    after = inverted_asr = None
    if evaluate is not None:
        with timer("evaluate_after"):
            after = evaluate(model, trigger=true_trigger, target=true_target)
            inverted_asr = inverted_trigger_asr(
                defense,
                summary,
                lambda evaluated, trigger, target: evaluate(evaluated, trigger=trigger, target=target),
                {"before": reference, "after": model},
                candidate_names,
            )
    complete = None
    if getattr(args, "complete_eval", False) and job.complete_eval is not None:
        with timer("complete_eval"):
            complete = job.complete_eval(args, accelerator, inputs, true_trigger, true_target)
    wall_time = time.time() - start_time

    # 5. results.json, cleaned/, inversion/ and the summary
    results = {
        "defense": args.defense,
        "before": before,
        "after": after,
        "inversion": inversion_report(summary),
        "inverted_trigger_asr": inverted_asr,
        **({"complete": complete} if job.complete_eval is not None else {}),
        "true_target": true_target,
        "rounds": session.state.reports,
        "rounds_done": session.state.rounds_done,
        "stopped_early": session.stopped_early,
        "wall_time_s": wall_time,
        "phase_wall_time_s": phase_wall_times(timer, session),
        "peak_memory_mb": peak_memory_mb(accelerator),
        "world_size": accelerator.num_processes,
        "global_batch_size": batch.global_batch_size,
        "steps_per_epoch": steps_per_epoch,
        "trigger_identical_across_ranks": trigger_equal,
        "weights_unchanged": unchanged,
        "config": {"defense": defense.config, "recipe": vars(args), "templates": inputs.config_templates},
    }
    job.write_outputs(args, accelerator, inputs, defense, results)
    print_summary(accelerator, results, inputs.summary_templates)
    if accelerator.is_main_process and results.get("complete"):
        from clipclean.complete import complete_caveats, complete_table_rows

        print_table(complete_table_rows(results["complete"]), ("complete unlearning", "cleaned", "reference"))
        for caveat in complete_caveats(results["complete"]):
            print(f"note: {caveat}")
    demo = (f"the backdoored demo model (reused by the next demo run): {Path(args.model).parent}",)
    finish_run(accelerator, args, job.outputs, notes=demo if demo_run else ())
    accelerator.end_training()
    return results
