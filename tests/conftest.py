"""Shared fixtures: offline Hub, tiny random-init CLIPs, tiny data. Nothing here downloads anything."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models run 4-5x faster on one thread than on two competing ones (measured on the 2-core CI machine); the
# recipes honour OMP_NUM_THREADS, in-process and in the subprocesses the tests start.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import importlib.util  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from clipclean.cli import poison_clip  # noqa: E402
from clipclean.models import load_clip  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def tiny_clip():
    """A random-init ``clipclean-tiny`` CLIP (32x32 images, embed dim 64), seeded."""
    torch.manual_seed(0)
    return load_clip("clipclean-tiny")


ROOT = Path(__file__).resolve().parents[1]


def load_script(relative_path: str):
    """Import a script of ``recipes/`` or ``eval/`` (they are not a package) as a fresh module."""
    path = ROOT / relative_path
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is being created
    spec.loader.exec_module(module)
    return module


def script_command(script, *arguments: str, processes: int = 1) -> tuple[list[str], dict[str, str]]:
    """``(command, env)`` running ``script`` (a path relative to the repository) in one process, or under
    ``accelerate launch`` with ``processes`` real CPU processes (gloo, a free port, one thread each)."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    if processes == 1:
        return [sys.executable, str(ROOT / script), *arguments], env
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes)),
        *("--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"),
        *("--main_process_port", str(port)),
        str(ROOT / script),
        *arguments,
    ]
    return command, env


def launch_two_processes(script, *arguments: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``script`` (a path relative to the repository) under ``accelerate launch`` with two real CPU processes
    (gloo, a free port, one thread each) and assert that it exits 0; returns the completed process."""
    command, env = script_command(script, *arguments, processes=2)
    completed = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-4000:]
    return completed


def save_tiny_clip_and_patch_trigger(folder: Path) -> Path:
    """``folder/model`` (a seeded random ``clipclean-tiny`` CLIP) and ``folder/trigger.json`` (a 4 px white patch at
    the bottom right, target "zero"): the inputs of the recipe smoke tests. Returns ``folder``."""
    from clipclean.hub import save_pretrained
    from clipclean.triggers import PatchBlendTrigger, save_trigger

    torch.manual_seed(0)
    save_pretrained(load_clip("clipclean-tiny"), folder / "model")
    save_trigger(
        PatchBlendTrigger.patch(32, 4, "bottom-right", "white"), folder / "trigger", metadata={"target": "zero"}
    )
    return folder


@pytest.fixture(scope="session")
def digits_clips(tmp_path_factory):
    """Tiny CLIPs trained from scratch on the built-in digits by ``recipes/poison_clip.py`` with its defaults, 2%
    poisoned and seed 0 (~1 minute each on one core), trained on first use and shared by the slow tests.

    ``digits_clips(name) -> (folder, results)`` with ``name`` one of ``"none"`` (never poisoned), ``"badnet"``,
    ``"blended"``, ``"badclip"`` (optimised against ``"surrogate"``, a never-poisoned model of seed 1000, not the
    reference ``"none"`` it is compared with); ``folder/model`` is the checkpoint,
    ``folder/trigger.json`` the true trigger, ``results`` the recipe's results (CA, ASR).
    """
    root = tmp_path_factory.mktemp("digits_clips")
    trained: dict[str, tuple[Path, dict]] = {}

    def get(name: str) -> tuple[Path, dict]:
        if name not in trained:
            seed = "1000" if name == "surrogate" else "0"
            arguments = ["--seed", seed, "--no-progress", "--output_dir", str(root / name)]
            if name in ("none", "surrogate"):
                arguments += ["--attack", "badnet", "--poison-count", "0"]
            else:  # 2% for every attack: the benchmark's models (benchmarks/run.py; blended's default is 5%)
                arguments += ["--attack", name, "--poison-rate", "0.02"]
            if name == "badclip":
                arguments += ["--victim-model", str(get("surrogate")[0] / "model")]
            trained[name] = (root / name, poison_clip.main(arguments))
        return trained[name]

    return get


@pytest.fixture(scope="session")
def digit_class_folders(tmp_path_factory):
    """The digits test split (400 images) as class folders ``data/zero/*.png`` ... ``data/nine/*.png`` (32x32 PNGs),
    a ``classnames.txt`` listing the ten words in their natural order (zero, one, ..., nine: not the sorted folder
    order), a random-init ``clipclean-tiny`` saved by plain open_clip (``open_clip_config.json`` +
    ``open_clip_model.safetensors``), and what plain open_clip makes of them: ``build_zero_shot_classifier`` with the
    80 OpenAI templates over the natural-order names, open_clip's own preprocessing, each folder scored against its
    own name (``correct``), and against the name a positional reading of the file gives it (``positional_correct``).
    """
    import open_clip
    import safetensors.torch
    from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME
    from open_clip.push_to_hf_hub import save_config_for_hf
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
    from PIL import Image

    from clipclean.data import DIGIT_CLASSNAMES, load_classification_dataset
    from clipclean.models import register_model_configs

    root = tmp_path_factory.mktemp("digit_class_folders")
    digits = load_classification_dataset("digits:test", image_size=32)
    for index in range(len(digits)):
        image, label = digits[index]
        folder = root / "data" / DIGIT_CLASSNAMES[label]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(pixels, mode="RGB").save(folder / f"{index:03d}.png")
    classnames = root / "classnames.txt"
    classnames.write_text("\n".join(DIGIT_CLASSNAMES) + "\n", encoding="utf-8")

    register_model_configs()
    torch.manual_seed(0)
    model_dir = root / "model"
    model_dir.mkdir()
    created = open_clip.create_model("clipclean-tiny")
    with torch.no_grad():  # without them every image of a random tower lands in one class
        created.visual.class_embedding.zero_()
        created.visual.positional_embedding.zero_()
    safetensors.torch.save_file(created.state_dict(), model_dir / HF_SAFE_WEIGHTS_NAME)
    save_config_for_hf(created, model_dir / HF_CONFIG_NAME, model_config=open_clip.get_model_config("clipclean-tiny"))

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{model_dir}")
    model.eval()
    paths = sorted((root / "data").glob("*/*.png"))
    with torch.no_grad():
        weights = open_clip.build_zero_shot_classifier(model, tokenizer, DIGIT_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES)
        images = torch.stack([preprocess(Image.open(path)) for path in paths])
        predicted = (model.encode_image(images, normalize=True) @ weights).argmax(dim=-1).tolist()
    folders = sorted(DIGIT_CLASSNAMES)
    own = [DIGIT_CLASSNAMES.index(path.parent.name) for path in paths]
    positional = [folders.index(path.parent.name) for path in paths]  # line i of the file names the i-th folder
    return {
        "data": root / "data",
        "classnames": classnames,
        "model": model_dir,
        "n_images": len(paths),
        "correct": sum(p == t for p, t in zip(predicted, own)),
        "positional_correct": sum(p == t for p, t in zip(predicted, positional)),
        "predicted_classes": len(set(predicted)),
    }
