"""Cost of every phase at scale: seconds per step, images per second and peak memory on a real architecture.

For each model (open_clip's ``ViT-B-32`` and ``RN50`` at 224 px; random initialisation unless ``--pretrained``) and
each process count (one process, or several real processes under ``accelerate launch``: gloo on CPU, NCCL on GPUs),
it runs a bounded number of steps of each phase on defender pairs **streamed from webdataset shards**
(``clipclean.cli.loaders.StreamingLoader``: each process reads its own slice of the shards) and measures

* ``stream``: one pass of the loader over the whole shard set (decoding and batching only, no model);
* ``e_step``: the untargeted E-step (``hypotheses x batch`` triggered images, no gradient) and the naming of the
  recovered direction among ``--candidates`` class names (1,000 ImageNet classes);
* ``m_step``: one trigger M-step step (``hypotheses x batch`` images, gradient to the triggers; BI-BAU's re-fit and
  re-inversion are M-steps, so they cost the same per step);
* ``verdict``: one step of the verdict's targeted inversions (``--verdict-candidates x --verdict-batch`` images);
* ``unlearning``: one BI-BAU unlearning step (clean + triggered images through the image tower with gradient, the
  frozen reference on the clean ones), optimiser step included;
* ``cleanclip``: one CleanCLIP step (both towers, images and their augmented views), for comparison;
* ``zeroshot_classifier`` / ``zeroshot_eval``: building the ``classes x templates`` zero-shot classifier and
  evaluating a synthetic ImageNet-style synset tree with ``DataLoader`` workers (one "step" = the whole phase);
* ``micro_batch_check`` (``--tiny`` only): the largest difference between the parameter gradients of one unlearning
  step with and without ``--micro-batch``, for BI-BAU and CleanCLIP, on every process.

Every phase runs with ``--micro-batch`` (at most that many images per forward/backward pass: the trigger search's
gradient accumulation and the unlearning's gradient cache, ``clipclean.training.GradientCache``). The first step of a
phase is a warm-up: seconds per step are the mean of the others. Peak memory is, per phase, the largest peak resident
set size over the processes (``VmHWM``, reset before the phase; on a GPU also ``torch.cuda.max_memory_allocated``),
plus the unique set size of the ``DataLoader`` worker processes (what they add), sampled every 50 ms (needs
psutil). Scaling efficiency at equal global batch is ``t(1 process) / (n x t(n processes))``.

The images are **synthetic** (smooth random colour fields stored as JPEG, captions "a photo of a CLASS." over the
1,000 ImageNet class names), written to a temporary folder: ``--shard-pairs`` sets of pairs in shards of
``--pairs-per-shard`` (the smaller sets are the first shards of the largest) and a synset tree of
``--zeroshot-classes`` folders named like ImageNet's (``n01440764``...), ``--zeroshot-images-per-class`` images each.
All phases run on the first shard size (``OUTPUT/NAME.csv`` and ``.md``); then ``--memory-phases`` run alone on every
shard size, in launches with the same history so that their peaks compare, to show that peak memory does not grow with
the size of the defender set (``OUTPUT/NAME_memory.csv`` and ``.md``). The tables are printed at the end.

    python benchmarks/scale.py                                   # ViT-B-32 and RN50, 1 and 2 processes, 2K/20K pairs
    python benchmarks/scale.py --tiny --output /tmp/scale        # clipclean-tiny at 32 px: the tests' run (a minute)
    bash benchmarks/gpu_scale.sh                                 # bf16 ViT-B-32 on a GPU (benchmarks/README.md)
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import datetime
import gc
import io
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = (
    "stream",
    "e_step",
    "m_step",
    "verdict",
    "unlearning",
    "cleanclip",
    "zeroshot_classifier",
    "zeroshot_eval",
    "micro_batch_check",
)
DEFAULT_PHASES = PHASES[:-1]
COLUMNS = (
    "run",
    "model",
    "precision",
    "device",
    "image_px",
    "processes",
    "shard_pairs",
    "phase",
    "global_batch",
    "micro_batch",
    "steps",
    "s_per_step",
    "images_per_step",
    "images_per_s",
    "peak_rss_mib",
    "workers_uss_mib",
    "peak_gpu_mib",
    "index_rss_mib",
    "efficiency",
    "notes",
)
TINY = {
    "model": ["clipclean-tiny"],
    "shard_pairs": [64, 256],
    "pairs_per_shard": 16,
    "batch_size": 8,
    "micro_batch": 2,
    "steps": 2,
    "verdict_candidates": 4,
    "verdict_batch": 2,
    "zeroshot_classes": 12,
    "zeroshot_templates": 80,
    "workers": 1,
    "memory_phases": ["stream", "unlearning"],
}
SAMPLE_SECONDS = 0.05


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("--model", nargs="+", default=["ViT-B-32", "RN50"], help="open_clip model names")
    parser.add_argument("--pretrained", default=None, help="open_clip pretrained tag or file (default: random init)")
    parser.add_argument("--processes", nargs="+", type=int, default=[1, 2], help="process counts to measure")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: cuda if available")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16: autocast (GPU or CPU)")
    parser.add_argument("--threads", type=int, default=1, help="OMP threads per process (CPU)")
    parser.add_argument("--steps", type=int, default=3, help="steps per phase (the first is a warm-up)")
    parser.add_argument("--batch-size", type=int, default=16, help="global batch (split over the processes)")
    parser.add_argument("--micro-batch", type=int, default=8, help="images per forward/backward pass (0: no limit)")
    parser.add_argument("--hypotheses", type=int, default=3, help="trigger hypotheses of the E- and M-step")
    parser.add_argument("--candidates", type=int, default=1000, help="named target candidates (ImageNet classes)")
    parser.add_argument("--verdict-candidates", type=int, default=20, help="targeted inversions per verdict step")
    parser.add_argument("--verdict-batch", type=int, default=None, help="global verdict batch (default --batch-size)")
    parser.add_argument("--shard-pairs", nargs="+", type=int, default=[2000, 20000], help="defender set sizes")
    parser.add_argument("--pairs-per-shard", type=int, default=1000)
    parser.add_argument(
        "--image-size", type=int, default=None,
        help="size of the synthetic images (default: the model's input size; others are resized by the data pipeline)",
    )  # fmt: skip
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers per process")
    parser.add_argument("--phases", nargs="+", default=list(DEFAULT_PHASES), choices=PHASES)
    parser.add_argument(
        "--memory-phases",
        nargs="+",
        default=["stream", "unlearning"],
        choices=PHASES,
        help="phases run again on every shard size after the first",
    )
    parser.add_argument("--zeroshot-classes", type=int, default=1000, help="classes of the synthetic synset tree")
    parser.add_argument("--zeroshot-images-per-class", type=int, default=2)
    parser.add_argument("--zeroshot-templates", type=int, default=80, help="the first N OpenAI ImageNet templates")
    parser.add_argument(
        "--zeroshot-classifier-classes",
        type=int,
        default=None,
        help="embed the prompts of only the first N classes and repeat their rows (a bounded cost measurement on "
        "slow machines; the evaluation still sees every class). Default: all",
    )
    parser.add_argument("--zeroshot-batch-size", type=int, default=64, help="evaluation images per process and step")
    parser.add_argument("--tiny", action="store_true", help="clipclean-tiny at 32 px, small shards: the tests' run")
    parser.add_argument("--output", default="benchmarks/results", help="folder of NAME.csv and NAME.md")
    parser.add_argument("--name", default="scale", help="file name stem of the results")
    parser.add_argument("--work-dir", default=None, help="where the synthetic data goes (default: a temporary folder)")
    parser.add_argument("--timeout", type=int, default=7200, help="seconds per launched run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: run one measurement spec
    args = parser.parse_args(argv)
    if args.tiny:
        defaults = {action.dest: action.default for action in parser._actions}
        for key, value in TINY.items():
            if getattr(args, key) == defaults[key]:  # an explicit flag wins over the tiny default
                setattr(args, key, value)
    if args.worker is None:
        _check(parser, args)
    return args


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for processes in args.processes:
        if processes < 1 or args.batch_size % processes:
            parser.error(f"--batch-size {args.batch_size} must split evenly over {processes} processes")
        if args.verdict_batch is not None and args.verdict_batch % processes:
            parser.error(f"--verdict-batch {args.verdict_batch} must split evenly over {processes} processes")
    if any(pairs % args.pairs_per_shard for pairs in args.shard_pairs):
        parser.error(f"every --shard-pairs must be a multiple of --pairs-per-shard ({args.pairs_per_shard})")
    if args.steps < 1 or args.micro_batch < 0:
        parser.error("--steps must be >= 1 and --micro-batch >= 0")
    if args.zeroshot_classes > 1000:
        parser.error("--zeroshot-classes: ImageNet has 1,000 synsets")


# ---------------------------------------------------------------------------------------------- synthetic data


def synthetic_jpeg(rng, size: int) -> bytes:
    """A smooth random colour field (4x4 random pixels, bicubic upsampling) of ``size`` px as JPEG bytes: decodes
    like a photograph of that size, stores in a few kB."""
    from PIL import Image

    small = Image.fromarray(rng.integers(0, 256, size=(4, 4, 3), dtype="uint8"))
    buffer = io.BytesIO()
    small.resize((size, size), Image.BICUBIC).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def write_shards(folder: Path, pairs: int, pairs_per_shard: int, size: int, seed: int = 0) -> list[Path]:
    """``pairs`` synthetic image-caption pairs as webdataset shards ``folder/shard-NNNNNN.tar`` of ``pairs_per_shard``
    pairs each (``KEY.jpg`` + ``KEY.txt``, caption "a photo of a CLASS." over the ImageNet class names); shards that
    already exist are kept (a smaller set is the first shards of a larger one)."""
    import numpy as np
    import webdataset

    from clipclean.evaluation import imagenet_classnames

    names = imagenet_classnames()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard in range(math.ceil(pairs / pairs_per_shard)):
        path = folder / f"shard-{shard:06d}.tar"
        paths.append(path)
        if path.is_file():
            continue
        rng = np.random.default_rng([seed, shard])
        partial = path.with_suffix(".tar.partial")
        with webdataset.TarWriter(str(partial), mtime=0) as writer:
            for index in range(shard * pairs_per_shard, min(pairs, (shard + 1) * pairs_per_shard)):
                jpeg = synthetic_jpeg(rng, size)
                caption = f"a photo of a {names[int(rng.integers(len(names)))]}."
                writer.write({"__key__": f"{index:09d}", "jpg": jpeg, "txt": caption})
        partial.rename(path)
    return paths


def shard_spec(folder: Path, pairs: int, pairs_per_shard: int) -> str:
    """The brace-range spec of the first ``pairs`` pairs written by :func:`write_shards`."""
    return str(folder / f"shard-{{000000..{pairs // pairs_per_shard - 1:06d}}}.tar")


def write_synset_tree(folder: Path, classes: int, images_per_class: int, size: int, seed: int = 0) -> Path:
    """An ImageNet-style class tree: the first ``classes`` ImageNet synsets (``n01440764``... from clipclean's synset
    list, so the folders map to the OpenAI class names), ``images_per_class`` synthetic JPEGs of ``size`` px each.
    Returns ``folder`` (kept as is when it is already complete)."""
    import numpy as np

    from clipclean.data.classnames import imagenet_synset_names

    synsets = sorted(imagenet_synset_names())[:classes]
    done = folder / ".complete"
    if done.is_file():
        return folder
    rng = np.random.default_rng(seed)
    for synset in synsets:
        (folder / synset).mkdir(parents=True, exist_ok=True)
        for index in range(images_per_class):
            (folder / synset / f"{synset}_{index}.JPEG").write_bytes(synthetic_jpeg(rng, size))
    done.write_text("")
    return folder


# ---------------------------------------------------------------------------------------------- memory


class PeakMemory:
    """Peak memory of this process over a phase: ``VmHWM`` (reset through ``/proc/self/clear_refs`` after returning
    freed heap to the system with ``malloc_trim``), ``torch.cuda.max_memory_allocated`` on a GPU, and the summed
    unique set size of the child processes (``DataLoader`` workers: the memory they add to this process's), sampled
    every 50 ms when psutil is installed."""

    def __init__(self, device) -> None:
        self.device = device
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.workers_uss = 0.0

    def start(self) -> None:
        import torch

        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        self.workers_uss = 0.0
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        try:
            import psutil
        except ImportError:
            return
        me = psutil.Process()
        while not self._stop.wait(SAMPLE_SECONDS):
            total = 0
            for child in me.children(recursive=True):
                try:
                    total += child.memory_full_info().uss
                except (psutil.Error, OSError):
                    pass
            self.workers_uss = max(self.workers_uss, total / 2**20)

    def stop(self) -> dict[str, float | None]:
        import torch

        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        gpu = torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else None
        return {"peak_rss_mib": resident_peak_mib(), "workers_uss_mib": self.workers_uss, "peak_gpu_mib": gpu}


def resident_peak_mib() -> float:
    """``VmHWM`` of this process in MiB (``ru_maxrss`` where ``/proc`` is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def resident_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------------------------------------- one run (worker)


class Run:
    """One launched measurement: a model, a shard set and a list of phases, on every process of the launch."""

    def __init__(self, spec: dict) -> None:
        import torch
        from accelerate import Accelerator

        from clipclean.cli.loaders import StreamingLoader
        from clipclean.data.webdataset import load_shards
        from clipclean.evaluation import imagenet_classnames
        from clipclean.models import load_clip
        from clipclean.training import CaptionTokenizer

        self.spec = spec
        self.accelerator = Accelerator(
            cpu=spec["device"] == "cpu", mixed_precision={"fp32": "no", "bf16": "bf16"}[spec["precision"]]
        )
        torch.manual_seed(spec["seed"])
        self.model = load_clip(spec["model"], pretrained=spec["pretrained"], device=self.accelerator.device)
        self.world = self.accelerator.num_processes
        self.batch = spec["batch_size"] // self.world
        self.micro_batch = spec["micro_batch"] or None
        self.memory = PeakMemory(self.accelerator.device)
        before = resident_mib()
        self.dataset = load_shards(spec["shards"], image_size=self.model.image_size)
        self.index_mib = resident_mib() - before
        self.loader = StreamingLoader(
            self.dataset,
            self.accelerator,
            batch_size=self.batch,
            num_workers=spec["workers"],
            seed=spec["seed"],
            collate_fn=CaptionTokenizer(self.model.tokenizer),
        )
        names = imagenet_classnames()
        self.candidate_names = [
            names[k % len(names)] + ("" if k < len(names) else f" {k}") for k in range(spec["candidates"])
        ]
        generator = torch.Generator().manual_seed(spec["seed"])
        embeddings = torch.randn(len(self.candidate_names), self.model.embed_dim, generator=generator)
        self.candidate_embeddings = torch.nn.functional.normalize(embeddings, dim=-1).to(self.accelerator.device)
        self.inverter = None
        self.stream = None
        self.zeroshot: dict | None = None
        self.rows: list[dict] = []

    # -- helpers
    def reduce(self, tensor, op: str):
        return self.accelerator.reduce(tensor, reduction=op)

    def batches(self):
        from clipclean.inversion import cycle

        if self.stream is None:
            self.stream = cycle(self.loader)
        return self.stream

    def measure(
        self,
        phase: str,
        step: Callable[[], object],
        steps: int,
        images_per_step: int,
        notes: str = "",
        setup: Callable[[], None] | None = None,
    ) -> None:
        """Time ``steps`` calls of ``step`` (after ``setup``, untimed) with the memory probe around them."""
        import torch

        self.memory.start()
        if setup is not None:
            setup()
        seconds = []
        with self.accelerator.autocast():
            for _ in range(steps):
                start = time.perf_counter()
                step()
                if self.accelerator.device.type == "cuda":
                    torch.cuda.synchronize()
                seconds.append(time.perf_counter() - start)
        memory = self.memory.stop()
        peaks = torch.tensor([memory["peak_rss_mib"], memory["workers_uss_mib"], memory["peak_gpu_mib"] or 0.0])
        peaks = self.accelerator.gather(peaks.to(self.accelerator.device)[None]).view(self.world, -1).max(0).values
        timed = seconds[1:] or seconds
        per_step = sum(timed) / len(timed)
        self.rows.append(
            {
                "phase": phase,
                "steps": steps,
                "s_per_step": per_step,
                "images_per_step": images_per_step,
                "images_per_s": images_per_step / per_step if per_step > 0 else None,
                "peak_rss_mib": float(peaks[0]),
                "workers_uss_mib": float(peaks[1]),
                "peak_gpu_mib": float(peaks[2]) if memory["peak_gpu_mib"] is not None else None,
                "index_rss_mib": self.index_mib,
                "notes": notes,
            }
        )
        gc.collect()

    def inversion_options(self, verdict_batch: int | None = None) -> dict:
        return {
            "patch_hypotheses": self.spec["hypotheses"],
            "batch_size": self.batch,
            "micro_batch": self.micro_batch,
            "verdict_steps": 1,
            "verdict_batch_size": verdict_batch or self.batch,
            "seed": self.spec["seed"],
        }

    def inverter_for(self, verdict_batch: int | None = None):
        from clipclean.inversion import BlindInversion, InversionConfig

        return BlindInversion(
            self.model,
            InversionConfig(**self.inversion_options(verdict_batch)),
            candidate_names=self.candidate_names,
            candidate_embeddings=self.candidate_embeddings,
            reduce_fn=self.reduce,
        )

    def _estimated_inverter(self):
        if self.inverter is None:
            self.inverter = self.inverter_for()
            self.inverter.e_step([next(self.batches())])
        return self.inverter

    def session(self, defense_name: str, **context):
        """A cleaning session as the recipes prepare it (trainable parameters, AdamW, DDP) for ``defense_name``."""
        from clipclean.cli.cleaning import CleaningSession
        from clipclean.defenses import DefenseContext, build_defense

        context = DefenseContext(
            rank=self.accelerator.process_index, world_size=self.world, reduce_fn=self.reduce, **context
        )
        options = {"inversion": self.inversion_options()} if defense_name == "bibau" else None
        defense = build_defense(defense_name, self.model, context, options)
        folder = Path(self.spec["scratch"])
        settings = argparse.Namespace(
            output_dir=str(folder),
            resume_from_checkpoint=None,
            report_to=None,
            progress=False,
            micro_batch=self.micro_batch,
        )
        return CleaningSession.prepare(self.accelerator, self.model, defense, self.loader, settings)

    def fresh_model(self) -> None:
        """Drop the previous phase's training state and start from a newly loaded model."""
        from clipclean.models import load_clip

        self.accelerator.free_memory()
        self.inverter, self.model = None, None
        gc.collect()
        self.model = load_clip(self.spec["model"], pretrained=self.spec["pretrained"], device=self.accelerator.device)

    # -- phases
    def phase_stream(self) -> None:
        count = [0]

        def epoch():
            self.loader.set_epoch(1)
            for images, _tokens in self.loader:
                count[0] += images.shape[0]

        batches = len(self.loader)
        self.measure("stream", epoch, 1, len(self.dataset) // self.world * self.world)
        row = self.rows[-1]
        row["s_per_step"] /= batches  # per batch of the pass
        row["images_per_step"], row["images_per_s"] = (
            self.spec["batch_size"],
            count[0] * self.world / row["s_per_step"] / batches,
        )
        row["notes"] = "one pass over the shard set, decoding and batching only; s/step per batch"

    def phase_e_step(self) -> None:
        inverter = self._estimated_inverter()

        def step():
            stats = inverter.e_step([next(self.batches())])
            inverter.name_candidates(stats.directions[0])

        hypotheses = self.spec["hypotheses"]
        notes = f"{hypotheses} hypotheses x batch, no gradient; naming among {len(self.candidate_names)} candidates"
        self.measure("e_step", step, self.spec["steps"], hypotheses * self.spec["batch_size"], notes)

    def phase_m_step(self) -> None:
        inverter = self._estimated_inverter()
        hypotheses = self.spec["hypotheses"]
        notes = (
            f"{hypotheses} hypotheses x batch, gradient to the triggers (re-fit and re-inversion steps cost the same)"
        )
        self.measure(
            "m_step",
            lambda: inverter.m_step(self.batches(), steps=1),
            self.spec["steps"],
            hypotheses * self.spec["batch_size"],
            notes,
        )

    def phase_verdict(self) -> None:
        verdict_batch = self.spec["verdict_batch"] // self.world
        inverter = self.inverter_for(verdict_batch)
        count = min(self.spec["verdict_candidates"], len(self.candidate_names))
        indices = list(range(count))
        # one targeted step for every candidate from fresh triggers: the body of the verdict's verdict_steps loop
        step = lambda: inverter._targeted_triggers(indices, self.batches())  # noqa: E731
        notes = f"{count} candidates x {self.spec['verdict_batch']} images, one targeted step each"
        self.measure("verdict", step, self.spec["steps"], count * self.spec["verdict_batch"], notes)

    def _training_phase(self, phase: str, defense_name: str, notes: str, **context) -> None:
        from clipclean.cli.cleaning import unlearning_step

        holder = {}

        def setup():
            holder["session"] = self.session(defense_name, **context)
            if defense_name == "bibau":  # the population's directions and scores, as after an inversion
                holder["session"].defense.inverter.e_step([next(self.batches())])

        def step():
            session = holder["session"]
            unlearning_step(self.accelerator, session.wrapped, session.defense, next(self.batches()), self.micro_batch)
            session.optimizer.step()
            session.optimizer.zero_grad(set_to_none=True)

        self.measure(phase, step, self.spec["steps"], 2 * self.spec["batch_size"], notes, setup=setup)
        holder.clear()
        self.fresh_model()

    def phase_unlearning(self) -> None:
        reference = self.model.fresh_copy().requires_grad_(False).eval()
        self._training_phase(
            "unlearning",
            "bibau",
            "clean + triggered images with gradient, reference forward; AdamW step",
            candidate_names=self.candidate_names,
            candidate_embeddings=self.candidate_embeddings,
            reference=reference,
        )

    def phase_cleanclip(self) -> None:
        self._training_phase("cleanclip", "cleanclip", "images + augmented views, both towers; AdamW step")

    def phase_micro_batch_check(self) -> None:
        """Parameter gradients of one step with and without micro-batches (all-reduced over the processes)."""
        from clipclean.cli.cleaning import unlearning_step

        differences = []
        for name in ("bibau", "cleanclip"):
            context = {}
            if name == "bibau":
                reference = self.model.fresh_copy().requires_grad_(False).eval()
                context = {
                    "candidate_names": self.candidate_names,
                    "candidate_embeddings": self.candidate_embeddings,
                    "reference": reference,
                }
            session = self.session(name, **context)
            if name == "bibau":
                session.defense.inverter.e_step([next(self.batches())])
            batch = next(self.batches())
            generator = getattr(session.defense, "generator", None)
            state = generator.get_state() if generator is not None else None
            gradients = []
            for micro_batch in (None, self.micro_batch):
                session.defense.steps = 0
                if generator is not None:
                    generator.set_state(state)
                unlearning_step(self.accelerator, session.wrapped, session.defense, batch, micro_batch)
                parameters = [p for p in session.wrapped.parameters() if p.grad is not None]
                gradients.append([p.grad.detach().clone() for p in parameters])
                session.optimizer.zero_grad(set_to_none=True)
            whole, chunked = gradients
            scale = max(float(g.abs().max()) for g in whole)
            difference = max(float((a - b).abs().max()) for a, b in zip(whole, chunked)) / max(scale, 1e-12)
            differences.append(f"{name} {difference:.2e}")
            del session
            self.fresh_model()
        self.rows.append(
            {
                "phase": "micro_batch_check",
                "steps": 1,
                "notes": "relative max gradient difference: " + ", ".join(differences),
            }
        )

    def _zeroshot_data(self):
        """The synset tree and its classifier (built once, untimed unless ``zeroshot_classifier`` measures it)."""
        from clipclean.data import load_classification_dataset
        from clipclean.evaluation import openai_imagenet_templates, zeroshot_classifier

        if self.zeroshot is None:
            dataset = load_classification_dataset(self.spec["tree"], image_size=self.model.image_size)
            templates = openai_imagenet_templates()[: self.spec["zeroshot_templates"]]
            classes = len(dataset.classnames)
            embedded = min(self.spec["zeroshot_classifier_classes"] or classes, classes)
            self.zeroshot = {"dataset": dataset, "templates": templates, "embedded": embedded}
            self.zeroshot["build"] = lambda: self.zeroshot.update(
                classifier=zeroshot_classifier(self.model, dataset.classnames[:embedded], templates)
            )
        return self.zeroshot

    def phase_zeroshot_classifier(self) -> None:
        data = self._zeroshot_data()
        notes = f"{data['embedded']} classes x {len(data['templates'])} templates; every process builds all of it"
        self.measure("zeroshot_classifier", data["build"], 1, data["embedded"] * len(data["templates"]), notes)

    def phase_zeroshot_eval(self) -> None:
        import torch
        from torch.utils.data import DataLoader

        from clipclean.data import collate_pairs
        from clipclean.evaluation import evaluate_zeroshot

        data = self._zeroshot_data()
        if "classifier" not in data:
            data["build"]()
        dataset, classes = data["dataset"], len(data["dataset"].classnames)
        classifier = data["classifier"][torch.arange(classes) % data["embedded"]]  # rows repeat if fewer embedded
        loader = DataLoader(
            dataset,
            batch_size=self.spec["zeroshot_batch_size"],
            num_workers=self.spec["workers"],
            collate_fn=collate_pairs,
        )
        loader = self.accelerator.prepare(loader)
        metrics = {}

        def evaluate():
            metrics.update(
                evaluate_zeroshot(
                    self.model,
                    loader,
                    dataset.classnames,
                    classifier=classifier,
                    gather=self.accelerator.gather_for_metrics,
                )
            )

        notes = f"{len(dataset)} images of {classes} classes, {self.spec['workers']} DataLoader worker(s) per process"
        self.measure("zeroshot_eval", evaluate, 1, len(dataset), notes)
        if metrics["n_images"] != len(dataset):
            raise RuntimeError(f"evaluated {metrics['n_images']} images of {len(dataset)}")

    def run(self) -> list[dict]:
        actions = {
            "stream": self.phase_stream,
            "e_step": self.phase_e_step,
            "m_step": self.phase_m_step,
            "verdict": self.phase_verdict,
            "unlearning": self.phase_unlearning,
            "cleanclip": self.phase_cleanclip,
            "zeroshot_classifier": self.phase_zeroshot_classifier,
            "zeroshot_eval": self.phase_zeroshot_eval,
            "micro_batch_check": self.phase_micro_batch_check,
        }
        for phase in self.spec["phases"]:
            self.stream = None  # every phase starts its own DataLoader workers
            actions[phase]()
        self.accelerator.wait_for_everyone()
        return self.rows


def run_worker(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    run = Run(spec)
    rows = run.run()
    if run.accelerator.is_main_process:
        Path(spec["result"]).write_text(json.dumps({"rows": rows, "world_size": run.world}))
    run.accelerator.end_training()


# ---------------------------------------------------------------------------------------------- orchestration


def accelerate_command(script: Path, arguments: list[str], processes: int, precision: str = "fp32") -> list[str]:
    """``python SCRIPT ARGUMENTS`` for one process; for several, the same under ``accelerate launch`` (``--multi_gpu``
    with ``ACCELERATE_USE_CPU=true`` in the environment gives real CPU processes with gloo; ``--cpu --num_processes
    2`` would silently run one), on a free port."""
    if processes == 1:
        return [sys.executable, str(script), *arguments]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mixed = {"fp32": "no", "bf16": "bf16"}[precision]
    return [
        *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes)),
        *("--num_machines", "1", "--mixed_precision", mixed, "--dynamo_backend", "no"),
        *("--main_process_port", str(port), str(script), *arguments),
    ]


def launch_command(script: Path, spec_path: Path, processes: int, device: str, precision: str) -> list[str]:
    """A worker of this benchmark (``scale.py --worker SPEC``) in ``processes`` processes."""
    return accelerate_command(script, ["--worker", str(spec_path)], processes, precision)


def add_efficiency(rows: list[dict]) -> None:
    """``efficiency = t(1 process) / (n x t(n processes))`` at equal global batch, per model, phase and run."""
    key = lambda r: (r["model"], r["phase"], r["run"], r["shard_pairs"])  # noqa: E731
    single = {key(r): r for r in rows if r["processes"] == 1}
    for row in rows:
        base = single.get(key(row))
        if row["processes"] > 1 and base is not None and base.get("s_per_step") and row.get("s_per_step"):
            row["efficiency"] = base["s_per_step"] / (row["processes"] * row["s_per_step"])


def _number(value, digits: int = 1) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1e5 else f"{value:.3g}"
    return str(value)


def markdown(rows: list[dict], header: list[str]) -> str:
    """The table of the runs of every phase."""
    lines = [
        *header,
        "",
        "| model | phase | processes | shard pairs | s/step | images/step | images/s | peak RSS MiB | "
        "workers' USS MiB | peak GPU MiB | efficiency | notes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        cells = [
            r["model"], r["phase"], r["processes"], r["shard_pairs"], _number(r.get("s_per_step"), 3),
            _number(r.get("images_per_step")), _number(r.get("images_per_s"), 2), _number(r.get("peak_rss_mib"), 0),
            _number(r.get("workers_uss_mib"), 0), _number(r.get("peak_gpu_mib"), 0), _number(r.get("efficiency"), 2),
            r.get("notes", ""),
        ]  # fmt: skip
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def memory_markdown(rows: list[dict], header: list[str]) -> str:
    """Peak memory per shard size of the memory runs: peak RSS (max over the processes) + the workers' USS."""
    memory = memory_by_shard_size(rows)
    sizes = sorted({size for entry in memory.values() for size in entry})
    lines = [
        *header,
        "",
        "Peak memory per defender-set size: peak RSS MiB (max over the processes) + the DataLoader workers' USS MiB.",
        "",
        "| model | phase | processes | " + " | ".join(f"{s} pairs" for s in sizes) + " |",
        "|---|---|---:|" + "---:|" * len(sizes),
    ]
    for (model, phase, processes), entry in memory.items():
        cells = [f"{entry[s][0]:.0f} + {entry[s][1]:.0f}" if s in entry else "-" for s in sizes]
        lines.append(f"| {model} | {phase} | {processes} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def memory_by_shard_size(rows: list[dict]) -> dict[tuple, dict[int, tuple[float, float]]]:
    """``{(model, phase, processes): {shard pairs: (peak RSS, workers' USS)}}`` for phases run on 2+ shard sizes."""
    table: dict[tuple, dict[int, tuple[float, float]]] = {}
    for r in rows:
        if r["run"] == "memory" and r.get("peak_rss_mib") is not None:
            key = (r["model"], r["phase"], r["processes"])
            table.setdefault(key, {})[r["shard_pairs"]] = (r["peak_rss_mib"], r.get("workers_uss_mib") or 0.0)
    return {key: entry for key, entry in table.items() if len(entry) > 1}


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        return head.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.worker is not None:
        run_worker(args.worker)
        return []
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="clipclean_scale_"))
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    started = time.time()
    command = "python benchmarks/scale.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows: list[dict] = []
    try:
        for model in args.model:
            size = args.image_size or _image_size(model)
            shards = work / f"shards_{size}px"
            write_shards(shards, max(args.shard_pairs), args.pairs_per_shard, size, args.seed)
            tree = None
            if {"zeroshot_classifier", "zeroshot_eval"} & set(args.phases):
                name = f"synsets_{args.zeroshot_classes}x{args.zeroshot_images_per_class}_{size}px"
                tree = write_synset_tree(work / name, args.zeroshot_classes, args.zeroshot_images_per_class, size)
            for processes in args.processes:
                # every phase on the first shard size; then the memory phases alone on every size, in launches with
                # the same history, so their peaks compare
                launches = [("phases", args.shard_pairs[0], [*args.phases, *["micro_batch_check"] * args.tiny])]
                memory = [phase for phase in args.memory_phases if phase in args.phases]
                if len(args.shard_pairs) > 1 and memory:
                    launches += [("memory", pairs, memory) for pairs in args.shard_pairs]
                for kind, pairs, phases in launches:
                    spec = _spec(args, model, device, phases, shard_spec(shards, pairs, args.pairs_per_shard), tree)
                    spec["image_px"] = size
                    rows += [{**row, "run": kind} for row in _launch(spec, work, processes, pairs, kind, args)]
                    add_efficiency(rows)
                    write_results(rows, output, args.name, header_lines(args, device, time.time() - started, command))
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    for suffix in ("", "_memory"):
        if (output / f"{args.name}{suffix}.md").is_file():
            print((output / f"{args.name}{suffix}.md").read_text())
    return rows


def _spec(args: argparse.Namespace, model: str, device: str, phases: list[str], shards: str, tree) -> dict:
    """What one launch measures (the worker's ``--worker SPEC.json``)."""
    keys = (
        "pretrained", "precision", "seed", "batch_size", "micro_batch", "hypotheses", "candidates",
        "verdict_candidates", "workers", "steps", "zeroshot_templates", "zeroshot_classifier_classes",
        "zeroshot_batch_size",
    )  # fmt: skip
    spec = {key: getattr(args, key) for key in keys}
    spec.update(model=model, device=device, phases=phases, shards=shards, tree=str(tree) if tree else None)
    spec["verdict_batch"] = args.verdict_batch or args.batch_size
    return spec


def _image_size(model: str) -> int:
    import open_clip

    from clipclean.models import register_model_configs

    register_model_configs()
    size = open_clip.get_model_config(model)["vision_cfg"]["image_size"]
    return size if isinstance(size, int) else size[0]


def _launch(spec: dict, work: Path, processes: int, pairs: int, kind: str, args: argparse.Namespace) -> list[dict]:
    tag = f"{spec['model']}_{processes}p_{pairs}_{kind}"
    spec = {**spec, "result": str(work / f"{tag}.json"), "scratch": str(work / f"{tag}_scratch")}
    spec_path = work / f"{tag}_spec.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    if spec["device"] == "cpu":
        env["ACCELERATE_USE_CPU"] = "true"
    command = launch_command(Path(__file__).resolve(), spec_path, processes, spec["device"], spec["precision"])
    print(
        "+",
        " ".join(command),
        f"  # {spec['model']}, {processes} process(es), {pairs} pairs: {spec['phases']}",
        flush=True,
    )
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout)
    if completed.returncode != 0:
        raise RuntimeError(f"{tag} failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-5000:]}")
    result = json.loads(Path(spec["result"]).read_text())
    if result["world_size"] != processes:
        raise RuntimeError(f"{tag}: asked for {processes} processes, ran {result['world_size']}")
    common = {
        "model": spec["model"],
        "precision": spec["precision"],
        "device": spec["device"],
        "image_px": spec["image_px"],
        "processes": processes,
        "shard_pairs": pairs,
        "global_batch": spec["batch_size"],
        "micro_batch": spec["micro_batch"] or None,
    }
    return [{**common, **row} for row in result["rows"]]


def header_lines(args: argparse.Namespace, device: str, seconds: float, command: str) -> list[str]:
    """Date, commit, command and machine: the lines above the tables."""
    import torch

    return [
        f"<!-- {datetime.date.today().isoformat()}, commit {_commit()}, `{command}` -->",
        f"Device {device} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), {args.threads} "
        f"thread(s) per process, torch {torch.__version__}, precision {args.precision}; "
        f"{'pretrained ' + args.pretrained if args.pretrained else 'random initialisation'}; synthetic images; "
        f"{seconds:.0f} s in all.",
    ]


def write_results(rows: list[dict], output: Path, name: str, header: list[str]) -> None:
    """``NAME.csv`` and ``NAME.md`` (the runs of every phase); ``NAME_memory.csv`` and ``NAME_memory.md`` (the memory
    runs) when there are any."""
    for suffix, run, render in (("", "phases", markdown), ("_memory", "memory", memory_markdown)):
        selected = [row for row in rows if row["run"] == run]
        if not selected:
            continue
        with (output / f"{name}{suffix}.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            for row in selected:
                writer.writerow({key: row.get(key) for key in COLUMNS})
        (output / f"{name}{suffix}.md").write_text(render(selected, header))


if __name__ == "__main__":
    main()
