"""The one registry helper (every registry, one rule for unknown names and options) and the Defense base contract:
a new defense is one file -- its config, its loss, one registration line -- and the base class does the rest."""

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from planted import PlantedBackdoorCLIP, clean_images

from clipclean.attacks import ATTACKS, build_attack, make_attack_config
from clipclean.classifiers import CLASSIFIER_ARCHITECTURES
from clipclean.defenses import DEFENSES, Defense, DefenseConfig, DefenseContext, build_defense, register_defense
from clipclean.defenses.objectives import OBJECTIVES
from clipclean.fileio import load_state_tree, save_state_tree
from clipclean.inversion import INVERTERS
from clipclean.models import PixelCLIP
from clipclean.registry import Registry, UnknownNameError, build_config
from clipclean.triggers import TRIGGER_FAMILIES

ROOT = Path(__file__).resolve().parents[1]
REGISTRIES = {
    "defense": DEFENSES,
    "attack": ATTACKS,
    "trigger family": TRIGGER_FAMILIES,
    "architecture": CLASSIFIER_ARCHITECTURES,
    "inverter": INVERTERS,
    "defense objective": OBJECTIVES,
}


@pytest.mark.parametrize("what", sorted(REGISTRIES))
def test_every_registry_is_one_registry_with_one_rule_for_unknown_names(what):
    registry = REGISTRIES[what]
    assert isinstance(registry, Registry) and registry.what == what and len(registry) >= 1
    unknown = "no-such-name" if isinstance(next(iter(registry)), str) else int
    assert unknown not in registry and registry.get(unknown) is None  # a Mapping: get/in do not raise
    with pytest.raises(UnknownNameError) as error:
        registry[unknown] if isinstance(unknown, str) else registry.lookup_class(unknown)
    assert isinstance(error.value, KeyError) and isinstance(error.value, ValueError)
    assert f"registered: {registry.names()}" in str(error.value) and registry.names() == sorted(registry.names())


def test_registry_registers_each_name_once_and_checks_names():
    registry = Registry("thing")
    registry.register("small-cnn", 1)
    registry.register("patch_blend", 2)
    registry.register(PixelCLIP, 3)
    with pytest.raises(ValueError, match="thing 'small-cnn' is already registered"):
        registry.register("small-cnn", 4)
    for bad in ("Upper", "has space", "", "-lead", "trail_", "two--dashes"):
        with pytest.raises(ValueError, match="lowercase identifiers"):
            registry.register(bad, 5)
    with pytest.raises(TypeError):
        registry.register(3.5, 6)
    assert registry["small-cnn"] == 1 and registry.names() == ["PixelCLIP", "patch_blend", "small-cnn"]

    class Subclass(PixelCLIP):
        pass

    assert registry.lookup_class(Subclass) == 3  # along the class hierarchy
    assert registry.unregister("patch_blend") == 2 and "patch_blend" not in registry


def test_build_config_drops_not_given_values_and_names_the_valid_options():
    @dataclass
    class Config:
        lr: float = 0.1
        steps: int = 3

    assert build_config(Config, {"lr": None, "steps": 5}) == Config(0.1, 5)
    with pytest.raises(UnknownNameError, match=r"Config has no option\(s\) \['lr_typo'\]; options: \['lr', 'steps'\]"):
        build_config(Config, {"lr_typo": 1.0})
    # the attacks and the defenses follow the same rule
    with pytest.raises(UnknownNameError, match=r"attack 'blended' has no option\(s\) \['trigger_size'\]; options:"):
        make_attack_config("blended", trigger_size=4)
    assert make_attack_config("blended", trigger_size=None, alpha=0.3).alpha == 0.3
    with pytest.raises(UnknownNameError, match="unknown attack 'sig'; registered: "):
        build_attack("sig", None, None)


# ---- a toy defense: its config and its loss, nothing else ----------------------------------------------------


@dataclass
class ToyConfig(DefenseConfig):
    """A toy defense's config: the weight of its one extra term."""

    weight: float = 0.5


class Toy(Defense):
    """Clean contrastive loss plus ``weight`` times the squared image-feature norm (a toy: any loss will do)."""

    report_means = ("feature_norm",)

    def loss(self, model, batch):
        images, tokens = batch
        (features,), tokens, scale = self.objective.forward(model, images, tokens)
        losses = {"clip_clean": self.objective.task_loss(features, tokens, scale), "norm": features.pow(2).mean()}
        losses["loss"] = losses["clip_clean"] + self.config.weight * losses["norm"]
        return losses, {"feature_norm": float(features.detach().norm(dim=-1).mean())}


def _state_round_trip(state: dict) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        save_state_tree(folder, "state", state)
        return load_state_tree(folder, "state")


def test_the_base_class_owns_round_bookkeeping_reports_and_state():
    register_defense("toy", ToyConfig, Toy)
    try:
        assert DEFENSES["toy"] == (ToyConfig, Toy) and Toy.name == "toy"
        model = PlantedBackdoorCLIP()
        images, captions = clean_images(32)
        batches = [(images[:16], model.tokenize(captions[:16])), (images[16:], model.tokenize(captions[16:]))]
        defense = build_defense("toy", model, DefenseContext(), {"weight": 2.0, "rounds": 2, "lr": None})
        assert defense.config == ToyConfig(rounds=2, weight=2.0)
        with pytest.raises(UnknownNameError, match=r"defense 'toy' has no option\(s\) \['wieght'\]; options: "):
            build_defense("toy", model, DefenseContext(), {"wieght": 2.0})

        totals: dict[str, float] = {}
        for batch in batches:
            losses, report = defense.forward(model, batch)
            for name, value in {**{k: float(v.detach()) for k, v in losses.items()}, **report}.items():
                totals[name] = totals.get(name, 0.0) + value
        stop, report = defense.end_round(0, batches)
        assert stop is False and report["round"] == 0 and report["steps"] == 2
        assert set(report) == {"round", "steps", "mean_clip_clean", "mean_norm", "mean_loss", "mean_feature_norm"}
        for name, total in totals.items():
            assert report[f"mean_{name}"] == pytest.approx(total / 2)
        assert defense.summary() == {"rounds": [report]} and defense.steps == 2

        defense.forward(model, batches[0])  # the next round starts from empty sums
        assert defense.end_round(1, batches)[1]["steps"] == 1 and defense.steps == 3

        restored = build_defense("toy", PlantedBackdoorCLIP(), DefenseContext(), {"weight": 2.0})
        restored.load_state_dict(_state_round_trip(defense.state_dict()))
        assert restored.summary() == json.loads(json.dumps(defense.summary())) and restored.steps == 3
    finally:
        DEFENSES.unregister("toy")
    assert "toy" not in DEFENSES


def test_a_defense_file_dropped_into_the_package_registers_itself(tmp_path):
    """One file is all a new defense needs: the package imports every module it holds (a second folder is added to
    the package's path here instead of writing into the source tree)."""
    (tmp_path / "toy_file_defense.py").write_text(
        textwrap.dedent(
            """
            from dataclasses import dataclass

            from clipclean.defenses.base import Defense, DefenseConfig, register_defense


            @dataclass
            class ToyFileConfig(DefenseConfig):
                weight: float = 1.0


            class ToyFile(Defense):
                def loss(self, model, batch):
                    raise NotImplementedError


            register_defense("toy-file", ToyFileConfig, ToyFile)
            """
        )
    )
    program = textwrap.dedent(
        f"""
        import importlib.util, sys
        spec = importlib.util.find_spec("clipclean.defenses")
        spec.submodule_search_locations.append({str(tmp_path)!r})
        package = importlib.util.module_from_spec(spec)
        sys.modules["clipclean.defenses"] = package
        spec.loader.exec_module(package)
        print(sorted(package.DEFENSES))
        """
    )
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=environment, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "'toy-file'" in done.stdout and "'bibau'" in done.stdout


def test_defenses_write_only_their_own_idea():
    """No built-in defense re-implements the base's bookkeeping (``forward``, ``end_round``, ``summary``,
    ``state_dict``, ``load_state_dict``): each writes its ``loss`` and its own hooks only."""
    owned = ("forward", "end_round", "summary", "state_dict", "load_state_dict")
    for name, (_, defense_class) in DEFENSES.items():
        assert "loss" in vars(defense_class), name
        assert not [method for method in owned if method in vars(defense_class)], name


def test_round_means_match_a_hand_computation_for_a_built_in_defense():
    model = PlantedBackdoorCLIP()
    images, captions = clean_images(32)
    batches = [(images[:16], model.tokenize(captions[:16])), (images[16:], model.tokenize(captions[16:]))]
    defense = build_defense("finetune", model, DefenseContext())
    values = [float(defense.forward(model, batch)[0]["loss"].detach()) for batch in batches]
    _, report = defense.end_round(0, batches)
    expected = sum(values) / 2
    assert report["mean_loss"] == report["mean_clip_clean"] == report["mean_clip_loss"] == pytest.approx(expected)
    assert defense.summary()["steps"] == 2 and torch.is_tensor(defense.forward(model, batches[0])[0]["loss"])
