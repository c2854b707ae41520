"""A population ("zoo") of backdoored and never-poisoned tiny digits CLIPs, split into a development and a held-out
half, each model cleaned untargeted by ``recipes/clean_clip.py`` with its defaults; per-split detection and cleaning
metrics.

The zoo (``ZooSpec``; default 36 backdoored + 12 never-poisoned models):

* backdoored: every attack (badnet, blended, badclip) x every target (default ``one three five eight``; "zero", the
  class every earlier benchmark used, is not among them) x every model seed (default 0 1 2), each with one of two
  trigger variants per attack (``VARIANTS``: BadNet 3 px white at the bottom right or 4 px noise at the top left;
  Blended noise at alpha 0.1 or a natural photo at alpha 0.15; BadCLIP 4 px at the bottom right or 3 px at the
  centre), chosen by ``(target index // 2 + seed index) % 2``; noise patterns and BadCLIP's starting patch are
  drawn from the model's seed (``--trigger-seed SEED``: one trigger per seed, as every set was built; the
  recipes' default is one trigger shared by every seed). BadCLIP optimises its patch against a
  never-poisoned model of *another* seed (``surrogate seed = seed + 3``), never the same-seed reference it is
  compared with;
* never-poisoned: one per seed of ``--clean-seeds`` (default 0-11), trained by the same recipe with
  ``--poison-count 0``.

**Split rule** (fixed, decided before any model was looked at): a backdoored model is *held-out* when
``(target index + seed index)`` is odd, a never-poisoned one when its seed index is odd; the rest is the
*development* half. Defaults and thresholds may be chosen on development models only; only held-out numbers are
results. The rule puts every attack, target, seed and trigger variant in both halves (6 + 6 models per attack).

**The fresh held-out set** (``FRESH``, ``--split fresh``): 24 backdoored models of new seeds (3 and 4; every attack,
target and trigger variant by the same rule) and 6 never-poisoned ones (seeds 12-17), built only after every default
had been fixed; all of them are held out and reported as their own split, ``fresh``.

**The rebuilt development half and the second fresh set** (2026-12-04): the first zoo's cache was lost, so its
development half was rebuilt at today's recipe in another folder (``--zoo-dir ~/.cache/clipclean/zoo_rebuilt
--split development``) to choose the verdict on; a second fresh set of seeds 5 and 6 (never-poisoned: 18-23) was
built there after that choice (``--split fresh --seeds 5 6 --clean-seeds 18 19 20 21 22 23``). Both report as
``--prefix zoo_rebuilt``.

**The CNN zoo** (``--family cnn``; ``recipes/poison_classifier.py`` and ``clean_classifier.py`` with
``CNN_BIBAU_FLAGS``): BadNet and Blended x targets "one" and "three" x model seeds 0-3 (16 backdoored) and 16
never-poisoned CNNs (seeds 0-15), split by the same rule; the benchmark's two seed-0 CNNs (the recipe's default
trigger toward "zero", ``BENCHMARK_DEVELOPMENT``) join its development half: 34 models, 18 of them development. Its
fresh set is seeds 4-5 and never-poisoned seeds 16-23 (16 models). The classifier verdict's statistic is chosen by
``select_statistic`` on the development half; ties go to the statistic that separates backdoored from never-poisoned
scores the most (``separation``). After the held-out and fresh CNNs had been read, the verdict was re-chosen on all 50
(``--choose-from`` the zoo's CSV: every model of an earlier zoo becomes the set to choose on) and tested on a second
fresh CNN set (seeds 6-7, never-poisoned 24-31, ``--zoo-dir ~/.cache/clipclean/zoo_cnn_fresh2 --prefix
zoo_cnn_fresh2``), built after that choice.

Every model lives in its own folder under ``--zoo-dir`` (outside the repository; default ``~/.cache/clipclean/zoo``):
``MODEL/poison`` (the recipe's output) and ``MODEL/clean`` (the cleaning; ``--clean-name NAME`` keeps a cleaning
with other ``--clean-args`` apart in ``MODEL/NAME`` and reports it as ``zoo_NAME.*``). Finished jobs are reused, an
interrupted one is resumed from its last checkpoint, and ``--jobs N`` runs N jobs at once (one CPU thread each).
``--persistence N`` adds the retuning attack (``eval/complete_unlearning.py``, three retuning seeds) on the first N
held-out models of each attack and target whose backdoor took, next to the never-poisoned model of the same seed.

    python benchmarks/zoo.py --jobs 2                                  # build, clean and report the whole zoo
    python benchmarks/zoo.py --jobs 2 --limit 4                         # the first 4 models of each kind only
    python benchmarks/zoo.py --jobs 2 --split fresh                     # the fresh held-out set
    python benchmarks/zoo.py --report-only                              # tables from what is finished
    python benchmarks/zoo.py --report-only --rows-from benchmarks/results/zoo.csv   # a lost cache: rows as recorded
    python benchmarks/zoo.py --report-only --zoo-dir ~/.cache/clipclean/zoo_rebuilt --split fresh --seeds 5 6 \
        --clean-seeds 18 19 20 21 22 23 --prefix zoo_rebuilt                       # rebuilt development + fresh 5-6
    python benchmarks/zoo.py --family cnn --jobs 2 --zoo-dir ~/.cache/clipclean/zoo_cnn   # the CNN zoo (both halves)
    python benchmarks/zoo.py --family cnn --jobs 2 --zoo-dir ~/.cache/clipclean/zoo_cnn --split fresh   # its fresh set

Writes ``OUTPUT/zoo.csv`` (one row per model), ``OUTPUT/zoo.md`` (the metrics per split), ``OUTPUT/zoo.json`` and
``OUTPUT/zoo_roc.png``, ``OUTPUT/zoo_by_attack.png`` (``--output``, default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ATTACKS = ("badnet", "blended", "badclip")
DEFAULT_TARGETS = ("one", "three", "five", "eight")
NEVER_POISONED_ARGS = ("--attack", "badnet", "--poison-count", "0")
# BI-BAU on a CNN trained from scratch needs longer, faster unlearning than on a CLIP (benchmarks/classifier.md), and a
# stronger anchor to the starting model than the classifier objective's default (gamma 20, not 5: chosen on the CNN
# zoo's development half, benchmarks/README.md).
CNN_BIBAU_FLAGS = ["--rounds", "3", "--epochs", "20", "--lr", "2e-3", "--set", "unlearning_budget=0.1",
                   "--set", "reinversion_steps=100", "--set", "gamma=20"]  # fmt: skip
PHOTO_PATTERN = "photo"  # replaced by scikit-image's astronaut picture, written once into the zoo folder
VARIANTS: dict[str, tuple[list[str], list[str]]] = {
    "badnet": (
        ["--trigger-size", "3", "--trigger-location", "bottom-right", "--pattern", "white"],
        ["--trigger-size", "4", "--trigger-location", "top-left", "--pattern", "noise"],
    ),
    "blended": (["--alpha", "0.1", "--pattern", "noise"], ["--alpha", "0.15", "--pattern", PHOTO_PATTERN]),
    "badclip": (
        ["--trigger-size", "4", "--trigger-location", "bottom-right"],
        ["--trigger-size", "3", "--trigger-location", "center"],
    ),
}
# Each family's default zoo. CNNs: 2 attacks (the classifier recipes have no BadCLIP) x 2 targets x 4 seeds + 16
# never-poisoned = 32 models, split by the same rule (held-out: target index + seed index odd; odd clean seed index).
# (The first CNN zoo had seeds 0-1 and clean seeds 0-3: too few never-poisoned models to set a threshold on.)
FAMILIES = {
    "clip": {"targets": DEFAULT_TARGETS, "seeds": (0, 1, 2), "clean_seeds": tuple(range(12)), "attacks": ATTACKS},
    "cnn": {
        "targets": ("one", "three"),
        "seeds": (0, 1, 2, 3),
        "clean_seeds": tuple(range(16)),
        "attacks": ("badnet", "blended"),
    },
}
# The benchmark's own seed-0 models (benchmarks/run.py --classifier, benchmarks/classifier.md: the recipe's default
# trigger toward "zero"), on which the classifier defaults were first tuned, join the default zoo's development half as
# variant 2 (DEFAULT_TRIGGER: no trigger flag). Added 2026-12-04: the CNN zoo's own development models were all strong
# backdoors (anomaly index 34-150), while the benchmark's Blended CNN scores 7.9.
DEFAULT_TRIGGER = 2
BENCHMARK_DEVELOPMENT = {"cnn": (("badnet", 0), ("blended", 0))}
# The fresh held-out set: new model seeds, built only after the verdict and every other default had been chosen (on
# the development half) and the held-out half had been read; every one of its models is held out, and it reports
# as its own split ("fresh"). The targets and trigger variants follow the zoo's rule; BadCLIP's surrogate is still
# the never-poisoned model of seed + 3 (6 and 7: models of the first zoo, never compared with these).
FRESH = {
    "clip": {"seeds": (3, 4), "clean_seeds": tuple(range(12, 18))},
    "cnn": {"seeds": (4, 5), "clean_seeds": tuple(range(16, 24))},
}
SPLITS = ("development", "held-out", "fresh")
COLUMNS = (
    "name", "split", "attack", "target", "seed", "variant", "poison_converged", "ca_poisoned", "asr_poisoned",
    "poison_rate", "verdict", "verdict_statistic", "anomaly_index", "recovered_target", "named_correctly",
    "winner_index", "max_anomaly_index", "max_candidate",
    "winner_logit_index", "max_logit_index", "max_logit_candidate", "winner_lift", "max_lift", "max_lift_candidate",
    "winner_or_max_lift", "winner_or_max_lift_candidate", "untargeted_winner", "inverted_trigger_asr",
    "search_trigger_asr", "winner_or_max_or_search_lift", "winner_or_max_or_search_lift_candidate", "ca_before",
    "ca_after", "asr_before", "asr_after", "cleaned", "ra_asr", "reference_ra_asr", "poison_wall_s", "clean_wall_s",
    "search_lift", "confirmed_lift", "confirmed_candidate",
)  # fmt: skip
SUCCESS_ASR = 0.05  # cleaning succeeds when ASR after < 5% ...
SUCCESS_CA_DROP = 0.02  # ... and clean accuracy drops by at most 2 points


@dataclass(frozen=True)
class ZooModel:
    """One model of the zoo: ``attack`` is ``"none"`` for a never-poisoned one."""

    attack: str
    seed: int
    target: str | None = None
    variant: int = 0
    held_out: bool = False  # a fresh model is held out too
    poison_args: tuple[str, ...] = field(default=(), compare=False)
    family: str = "clip"  # or "cnn": an image classifier (recipes/poison_classifier.py, clean_classifier.py)
    fresh: bool = False  # of the fresh held-out set (FRESH), built after every default was fixed

    @property
    def name(self) -> str:
        prefix = "" if self.family == "clip" else f"{self.family}_"
        if self.attack == "none":
            return f"{prefix}none_s{self.seed}"
        return f"{prefix}{self.attack}_{self.target}_s{self.seed}_v{self.variant}"

    @property
    def split(self) -> str:
        return "fresh" if self.fresh else "held-out" if self.held_out else "development"


def zoo_models(targets=None, seeds=None, clean_seeds=None, attacks=None, family="clip", fresh=False):
    """The zoo's models with their split (module docstring): backdoored ones first, then never-poisoned ones.
    ``None`` takes the family's default (``FAMILIES``; with ``fresh``, the seeds of ``FRESH``: every model then
    belongs to the fresh held-out set)."""
    defaults = {**FAMILIES[family], **FRESH.get(family, {})} if fresh else FAMILIES[family]
    targets = defaults["targets"] if targets is None else targets
    seeds = defaults["seeds"] if seeds is None else seeds
    clean_seeds = defaults["clean_seeds"] if clean_seeds is None else clean_seeds
    attacks = defaults["attacks"] if attacks is None else attacks
    models = []
    for attack in attacks:
        for target_index, target in enumerate(targets):
            for seed_index, seed in enumerate(seeds):
                variant = (target_index // 2 + seed_index) % 2
                held_out = fresh or (target_index + seed_index) % 2 == 1
                arguments = ["--attack", attack, "--target", target, *VARIANTS[attack][variant]]
                models.append(ZooModel(attack, seed, target, variant, held_out, tuple(arguments), family, fresh))
    if not fresh and (targets, seeds) == (defaults["targets"], defaults["seeds"]):
        for attack, seed in BENCHMARK_DEVELOPMENT.get(family, ()):  # the default zoo: the benchmark's models too
            if attack in attacks:
                arguments = ("--attack", attack, "--target", "zero")
                models.append(ZooModel(attack, seed, "zero", DEFAULT_TRIGGER, False, arguments, family))
    for seed_index, seed in enumerate(clean_seeds):
        held_out = fresh or seed_index % 2 == 1
        models.append(ZooModel("none", seed, None, 0, held_out, NEVER_POISONED_ARGS, family, fresh))
    return models


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("--zoo-dir", default=str(Path.home() / ".cache" / "clipclean" / "zoo"))
    parser.add_argument("--output", default="benchmarks/results")
    parser.add_argument(
        "--family", choices=sorted(FAMILIES), default="clip", help="CLIPs, or small CNN image classifiers"
    )
    parser.add_argument("--targets", nargs="+", default=None, help="default: the family's (FAMILIES)")
    parser.add_argument(
        "--seeds", nargs="*", type=int, default=None,
        help="model seeds of backdoored models (none given: never-poisoned models only)",
    )  # fmt: skip
    parser.add_argument("--clean-seeds", nargs="+", type=int, default=None, help="never-poisoned models' seeds")
    parser.add_argument("--attacks", nargs="+", default=None, choices=ATTACKS)
    parser.add_argument("--jobs", type=int, default=1, help="jobs run at once (one CPU thread each)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N models of each attack and of clean")
    parser.add_argument(
        "--split", choices=["development", "held-out", "both", "fresh"], default="both",
        help="which models to build: a half of the zoo, both halves, or the fresh held-out set (FRESH); the report "
        "covers every finished model of all three",
    )  # fmt: skip
    parser.add_argument("--poison-args", default="", help="extra poison_clip.py flags (smoke: --epochs 2)")
    parser.add_argument(
        "--poison-rate", type=float, default=None,
        help="fraction of training pairs poisoned in each backdoored model (default: the recipe's, 5%%); give "
        "another --zoo-dir, since model names do not carry the rate",
    )  # fmt: skip
    parser.add_argument("--clean-args", default="", help="extra clean_clip.py flags for every cleaning")
    parser.add_argument(
        "--clean-name",
        default="clean",
        help="folder of the cleaning under each model (another name keeps a cleaning with other --clean-args apart)",
    )
    parser.add_argument(
        "--persistence", type=int, default=0, help="retuning attack on N held-out models per attack and target"
    )
    parser.add_argument(
        "--persistence-targets", nargs="+", default=None, help="only these targets' models (default: every target)"
    )
    parser.add_argument("--persistence-args", default="", help="extra eval/complete_unlearning.py flags")
    parser.add_argument(
        "--no-clean", action="store_true",
        help="build (poison) the models and stop: for benchmarks/baselines.py's tuning, which needs the models only",
    )  # fmt: skip
    parser.add_argument("--report-only", action="store_true", help="no training: tables from finished jobs")
    parser.add_argument(
        "--prefix", default=None,
        help="name of the report files (PREFIX.csv, .md, .json, _roc.png); default: zoo, zoo_FAMILY, + _CLEAN_NAME",
    )  # fmt: skip
    parser.add_argument(
        "--choose-from",
        default=None,
        metavar="CSV",
        help="choose each statistic's threshold and the verdict on every model of this earlier zoo CSV (models "
        "already read: development, held-out and fresh alike) instead of the development half; the report's splits "
        "are then all tests of that choice",
    )
    parser.add_argument(
        "--rows-from", default=None, metavar="CSV",
        help="an earlier zoo CSV (for instance the committed benchmarks/results/zoo.csv): a model with no finished "
        "folder under --zoo-dir (a lost cache) is reported with its row from there, as recorded then",
    )  # fmt: skip
    return parser.parse_args(argv)


def selected_models(args: argparse.Namespace) -> list[ZooModel]:
    fresh = args.split == "fresh"
    models = zoo_models(args.targets, args.seeds, args.clean_seeds, args.attacks, args.family, fresh)
    if args.split not in ("both", "fresh"):
        models = [model for model in models if model.split == args.split]
    if args.limit is not None:
        kept, counts = [], Counter()
        for model in models:
            if counts[model.attack] < args.limit:
                kept.append(model)
                counts[model.attack] += 1
        models = kept
    return models


def run_script(script: str, arguments: list[str], output: Path, output_flag: str = "--output_dir") -> dict:
    """Run ``recipes/`` or ``eval/`` ``script`` in its own process (one CPU thread) unless ``output`` holds its
    results; an earlier run interrupted after a checkpoint is resumed. Returns the results."""
    results = output / "results.json" if output_flag == "--output_dir" else output
    with _LOCKS_GUARD:  # two jobs may need one model (a BadCLIP surrogate is also a never-poisoned zoo model)
        lock = _LOCKS.setdefault(str(output), threading.Lock())
    with lock:
        _run_once(script, arguments, output, output_flag, results)
    return json.loads(results.read_text())


_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _run_once(script: str, arguments: list[str], output: Path, output_flag: str, results: Path) -> None:
    if not results.is_file():
        command = [sys.executable, str(ROOT / script), *arguments, output_flag, str(output), "--no-progress"]
        if output_flag == "--output_dir" and any((output / "checkpoints").glob("checkpoint_*")):
            command += ["--resume_from_checkpoint", "latest"]
        elif output_flag == "--output_dir" and output.exists():
            command += ["--overwrite"]  # a run that died before its first checkpoint: start it again
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        log = Path(f"{results}.log")
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as handle:
            subprocess.run(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, check=True)


def _photo_pattern(zoo: Path) -> str:
    path = zoo / "astronaut.png"
    if not path.is_file():
        from PIL import Image
        from skimage import data

        zoo.mkdir(parents=True, exist_ok=True)
        Image.fromarray(data.astronaut()).save(path)
    return str(path)


def seed_flags(seed: int) -> list[str]:
    """A poisoning run's ``--seed`` and ``--trigger-seed``, both ``seed``: one trigger per model seed, as every zoo set
    and benchmark model was built (the recipes' own default is one trigger for every run seed)."""
    return ["--seed", str(seed), "--trigger-seed", str(seed)]


def poison(model: ZooModel, zoo: Path, args: argparse.Namespace) -> dict:
    arguments = [_photo_pattern(zoo) if a == PHOTO_PATTERN else a for a in model.poison_args]
    if model.attack != "none" and args.poison_rate is not None:
        arguments += ["--poison-rate", str(args.poison_rate)]  # backdoored models only: a never-poisoned one has 0
    if model.family == "cnn":
        return run_script("recipes/poison_classifier.py", [*arguments, *seed_flags(model.seed),
                          *args.poison_args.split()], zoo / model.name / "poison")  # fmt: skip
    if model.attack == "badclip":
        surrogate = ZooModel("none", model.seed + 3)
        run_script("recipes/poison_clip.py", [*NEVER_POISONED_ARGS, *seed_flags(surrogate.seed),
                   *args.poison_args.split()], zoo / surrogate.name / "poison")  # fmt: skip
        arguments += ["--victim-model", str(zoo / surrogate.name / "poison" / "model")]
    return run_script(
        "recipes/poison_clip.py", [*arguments, *seed_flags(model.seed), *args.poison_args.split()],
        zoo / model.name / "poison",
    )  # fmt: skip


def clean(model: ZooModel, zoo: Path, args: argparse.Namespace) -> dict:
    poisoned = zoo / model.name / "poison"
    arguments = ["--model", str(poisoned / "model"), "--clean-data", "digits:defender", "--eval-data", "digits:test",
                 "--seed", str(model.seed)]  # fmt: skip
    if model.attack != "none":  # the true trigger measures ASR only; the cleaning itself is untargeted
        arguments += ["--eval-trigger", str(poisoned / "trigger.json")]
    # a CNN: BI-BAU with the CNN settings of benchmarks/classifier.md (--clean-args come after, and win)
    family_flags = CNN_BIBAU_FLAGS if model.family == "cnn" else []
    recipe = "recipes/clean_classifier.py" if model.family == "cnn" else "recipes/clean_clip.py"
    output = zoo / model.name / args.clean_name
    return run_script(recipe, [*arguments, *family_flags, *args.clean_args.split()], output)


def retune_file(zoo: Path, model: ZooModel, role: str, seed: int, clean_name: str = "clean") -> Path:
    """Where a retuning attack's results go: ``MODEL/retune_{cleaned,reference}_sSEED.json`` for the default cleaning
    folder, ``MODEL/retune_CLEAN-NAME_sSEED.json`` for the cleaned model of another one."""
    label = clean_name if role == "cleaned" and clean_name != "clean" else role
    return zoo / model.name / f"retune_{label}_s{seed}.json"


def persistence(model: ZooModel, zoo: Path, args: argparse.Namespace) -> dict:
    """Mean RA-ASR over three retuning seeds of the cleaned model and of the same-seed never-poisoned model."""
    trigger = zoo / model.name / "poison" / "trigger.json"
    reference = zoo / ZooModel("none", model.seed).name / "poison" / "model"
    measured = {}
    for role, checkpoint in (("cleaned", zoo / model.name / args.clean_name / "cleaned"), ("reference", reference)):
        rates = []
        for seed in (0, 1, 2):
            results = run_script(
                "eval/complete_unlearning.py",
                ["--model", str(checkpoint), "--trigger", str(trigger), "--target", model.target, "--clean-data",
                 "digits:defender", "--eval-data", "digits:test", "--seed", str(seed),
                 *args.persistence_args.split()],
                retune_file(zoo, model, role, seed, args.clean_name), output_flag="--output",
            )  # fmt: skip
            rates.append(results["complete"]["ra_asr"])
        measured[role] = statistics.mean(rates)
    return measured


def persistence_models(
    models: list[ZooModel], zoo: Path, per_target: int, targets: Sequence[str] | None = None
) -> list[ZooModel]:
    """The models the retuning attack runs on: the first ``per_target`` held-out backdoored models of each attack and
    target (of ``targets``; default: every target) whose backdoor took (``poison_converged``; a model the attack did
    not implant has nothing to re-learn)."""
    chosen, taken = [], {}
    for model in models:
        if model.attack == "none" or not model.held_out or (targets and model.target not in targets):
            continue
        results = zoo / model.name / "poison" / "results.json"
        if not results.is_file() or json.loads(results.read_text()).get("converged") is False:
            continue
        key = (model.attack, model.target)
        if taken.get(key, 0) < per_target:
            taken[key] = taken.get(key, 0) + 1
            chosen.append(model)
    return chosen


def interleaved(models: list[ZooModel]) -> list[ZooModel]:
    """The build order: one model of each kind (never-poisoned, then each attack) in turn, so that a build stopped
    early leaves every kind and both halves covered about equally."""
    kinds = {}
    for model in models:
        kinds.setdefault(model.attack, []).append(model)
    order = sorted(kinds, key=lambda kind: kind != "none")
    rounds = max((len(group) for group in kinds.values()), default=0)
    return [kinds[kind][index] for index in range(rounds) for kind in order if index < len(kinds[kind])]


def build(models: list[ZooModel], zoo: Path, args: argparse.Namespace) -> None:
    """Poison then clean every model, ``args.jobs`` at a time, in ``interleaved`` order. A job that fails is
    reported (its log is next to its ``results.json``) and the others go on."""
    started = time.time()
    ordered = interleaved(models)

    def job(model: ZooModel) -> str:
        try:
            poison(model, zoo, args)
            if not args.no_clean:
                clean(model, zoo, args)
        except subprocess.CalledProcessError as error:
            return f"{model.name} FAILED (exit {error.returncode}; see {zoo / model.name}/*/results.json.log)"
        return model.name

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for done, name in enumerate(pool.map(job, ordered), start=1):
            print(f"[{done}/{len(models)}] {name} ({time.time() - started:.0f} s)", flush=True)
    if args.persistence:
        chosen = persistence_models(models, zoo, args.persistence, args.persistence_targets)
        needed = {ZooModel("none", model.seed) for model in chosen}
        for reference in needed:
            poison(ZooModel("none", reference.seed, poison_args=NEVER_POISONED_ARGS), zoo, args)
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            list(pool.map(lambda model: persistence(model, zoo, args), chosen))


def row_of(model: ZooModel, zoo: Path, clean_name: str = "clean") -> dict | None:
    """The model's CSV row (its cleaning in ``MODEL/clean_name``), or ``None`` while that has not finished."""
    poisoned_path = zoo / model.name / "poison" / "results.json"
    cleaned_path = zoo / model.name / clean_name / "results.json"
    if not (poisoned_path.is_file() and cleaned_path.is_file()):
        return None
    poisoned, cleaned = json.loads(poisoned_path.read_text()), json.loads(cleaned_path.read_text())
    inversion = cleaned.get("inversion") or {}
    before, after = cleaned["before"], cleaned["after"]
    row = {
        "name": model.name, "split": model.split, "attack": model.attack, "target": model.target or "",
        "seed": model.seed, "variant": model.variant, "poison_converged": poisoned.get("converged"),
        "ca_poisoned": poisoned.get("clean_accuracy"), "asr_poisoned": poisoned.get("attack_success_rate"),
        "poison_rate": poisoned.get("poison_rate"), "verdict": inversion.get("verdict"),
        "anomaly_index": inversion.get("anomaly_index"),
        "verdict_statistic": recorded_statistic(cleaned, model.family), "winner_index": None,
        "recovered_target": inversion.get("recovered_target"),
        "named_correctly": None if model.attack == "none" else inversion.get("recovered_target") == model.target,
        "ca_before": before["clean_accuracy"], "ca_after": after["clean_accuracy"],
        "asr_before": before["attack_success_rate"], "asr_after": after["attack_success_rate"],
        "max_anomaly_index": None, "max_candidate": None, "winner_logit_index": None, "max_logit_index": None,
        "max_logit_candidate": None, "winner_lift": None, "max_lift": None, "max_lift_candidate": None,
        "winner_or_max_lift": None, "winner_or_max_lift_candidate": None,
        "search_trigger_asr": inversion.get("search_trigger_asr"), "winner_or_max_or_search_lift": None,
        "winner_or_max_or_search_lift_candidate": None, "search_lift": None,
        "untargeted_winner": untargeted_winner(inversion), **confirmed_columns(inversion),
        # the ASR of the trigger the cleaning inverted (toward its named target) on the evaluation set, before cleaning
        "inverted_trigger_asr": (cleaned.get("inverted_trigger_asr") or {}).get("before"),
        "cleaned": None, "ra_asr": None, "reference_ra_asr": None,
        "poison_wall_s": poisoned.get("wall_time_s"), "clean_wall_s": cleaned.get("wall_time_s"),
    }  # fmt: skip
    candidate_asr = inversion.get("candidate_asr") or {}
    if candidate_asr:  # every verdict statistic from the recorded per-candidate ASRs (no rerun)
        row.update(verdict_statistic_columns(candidate_asr, inversion))
    if model.attack != "none":
        drop = row["ca_before"] - row["ca_after"]
        row["cleaned"] = row["asr_after"] < SUCCESS_ASR and drop <= SUCCESS_CA_DROP
        retuned = [retune_file(zoo, model, role, seed, clean_name) for role in ("cleaned", "reference")
                   for seed in (0, 1, 2)]  # fmt: skip
        if all(path.is_file() for path in retuned):
            rates = [json.loads(path.read_text())["complete"]["ra_asr"] for path in retuned]
            row["ra_asr"], row["reference_ra_asr"] = statistics.mean(rates[:3]), statistics.mean(rates[3:])
    return row


# How recorded_rows reads each column of an earlier CSV back (every other column is a number; an empty cell is None)
TEXT_COLUMNS = ("name", "split", "attack", "target", "verdict", "verdict_statistic", "recovered_target",
                "max_candidate", "max_logit_candidate", "max_lift_candidate", "winner_or_max_lift_candidate",
                "winner_or_max_or_search_lift_candidate", "untargeted_winner", "confirmed_candidate")  # fmt: skip
INTEGER_COLUMNS = ("seed", "variant")
BOOLEAN_COLUMNS = ("poison_converged", "named_correctly", "cleaned")


def recorded_rows(path: str | Path) -> dict[str, dict]:
    """The rows of an earlier zoo CSV (written by :func:`report`) by model name, typed as :func:`row_of` makes them;
    a column the CSV lacks (added since) is ``None``."""
    import csv

    rows = {}
    with open(path, newline="", encoding="utf-8") as handle:
        for raw in csv.DictReader(handle):
            row = {}
            for column in COLUMNS:
                text = raw.get(column) or ""
                if column == "target":
                    row[column] = text
                elif not text:
                    row[column] = None
                elif column in TEXT_COLUMNS:
                    row[column] = text
                elif column in INTEGER_COLUMNS:
                    row[column] = int(text)
                elif column in BOOLEAN_COLUMNS:
                    row[column] = {"True": True, "False": False}[text]
                else:
                    row[column] = float(text)
            rows[row["name"]] = row
    return rows


def recorded_statistic(cleaned: dict, family: str) -> str:
    """The verdict statistic a cleaning used: its inversion report's (every run since the report records it), else
    its config's (``None`` there: a run from when the statistic first became a per-inverter default and was not yet
    recorded, which means that first default, ``UNRECORDED_DEFAULTS``), else ``"winner"`` (the only one before)."""
    inversion = cleaned.get("inversion") or {}
    if inversion.get("verdict_statistic"):
        return inversion["verdict_statistic"]
    configured = ((cleaned.get("config") or {}).get("defense") or {}).get("inversion") or {}
    if "verdict_statistic" in configured:
        return configured["verdict_statistic"] or UNRECORDED_DEFAULTS[family]
    return "winner"


# The per-inverter defaults while results.json did not record the statistic (commits 95329d0 to 7159b3c)
UNRECORDED_DEFAULTS = {"clip": "winner-lift", "cnn": "winner"}


def verdict_statistic_columns(candidate_asr: dict[str, float], inversion: dict) -> dict:
    """The score and named candidate of every statistic of ``VERDICT_STATISTICS``, computed from a cleaning's
    per-candidate targeted ASRs by :func:`clipclean.inversion.verdict_score` (the function the verdict itself uses).
    The untargeted winner is the report's ``untargeted_winner``, else the recorded target unless the verdict named
    another class; when it is unknown (a verdict-named target in a report from before ``untargeted_winner``), the
    statistics that score the winner are ``None``."""
    from clipclean.inversion import search_lift, verdict_score

    names = list(candidate_asr)
    rates = [candidate_asr[name] for name in names]
    named = untargeted_winner(inversion)
    winner = names.index(named) if named in names else None
    columns = {}
    search_rate = inversion.get("search_trigger_asr")
    # the search trigger's lift before its ln(K) handicap: with winner_lift and max_lift, every combined lift
    # statistic at any handicap follows from the CSV (InversionConfig.lift_handicap)
    columns["search_lift"] = None if search_rate is None or winner is None else search_lift(rates, search_rate)
    for statistic, (score_key, name_key) in VERDICT_STATISTICS.items():
        if winner is None and statistic.startswith("winner"):
            columns[score_key] = None
            continue
        if statistic == "winner-or-max-or-search-lift" and search_rate is None:
            continue  # a report from before the search trigger's ASR was recorded: unknown, left empty
        score, position = verdict_score(rates, statistic, winner, search_rate)
        columns[score_key] = score
        if name_key not in COLUMNS_NAMED_BY_WINNER:
            columns[name_key] = names[position]
    return columns


def confirmed_columns(inversion: dict) -> dict:
    """The largest confirmed lift of the verdict's re-tested candidates and its candidate (``InversionConfig.
    confirm_top``; ``None`` where nothing was re-tested)."""
    lifts = inversion.get("confirmed_lifts") or {}
    best = max(lifts, key=lifts.get) if lifts else None
    return {"confirmed_lift": lifts.get(best), "confirmed_candidate": best}


def untargeted_winner(inversion: dict) -> str | None:
    """The untargeted search's target: the report's ``untargeted_winner``, else the recorded target unless the
    verdict named another class (``None``: unknown, a verdict-named report from before the winner was recorded)."""
    if inversion.get("untargeted_winner"):
        return inversion["untargeted_winner"]
    return inversion.get("recovered_target") if inversion.get("named_by") != "verdict" else None


def counted(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """``(backdoored, clean)`` rows that the detection and cleaning metrics count. A backdoored model counts only
    when its poisoning converged (``poison_converged``: CA and ASR over the recipe's bars, ASR >= 50%): a model the
    attack did not implant carries no backdoor to find. The rest are reported as ``poison_not_converged``."""
    backdoored = [row for row in rows if row["attack"] != "none" and row["poison_converged"] is not False]
    return backdoored, [row for row in rows if row["attack"] == "none"]


def wilson_interval(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (``(nan, nan)`` for ``total == 0``)."""
    if total == 0:
        return math.nan, math.nan
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion(hits: int, total: int) -> dict:
    """``{"k", "n", "rate", "ci95"}`` of ``hits`` out of ``total`` (rate NaN for none), with its Wilson interval."""
    return {"k": hits, "n": total, "rate": hits / total if total else math.nan, "ci95": wilson_interval(hits, total)}


def split_metrics(rows: list[dict]) -> dict:
    """Detection and cleaning metrics of one split's rows (module docstring of the report)."""
    from sklearn.metrics import roc_auc_score

    backdoored, clean = counted(rows)

    def rate(selected, predicate):
        return proportion(sum(1 for row in selected if predicate(row)), len(selected))

    scored = [(default_score(row), row["attack"] != "none") for row in backdoored + clean]
    scores, labels = [s for s, _ in scored if s is not None], [y for s, y in scored if s is not None]
    auc = roc_auc_score(labels, scores) if len(set(labels)) == 2 else math.nan  # rows without a score left out
    drops = [row["ca_before"] - row["ca_after"] for row in backdoored]
    return {
        "n_backdoored": len(backdoored),
        "n_clean": len(clean),
        "roc_auc": auc,
        "true_positive": rate(backdoored, lambda row: row["verdict"] == "backdoored"),
        "false_positive": rate(clean, lambda row: row["verdict"] == "backdoored"),
        "target_named": rate(backdoored, lambda row: row["named_correctly"]),
        "cleaning_success": rate(backdoored, lambda row: row["cleaned"]),
        "median_ca_drop": statistics.median(drops) if drops else math.nan,
        "worst_ca_drop": max(drops) if drops else math.nan,
        "clean_winner": dict(Counter(row["recovered_target"] for row in clean)),
        "poison_not_converged": sum(1 for row in rows if row["attack"] != "none" and row["poison_converged"] is False),
        "clean_wall_s_median": statistics.median([row["clean_wall_s"] for row in rows]) if rows else math.nan,
    }


# Verdict statistics compared on the zoo (clipclean.inversion.VERDICT_STATISTICS): (column of the score, column of
# the named target), every one computed from the recorded per-candidate ASRs (the targeted inversions do not depend on
# the statistic). "winner": the anomaly index of the untargeted winner's targeted ASR (the default until 2026-12-03);
# "max-candidate": of the largest targeted ASR, naming that candidate; "-logit": the same on the ASRs' log-odds
# (these four were fixed before the development half was built); "-lift": the log-odds lead over the median
# candidate (added after 11 + 4 development models, from development numbers: benchmarks/README.md "Model zoo");
# "winner-or-max-lift": the winner's lift or the largest lift minus ln(K), whichever is larger (added 2026-12-03
# after the held-out half had been read: three of its four misses named a wrong winner; held-out numbers of this
# statistic are therefore not clean evidence); "winner-or-max-or-search-lift": that, or the untargeted search's own
# trigger's lift minus ln(K) (added 2026-12-04 after the fresh set's three BadNet misses had been diagnosed; picked by
# select_statistic on the rebuilt development half, then tested on the second fresh set, seeds 5-6, built after).
VERDICT_STATISTICS = {"winner": ("winner_index", "untargeted_winner"),
                      "max-candidate": ("max_anomaly_index", "max_candidate"),
                      "winner-logit": ("winner_logit_index", "untargeted_winner"),
                      "max-candidate-logit": ("max_logit_index", "max_logit_candidate"),
                      "winner-lift": ("winner_lift", "untargeted_winner"),
                      "max-candidate-lift": ("max_lift", "max_lift_candidate"),
                      "winner-or-max-lift": ("winner_or_max_lift", "winner_or_max_lift_candidate"),
                      "winner-or-max-or-search-lift": ("winner_or_max_or_search_lift",
                                                       "winner_or_max_or_search_lift_candidate")}  # fmt: skip
COLUMNS_NAMED_BY_WINNER = ("untargeted_winner",)
PREVIOUS_DEFAULT = ("winner", 2.5)  # the verdict before the zoo: select_statistic's last tie-break


def _inverter(family: str):
    """The inverter class that judges the family's models."""
    from clipclean.classifiers import ClassifierInversion
    from clipclean.inversion import BlindInversion

    return ClassifierInversion if family == "cnn" else BlindInversion


def default_statistic(family: str = "clip") -> str:
    """The verdict statistic the family's inverter uses by default."""
    return _inverter(family).default_verdict_statistic


def default_threshold(statistic: str, family: str = "clip") -> float:
    """The library's threshold of ``statistic`` for the family's inverter when the config sets none: the inverter's
    own for its default statistic (an image classifier's), else the statistic's (``DEFAULT_VERDICT_THRESHOLDS``)."""
    from clipclean.inversion import DEFAULT_VERDICT_THRESHOLDS

    inverter = _inverter(family)
    if statistic == inverter.default_verdict_statistic and inverter.default_verdict_threshold is not None:
        return inverter.default_verdict_threshold
    return DEFAULT_VERDICT_THRESHOLDS[statistic]


def default_score_column(family: str = "clip") -> str:
    """The CSV column of the verdict statistic that the family's inverter uses by default (the ROC curves and
    ROC-AUC score every model with it, whatever statistic its cleaning recorded)."""
    return VERDICT_STATISTICS[default_statistic(family)][0]


def default_score(row: dict) -> float | None:
    """A model's score under its family's default verdict statistic (``default_score_column``)."""
    return row[default_score_column("cnn" if row["name"].startswith("cnn_") else "clip")]


def choose_threshold(scores: list[float], labels: list[bool]) -> float:
    """The threshold (``score > t`` means backdoored) with the largest true-positive minus false-positive rate on
    ``scores``; ties go to the smaller threshold (a missed backdoor costs more than a false alarm). Midpoints between
    consecutive distinct scores are the candidates."""
    values = sorted(set(scores))
    candidates = [(low + high) / 2 for low, high in zip(values, values[1:])] or values
    positives, negatives = sum(labels), len(labels) - sum(labels)

    def youden(threshold: float) -> float:
        tpr = sum(1 for s, y in zip(scores, labels) if y and s > threshold) / max(positives, 1)
        fpr = sum(1 for s, y in zip(scores, labels) if not y and s > threshold) / max(negatives, 1)
        return tpr - fpr

    return max(candidates, key=lambda threshold: (youden(threshold), -threshold))


def statistic_rows(rows: list[dict], choice_rows: list[dict] | None = None) -> list[dict]:
    """Per verdict statistic: its threshold chosen on the development half (and its library default,
    ``clipclean.inversion.DEFAULT_VERDICT_THRESHOLDS``; an image classifier's default statistic at its inverter's own
    threshold), then the detection and naming rates on each half at that threshold. ``choice_rows``
    (``--choose-from``: every model of an earlier zoo, all of them already read) replace the development half as the
    set the thresholds and the verdict are chosen on; its numbers are ``chosen_on``."""
    table, family = [], "cnn" if rows and rows[0]["name"].startswith("cnn_") else "clip"
    for statistic, (score_key, name_key) in VERDICT_STATISTICS.items():
        usable = [row for row in sum(counted(rows), []) if row[score_key] is not None]
        if choice_rows is None:
            development = [row for row in usable if row["split"] == "development"]
        else:
            development = [row for row in sum(counted(choice_rows), []) if row[score_key] is not None]
        if not development:
            continue
        chosen = choose_threshold(
            [row[score_key] for row in development], [row["attack"] != "none" for row in development]
        )
        fixed = default_threshold(statistic, family)
        backdoored, clean = counted(development)
        gap = separation([row[score_key] for row in backdoored], [row[score_key] for row in clean])
        chosen_label = "chosen on development" if choice_rows is None else "chosen on --choose-from"
        for label, threshold in ((f"default {fixed:g}", fixed), (chosen_label, chosen)):
            entry = {"statistic": statistic, "threshold_rule": label, "threshold": threshold}
            sets = [(split, [row for row in usable if row["split"] == split]) for split in SPLITS]
            for split, selected in [*sets, ("chosen_on", development)]:
                backdoored, clean = counted(selected)
                entry[split] = {
                    "detected": sum(1 for row in backdoored if row[score_key] > threshold),
                    "n_backdoored": len(backdoored),
                    "named": sum(1 for row in backdoored if row[name_key] == row["target"]),
                    "false_alarms": sum(1 for row in clean if row[score_key] > threshold), "n_clean": len(clean),
                }  # fmt: skip
            entry["chosen_on"]["separation"] = gap
            if choice_rows is None:
                entry["development"]["separation"] = gap
            table.append(entry)
    selected = select_statistic(table)
    for entry in table:
        entry["selected"] = entry is selected
    return table


def separation(backdoored: list[float], clean: list[float]) -> float:
    """How far apart a statistic puts the two kinds of models, in units of the never-poisoned models' spread: the
    lowest backdoored score minus the highest never-poisoned one, over the never-poisoned scores' standard deviation
    (negative when they overlap; the raw gap when there are fewer than two never-poisoned scores or no spread)."""
    if not backdoored or not clean:
        return -math.inf
    gap = min(backdoored) - max(clean)
    spread = statistics.pstdev(clean) if len(clean) > 1 else 0.0
    return gap / spread if spread > 0 else gap


def select_statistic(table: list[dict]) -> dict | None:
    """The rule that picks the verdict from ``statistic_rows``' entries using the numbers of the set it was chosen on
    (``chosen_on``: the development half, or ``--choose-from``'s models) only: the largest
    true-positive minus false-positive rate; ties to the most targets named, then to the widest ``separation`` of
    backdoored from never-poisoned scores, then to the verdict before the zoo (``PREVIOUS_DEFAULT``: ``winner``, 2.5),
    then to the order of ``VERDICT_STATISTICS`` (a library default threshold before one chosen on development).

    The rule was fixed before the first development models were built; the ``separation`` tie-break was added on
    2026-12-04, when every statistic separated the CNN development half perfectly and the order alone would have
    picked the anomaly index, whose development margin was the thinnest (benchmarks/README.md, "The degenerate
    case"). It changes no CLIP choice (no tie there)."""

    def key(entry: dict) -> tuple:
        development = entry.get("chosen_on", entry["development"])
        tpr = development["detected"] / max(development["n_backdoored"], 1)
        fpr = development["false_alarms"] / max(development["n_clean"], 1)
        default = (entry["statistic"], entry["threshold"]) == PREVIOUS_DEFAULT
        return (tpr - fpr, development["named"], development.get("separation", -math.inf), default)

    best = None
    for entry in table:  # the first of equals wins
        if best is None or key(entry) > key(best):
            best = entry
    return best


def report(rows: list[dict], output: Path, prefix: str = "zoo", choice_rows: list[dict] | None = None) -> dict:
    """Write ``PREFIX.csv``, ``PREFIX.md``, ``PREFIX.json`` and the plots; return the metrics per split.
    ``choice_rows``: the models the verdict is chosen on instead of the development half (:func:`statistic_rows`)."""
    from clipclean.fileio import write_csv, write_json

    output.mkdir(parents=True, exist_ok=True)
    write_csv(output / f"{prefix}.csv", rows, COLUMNS)
    metrics = {}
    for split in SPLITS:
        selected = [row for row in rows if row["split"] == split]
        if not selected:
            continue
        metrics[split] = {"all": split_metrics(selected)}
        for attack in ATTACKS:
            chosen = [row for row in selected if row["attack"] in (attack, "none")]
            if any(row["attack"] == attack for row in chosen):
                metrics[split][attack] = split_metrics(chosen)
    statistics_table = statistic_rows(rows, choice_rows)
    write_json(output / f"{prefix}.json", {"metrics": metrics, "verdict_statistics": statistics_table})
    (output / f"{prefix}.md").write_text(markdown(metrics, rows, statistics_table, prefix))
    _plots(rows, output, prefix)
    return metrics


def _format_rate(entry: dict) -> str:
    if not entry["n"]:
        return "-"
    low, high = entry["ci95"]
    return f"{entry['k']}/{entry['n']} ({100 * entry['rate']:.0f}%, 95% CI {100 * low:.0f}-{100 * high:.0f})"


def markdown(metrics: dict, rows: list[dict], statistics_table: list[dict], prefix: str = "zoo") -> str:
    derived = f"<!-- derived: benchmarks/results/{prefix}.csv, by benchmarks/zoo.py -->"
    lines = [
        derived,
        "| split | models | ROC-AUC | backdoored called backdoored | clean called backdoored | target named top-1 | "
        "cleaning success | CA drop median / worst (points) | untargeted winner on clean models |",
        "|---|---|---:|---|---|---|---|---|---|",
    ]
    verdicts = any(row["verdict"] is not None for row in rows)  # none from a baseline defense's cleaning
    for split, by_group in metrics.items():
        for group, entry in by_group.items():
            winners = ", ".join(f"{name} {count}" for name, count in sorted(entry["clean_winner"].items()))
            winners = winners if verdicts else ""  # a cleaning without a search names no winner
            detection = (
                f"{entry['roc_auc']:.3f} | {_format_rate(entry['true_positive'])} | "
                f"{_format_rate(entry['false_positive'])} | {_format_rate(entry['target_named'])}"
                if verdicts
                else "- | - | - | -"
            )
            lines.append(
                f"| {split} | {group}: {entry['n_backdoored']} backdoored + {entry['n_clean']} clean"
                f"{_not_implanted(entry)} | {detection} | "
                f"{_format_rate(entry['cleaning_success'])} | {100 * entry['median_ca_drop']:.1f} / "
                f"{100 * entry['worst_ca_drop']:.1f} | {winners or '-'} |"
            )
    shown = [split for split in SPLITS if split != "fresh" or any(row["split"] == "fresh" for row in rows)]
    if statistics_table and "chosen on --choose-from" in {entry["threshold_rule"] for entry in statistics_table}:
        shown = ["chosen_on", *[split for split in SPLITS if any(row["split"] == split for row in rows)]]
    header = " | ".join(
        f"{split.replace('chosen_on', 'chosen on (--choose-from)')}: detected / named / false alarms"
        for split in shown
    )
    if statistics_table:  # none without models to choose a threshold on (a fresh set alone)
        lines += ["", derived, f"| verdict statistic | threshold | {header} |", "|---|---|" + "---|" * len(shown)]
    for entry in statistics_table:
        cells = " | ".join(
            f"{e['detected']}/{e['n_backdoored']} / {e['named']}/{e['n_backdoored']} / "
            f"{e['false_alarms']}/{e['n_clean']}"
            for e in (entry[split] for split in shown)
        )
        chosen = " **selected**" if entry.get("selected") else ""
        lines.append(
            f"| {entry['statistic']}{chosen} | {entry['threshold']:.2f} ({entry['threshold_rule']}) | {cells} |"
        )
    lines += ["", "| model | split | CA/ASR poisoned | verdict (score) | named | ASR after | CA before -> after |",
              "|---|---|---|---|---|---:|---|"]  # fmt: skip
    for row in rows:
        lines.append(
            f"| {row['name']} | {row['split']} | {_pct(row['ca_poisoned'])}/{_pct(row['asr_poisoned'])} | "
            f"{_verdict_cell(row)} | {row['recovered_target'] or '-'} | {_pct(row['asr_after'])} | "
            f"{_pct(row['ca_before'])} -> {_pct(row['ca_after'])} |"
        )
    lines += persistence_lines(rows, derived)
    return "\n".join(lines) + "\n"


def persistence_lines(rows: list[dict], derived: str = "") -> list[str]:
    """The retuning attack's table (the models with ``ra_asr``; none without ``--persistence``): mean RA-ASR over
    three retuning seeds, the same-seed never-poisoned model's, their difference and the persistence criterion
    (``clipclean.complete.PERSISTENCE_MARGIN`` points at most)."""
    from clipclean.complete import PERSISTENCE_MARGIN

    retuned = [row for row in rows if row["ra_asr"] is not None and row["reference_ra_asr"] is not None]
    if not retuned:
        return []
    lines = [
        "",
        f"Retuning attack, three retuning seeds; persistent: RA-ASR at most {100 * PERSISTENCE_MARGIN:.0f} points "
        "above the same-seed never-poisoned model's.",
        "",
        derived,
        "| model | verdict | cleaned (bar) | ASR % after | RA-ASR % | reference RA-ASR % | difference (points) "
        "| persistent |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for row in retuned:
        difference = row["ra_asr"] - row["reference_ra_asr"]
        lines.append(
            f"| {row['name']} | {row['verdict'] or '-'} | {row['cleaned']} | {_pct(row['asr_after'])} | "
            f"{_pct(row['ra_asr'])} | {_pct(row['reference_ra_asr'])} | {100 * difference:+.1f} | "
            f"{difference <= PERSISTENCE_MARGIN} |"
        )
    return lines


def _not_implanted(entry: dict) -> str:
    missed = entry["poison_not_converged"]
    return f" (+{missed} the attack did not implant, not counted)" if missed else ""


def _verdict_cell(row: dict) -> str:
    """``verdict (score)``; ``-`` for a cleaning that gives none (a baseline defense)."""
    if row["verdict"] is None:
        return "-"
    return row["verdict"] if row["anomaly_index"] is None else f"{row['verdict']} ({row['anomaly_index']:.2f})"


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _plots(rows: list[dict], output: Path, prefix: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from sklearn.metrics import roc_curve
    except ImportError:  # matplotlib is a dev extra
        return
    figure, axis = plt.subplots(figsize=(4.5, 4))
    curves = 0
    for split in SPLITS:
        selected = [row for row in sum(counted(rows), []) if row["split"] == split and default_score(row) is not None]
        labels = [row["attack"] != "none" for row in selected]
        if len(set(labels)) == 2:
            fpr, tpr, _ = roc_curve(labels, [default_score(row) for row in selected])
            axis.plot(fpr, tpr, label=split)
            curves += 1
    if curves:  # none for a cleaning without a verdict (a baseline defense)
        axis.plot([0, 1], [0, 1], "k:", linewidth=0.8)
        axis.set(
            xlabel="false positive rate", ylabel="true positive rate", title="verdict score ROC (default statistic)"
        )
        axis.legend()
        figure.tight_layout()
        figure.savefig(output / f"{prefix}_roc.png", dpi=120)
    plt.close(figure)
    figure, axis = plt.subplots(figsize=(6, 3.5))
    present = [split for split in SPLITS if any(row["split"] == split for row in rows)]
    groups = [(split, attack) for split in present for attack in ATTACKS]
    kinds = (("backdoored", lambda r: r["verdict"] == "backdoored"), ("named", lambda r: r["named_correctly"]),
             ("cleaned", lambda r: r["cleaned"]))  # fmt: skip
    width = 0.25
    for offset, (label, predicate) in enumerate(kinds):
        values = []
        for split, attack in groups:
            chosen = [row for row in counted(rows)[0] if row["split"] == split and row["attack"] == attack]
            values.append(sum(1 for row in chosen if predicate(row)) / len(chosen) if chosen else 0)
        axis.bar([index + offset * width for index in range(len(groups))], values, width, label=label)
    axis.set_xticks([index + width for index in range(len(groups))])
    axis.set_xticklabels([f"{attack}\n{split}" for split, attack in groups], fontsize=7)
    axis.set(ylabel="fraction of models", ylim=(0, 1.05))
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(output / f"{prefix}_by_attack.png", dpi=120)
    plt.close(figure)


def reported_models(models: list[ZooModel], args: argparse.Namespace) -> list[ZooModel]:
    """The models the report covers: the selected ones, then every other model of the family's zoo and fresh set at
    their defaults (``--targets``/``--attacks`` still apply), so that building one split does not drop the others
    from the tables; a model counts once."""
    others = [
        *zoo_models(args.targets, None, None, args.attacks, args.family),
        *(zoo_models(args.targets, None, None, args.attacks, args.family, fresh=True) if args.family in FRESH else []),
    ]
    reported = {model.name: model for model in models}
    for model in others:
        reported.setdefault(model.name, model)
    return list(reported.values())


def main(argv=None) -> dict:
    args = parse_args(argv)
    zoo, output = Path(args.zoo_dir).expanduser(), Path(args.output)
    models = selected_models(args)
    if not args.report_only:
        build(models, zoo, args)
    recorded = recorded_rows(args.rows_from) if args.rows_from else {}
    rows, from_csv = [], 0
    models = reported_models(models, args)
    for model in models:
        row = row_of(model, zoo, args.clean_name)
        if row is None and model.name in recorded:
            row, from_csv = recorded[model.name], from_csv + 1
        if row is not None:
            rows.append(row)
    print(f"{len(rows)} of {len(models)} models finished", f"({from_csv} from {args.rows_from})" if from_csv else "")
    prefix = "zoo" if args.family == "clip" else f"zoo_{args.family}"
    prefix += "" if args.clean_name == "clean" else f"_{args.clean_name}"
    prefix = args.prefix or prefix
    choice_rows = list(recorded_rows(args.choose_from).values()) if args.choose_from else None
    metrics = report(rows, output, prefix, choice_rows) if rows else {}
    print((output / f"{prefix}.md").read_text() if rows else "nothing finished yet")
    return {"rows": rows, "metrics": metrics}


if __name__ == "__main__":
    main(sys.argv[1:])
