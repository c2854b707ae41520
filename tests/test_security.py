"""No code runs from a file clipclean reads: classifier folders that name a module, pickles planted in a
checkpoint, and resumption that never trusts an incomplete or foreign checkpoint (docs/security.md)."""

import json
import pickle
import sys
import uuid

import pytest
import torch

from clipclean.classifiers import (
    UntrustedCodeError,
    build_network,
    create_classifier,
    is_trusted_architecture,
    load_classifier,
    save_classifier,
)
from clipclean.cli import clean_classifier, poison_classifier
from clipclean.cli.common import (
    CHECKPOINT_COMPLETE_FILENAME,
    CheckpointError,
    RunCheckpoints,
    TrainingProgress,
    make_accelerator,
)
from clipclean.data import DIGIT_CLASSNAMES


@pytest.fixture
def payload_module(tmp_path, monkeypatch):
    """A module on ``sys.path`` whose import writes a marker file: ``(module name, marker path)``."""
    name = f"clipclean_test_payload_{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "imported.marker"
    code = (
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n"
        "import torch\n\ndef make(num_classes, **kwargs):\n    return torch.nn.Sequential(torch.nn.Flatten(), "
        "torch.nn.Linear(3 * 32 * 32, num_classes))\n"
    )
    code_dir = tmp_path / "code"
    code_dir.mkdir()
    (code_dir / f"{name}.py").write_text(code)
    monkeypatch.syspath_prepend(str(code_dir))
    yield name, marker
    sys.modules.pop(name, None)


def _folder_naming(tmp_path, architecture: str, kwargs: dict | None = None):
    """A saved small CNN whose config is then rewritten to name ``architecture`` (as a downloaded folder could)."""
    folder = save_classifier(create_classifier("small-cnn", DIGIT_CLASSNAMES, width=4), tmp_path / "suspect")
    config_path = folder / "clipclean_classifier.json"
    document = json.loads(config_path.read_text())
    document["architecture"], document["architecture_kwargs"] = architecture, kwargs or {}
    config_path.write_text(json.dumps(document))
    return folder


def test_a_classifier_folder_naming_a_module_imports_nothing_without_the_opt_in(tmp_path, payload_module):
    name, marker = payload_module
    folder = _folder_naming(tmp_path, f"{name}:make")
    with pytest.raises(UntrustedCodeError, match="--trust-architecture-code"):
        load_classifier(folder)
    assert not marker.exists() and name not in sys.modules
    # the opt-in imports it, and says so
    with pytest.raises(RuntimeError):  # the payload's network does not match the saved weights
        load_classifier(folder, trust_code=True)
    assert marker.read_text() == "imported"


def test_a_standard_library_function_named_in_json_is_not_called(tmp_path):
    victim = tmp_path / "victim.log"
    victim.write_text("the user's data")
    folder = _folder_naming(tmp_path, "logging:basicConfig", {"filename": str(victim), "filemode": "w"})
    with pytest.raises(UntrustedCodeError):
        load_classifier(folder)
    assert victim.read_text() == "the user's data"
    with pytest.raises(UntrustedCodeError):
        build_network("torch.hub:load", 10, repo_or_dir=str(tmp_path), model="x", source="local")


def test_builtin_and_torchvision_architectures_need_no_opt_in():
    assert is_trusted_architecture("small-cnn") and is_trusted_architecture("torchvision.models:resnet18")
    assert not is_trusted_architecture("torchvision.models:_utils") and not is_trusted_architecture("os:system")
    network = build_network("torchvision.models:mobilenet_v3_small", 10).eval()
    assert network(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_the_classifier_recipe_refuses_an_untrusted_architecture(tmp_path, payload_module):
    name, marker = payload_module
    folder = _folder_naming(tmp_path, f"{name}:make")
    recipe = clean_classifier
    argv = ["--model", str(folder), "--clean-data", "digits:defender", "--output_dir", str(tmp_path / "out")]
    with pytest.raises(UntrustedCodeError):
        recipe.main([*argv, "--no-progress"])
    assert not marker.exists()
    poison = poison_classifier
    with pytest.raises(UntrustedCodeError):
        poison.main(["--architecture", f"{name}:make", "--output_dir", str(tmp_path / "p"), "--no-progress"])
    assert not marker.exists()


# ---- checkpoints ------------------------------------------------------------------------------------------------
class _Opener:
    """A pickle whose loading creates ``path`` (a harmless stand-in for code execution)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class _Counter:
    def __init__(self):
        self.value = torch.zeros(3)

    def state_dict(self):
        return {"value": self.value, "names": ("a", "b"), "by_index": {0: 1.5}}

    def load_state_dict(self, state):
        assert state["names"] == ("a", "b") and state["by_index"] == {0: 1.5}
        self.value = state["value"]


def _run(tmp_path, output="run"):
    """An accelerator with a tiny model and optimizer prepared, and its RunCheckpoints."""
    import argparse

    args = argparse.Namespace(output_dir=str(tmp_path / output), report_to=None, mixed_precision=None, seed=0)
    accelerator = make_accelerator(args)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model, optimizer = accelerator.prepare(model, optimizer)
    progress, counter = TrainingProgress(), _Counter()
    return accelerator, model, RunCheckpoints(accelerator, args.output_dir, progress=progress, counter=counter)


def test_resumable_state_is_json_and_safetensors_and_round_trips(tmp_path):
    accelerator, model, checkpoints = _run(tmp_path)
    checkpoints.objects["progress"].step = 7
    checkpoints.objects["counter"].value = torch.arange(3.0)
    folder = checkpoints.save()
    assert (folder / CHECKPOINT_COMPLETE_FILENAME).is_file()
    assert not list(folder.glob("custom_checkpoint_*"))
    with torch.no_grad():
        model.weight.zero_()
    _, model_again, restored = _run(tmp_path)
    assert restored.resume("latest") == folder
    assert restored.objects["progress"].step == 7
    assert torch.equal(restored.objects["counter"].value, torch.arange(3.0))
    # the next save continues the numbering after the folder resumed from
    assert restored.save().name == "checkpoint_1"


def test_a_pickle_planted_in_a_checkpoint_is_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled.marker"
    _, _, checkpoints = _run(tmp_path)
    folder = checkpoints.save()
    # accelerate's own custom-state file (unpickled with weights_only=False) is not read at all
    (folder / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(_Opener(marker)))
    _, _, restored = _run(tmp_path)
    with pytest.raises(CheckpointError, match="pickles that clipclean never writes"):
        restored.resume("latest")
    assert not marker.exists()
    (folder / "custom_checkpoint_0.pkl").unlink()
    # the files accelerate does read are read with weights_only=True: a payload there is refused
    torch.save({"state": _Opener(marker)}, folder / "optimizer.bin")
    _, _, refused = _run(tmp_path)
    with pytest.raises(pickle.UnpicklingError):
        refused.resume("latest")
    assert not marker.exists()


def test_latest_skips_an_incomplete_checkpoint_and_an_explicit_one_is_refused(tmp_path):
    _, _, checkpoints = _run(tmp_path)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        checkpoints.resume("latest")
    first = checkpoints.save()
    second = checkpoints.save()
    (second / CHECKPOINT_COMPLETE_FILENAME).unlink()  # killed while saving the second
    _, _, restored = _run(tmp_path)
    with pytest.raises(CheckpointError, match="not a complete clipclean checkpoint"):
        restored.resume(str(second))
    assert restored.resume("latest") == first
    assert not second.exists()  # the incomplete one is deleted, and its number reused
    assert restored.save() == second
    with pytest.raises(CheckpointError, match="no such folder"):
        restored.resume(str(tmp_path / "nowhere"))


def test_refusals_are_one_line_errors_on_the_command_line(tmp_path, payload_module, capsys):
    from test_bad_inputs import expect_error

    name, marker = payload_module
    poison = poison_classifier
    expect_error(
        poison.main,
        ["--architecture", f"{name}:make", "--output_dir", tmp_path / "p", "--no-progress"],
        capsys,
        "--trust-architecture-code",
    )
    assert not marker.exists()
    expect_error(
        poison.main,
        ["--output_dir", tmp_path / "r", "--resume_from_checkpoint", "latest", "--no-progress"],
        capsys,
        "no complete checkpoint",
    )
