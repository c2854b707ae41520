"""Saving in open_clip's Hub layout (round trips through clipclean and plain open_clip), cards, sidecars, pushing."""

import json
import logging
import os
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import numpy as np
import open_clip
import pytest
import torch
from hub_cache import COMMIT, lay_out_hub_cache
from huggingface_hub import ModelCard, RepoUrl
from open_clip.push_to_hf_hub import save_config_for_hf
from safetensors import safe_open

from clipclean import hub
from clipclean.hub import (
    SIDECAR_FILENAME,
    WEIGHTS_FILENAME,
    find_sidecar,
    model_card,
    push_to_hub,
    read_sidecar,
    save_pretrained,
)
from clipclean.models import CONFIG_FILENAME, PixelCLIP, load_clip

GROUPED_METRICS = {
    "before": {"clean_accuracy": 0.9, "attack_success_rate": 0.99},
    "after": {"clean_accuracy": 0.88, "attack_success_rate": 0.015, "loss": 0.123456},
}
CHECKPOINT_FILES = ["README.md", SIDECAR_FILENAME, CONFIG_FILENAME, WEIGHTS_FILENAME]


def probe_inputs(model: PixelCLIP) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    images = torch.rand(4, 3, 32, 32, generator=generator)  # [0, 1] pixels
    return images, model.tokenize(["a photo of a cat", "a photo of a dog", "a truck"])


def assert_bit_identical(loaded: PixelCLIP, reference: PixelCLIP) -> None:
    images, tokens = probe_inputs(reference)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), reference.encode_image(images))
        assert torch.equal(loaded.encode_text(tokens), reference.encode_text(tokens))


def assert_open_clip_bit_identical(model: torch.nn.Module, preprocess, reference: PixelCLIP) -> None:
    """A plain open_clip model gets normalised images: apply the mean/std its own transform would use."""
    normalize = preprocess.transforms[-1]
    assert isinstance(normalize, open_clip.transform.Normalize)
    mean = torch.tensor(normalize.mean).view(1, 3, 1, 1)
    std = torch.tensor(normalize.std).view(1, 3, 1, 1)
    images, tokens = probe_inputs(reference)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.encode_image((images - mean) / std, normalize=True), reference.encode_image(images))
        assert torch.equal(model.encode_text(tokens, normalize=True), reference.encode_text(tokens))


@pytest.fixture
def saved(tiny_clip, tmp_path) -> Path:
    return save_pretrained(tiny_clip, tmp_path / "cleaned", metrics=GROUPED_METRICS, provenance={"method": "bibau"})


def hidden_leftovers(parent: Path) -> list[str]:
    return sorted(path.name for path in parent.iterdir() if path.name.startswith("."))


# -------------------------------------------------------------------------------------------------------- layout


def test_layout_matches_open_clip(tiny_clip, saved, tmp_path):
    assert saved == tmp_path / "cleaned"
    assert sorted(path.name for path in saved.iterdir()) == sorted(CHECKPOINT_FILES)

    expected = tmp_path / "open_clip_config.json"
    save_config_for_hf(tiny_clip.model, expected, tiny_clip.model_config)  # what open_clip's push_to_hf_hub writes
    config = json.loads((saved / CONFIG_FILENAME).read_text())
    assert config == json.loads(expected.read_text())
    assert set(config["preprocess_cfg"]) == {"mean", "std", "interpolation", "resize_mode"}

    state_dict = tiny_clip.model.state_dict()
    with safe_open(str(saved / WEIGHTS_FILENAME), framework="pt") as weights:
        assert weights.metadata() == {"format": "pt"}
        assert set(weights.keys()) == set(state_dict)
        for key in state_dict:
            assert torch.equal(weights.get_tensor(key), state_dict[key])


@pytest.mark.parametrize("prefix", ["", "local-dir:"])
def test_round_trip_through_load_clip(tiny_clip, saved, prefix):
    assert_bit_identical(load_clip(f"{prefix}{saved}"), tiny_clip)


def test_round_trip_through_plain_open_clip(tiny_clip, saved):
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{saved}")
    assert_open_clip_bit_identical(model, preprocess, tiny_clip)


def test_round_trip_through_offline_hub_cache(tiny_clip, saved, tmp_path):
    cache = tmp_path / "hub-cache"
    lay_out_hub_cache(saved, cache, "clipclean-test/cleaned-tiny")
    assert os.environ["HF_HUB_OFFLINE"] == "1" and huggingface_hub.constants.HF_HUB_OFFLINE

    assert_bit_identical(load_clip("hf-hub:clipclean-test/cleaned-tiny", cache_dir=str(cache)), tiny_clip)
    model, _, preprocess = open_clip.create_model_and_transforms("hf-hub:clipclean-test/cleaned-tiny", cache_dir=cache)
    assert_open_clip_bit_identical(model, preprocess, tiny_clip)


def test_tied_weights_are_saved_and_load_strictly(tiny_clip, tmp_path):
    tiny_clip.model.visual.proj = tiny_clip.model.text_projection  # both (64, 64): share one parameter
    state_dict = tiny_clip.model.state_dict()
    assert state_dict["visual.proj"].data_ptr() == state_dict["text_projection"].data_ptr()
    folder = save_pretrained(tiny_clip, tmp_path / "tied")
    loaded = load_clip(str(folder))  # open_clip loads with strict=True: both keys must be in the file
    assert torch.equal(loaded.model.visual.proj, loaded.model.text_projection)
    assert_bit_identical(loaded, tiny_clip)


# ----------------------------------------------------------------------------------------------- card and sidecar


def test_model_card_front_matter_and_usage(saved):
    text = (saved / "README.md").read_text()
    assert text.startswith("---\n")
    card = ModelCard(text)  # parsed the way the Hub parses it
    data = card.data.to_dict()
    assert data["library_name"] == "open_clip"
    assert data["pipeline_tag"] == "zero-shot-image-classification"
    assert data["license"] == "apache-2.0"
    assert data["tags"] == ["clip", "clipclean", "backdoor-defense"]
    assert 'open_clip.create_model_and_transforms("hf-hub:<org>/<repo>")' in card.text
    assert 'load_clip("hf-hub:<org>/<repo>")' in card.text
    assert "# clipclean-tiny" in card.text
    assert "- **method**: bibau" in card.text


def test_model_card_grouped_metrics_table():
    card = model_card("ViT-B-32", GROUPED_METRICS, None, "Trigger inverted blindly.")
    assert "| Metric | before | after |\n|---|---:|---:|\n" in card
    assert "| clean_accuracy | 90.00% | 88.00% |" in card
    assert "| attack_success_rate | 99.00% | 1.50% |" in card
    assert "| loss | — | 0.1235 |" in card  # missing cell, non-rate float
    assert "## Notes\n\nTrigger inverted blindly." in card
    assert "## Provenance" not in card


def test_model_card_flat_and_mixed_metrics():
    card = model_card(
        "RN50",
        {"clean_accuracy": 0.5, "asr": 0.25, "epochs": 3, "learning_rate": 0.001, "poison": {"top1_acc": 0.75}},
        None,
        None,
    )
    assert "| Metric | Value |" in card
    assert "| clean_accuracy | 50.00% |" in card
    assert "| asr | 25.00% |" in card
    assert "| epochs | 3 |" in card
    assert "| learning_rate | 0.001 |" in card
    assert "| Metric | poison |" in card and "| top1_acc | 75.00% |" in card
    assert "## Evaluation" not in model_card("RN50", None, None, None)


def test_model_card_keeps_long_provenance_in_the_sidecar():
    card = model_card("RN50", None, {"trigger_mask": [[0.0] * 64] * 64, "seed": 0, "lr": 0.5}, None)
    line = next(line for line in card.splitlines() if "trigger_mask" in line)
    assert len(line) < 300 and line.endswith("(full value in clipclean.json)")
    assert "- **seed**: 0" in card
    assert "- **lr**: 0.5" in card  # provenance values are never turned into percentages


OLD_CARD = (  # the card as the hand-written front matter wrote it (clipclean before ModelCardData)
    "---\n"
    "library_name: open_clip\n"
    "pipeline_tag: zero-shot-image-classification\n"
    "license: apache-2.0\n"
    "tags:\n"
    "- clip\n"
    "- clipclean\n"
    "- backdoor-defense\n"
    "---\n"
    "\n"
    "# org/poisoned — cleaned with clipclean\n"
    "\n"
    "An [OpenCLIP](https://github.com/mlfoundations/open_clip) model (`hf-hub:org/poisoned`) whose w"
    "eights were processed with clipclean, a toolkit for finding and removing backdoors from CLIP mo"
    "dels. The checkpoint uses open_clip's Hub layout (`open_clip_config.json` + `open_clip_model.sa"
    "fetensors`, no pickle), so plain open_clip loads it; clipclean's own metadata (metrics, provena"
    "nce) is in `clipclean.json`.\n"
    "\n"
    "## Usage\n"
    "\n"
    "With open_clip:\n"
    "\n"
    "```python\n"
    "import open_clip\n"
    "\n"
    'model, _, preprocess = open_clip.create_model_and_transforms("hf-hub:<org>/<repo>")\n'
    'tokenizer = open_clip.get_tokenizer("hf-hub:<org>/<repo>")\n'
    "```\n"
    "\n"
    "With clipclean (`encode_image` takes un-normalised images in [0, 1] and normalises them itself)"
    ":\n"
    "\n"
    "```python\n"
    "import torch\n"
    "from clipclean.models import load_clip\n"
    "\n"
    'model = load_clip("hf-hub:<org>/<repo>")  # or load_clip("local-dir:/path/to/this/folder")\n'
    "image_features = model.encode_image(torch.rand(1, 3, *model.image_size))\n"
    'text_features = model.encode_text(["a photo of a dog"])\n'
    "```\n"
    "\n"
    "## Evaluation\n"
    "\n"
    "| Metric | before | after |\n"
    "|---|---:|---:|\n"
    "| clean_accuracy | 90.00% | 88.00% |\n"
    "| attack_success_rate | 99.00% | 1.50% |\n"
    "| loss | — | 0.1235 |\n"
    "\n"
    "## Provenance\n"
    "\n"
    "- **method**: bibau\n"
    "- **verdict**: backdoored\n"
    "- **seed**: 0\n"
    "\n"
    "## Notes\n"
    "\n"
    "Cleaned blindly.\n"
    "\n"
    "## Limitations\n"
    "\n"
    "Backdoor removal is measured against the triggers and data reported above. It does not prove th"
    "at the model carries no other backdoor; evaluate it on your own data before relying on it.\n"
)


def test_model_card_built_with_model_card_data_matches_the_hand_written_card(tmp_path):
    """The card made with huggingface_hub's ModelCard/ModelCardData carries the same metadata and the same body
    (title, usage, metrics table, provenance, notes) as the hand-written one it replaced."""
    provenance = {"method": "bibau", "verdict": "backdoored", "seed": 0}
    card = model_card("hf-hub:org/poisoned", GROUPED_METRICS, provenance, "Cleaned blindly.")
    old, new = ModelCard(OLD_CARD), ModelCard(card)
    assert new.data.to_dict() == old.data.to_dict()  # without eval_dataset: no model-index, same fields
    assert new.text == old.text
    lines = new.text.splitlines()
    assert "# org/poisoned — cleaned with clipclean" in lines
    assert "| clean_accuracy | 90.00% | 88.00% |" in lines and "| attack_success_rate | 99.00% | 1.50% |" in lines

    # with the evaluation set, the model's own (after) CA and ASR go into the model-index as EvalResults
    card = model_card("hf-hub:org/poisoned", GROUPED_METRICS, provenance, None, eval_dataset="digits:test")
    data = ModelCard(card).data
    assert {key: value for key, value in data.to_dict().items() if key != "model-index"} == old.data.to_dict()
    assert data.model_name == "org/poisoned"
    results = {result.metric_type: result for result in data.eval_results}
    assert results["accuracy"].metric_value == 0.88 and results["attack_success_rate"].metric_value == 0.015
    assert {(r.dataset_type, r.dataset_name, r.dataset_split, r.task_type) for r in results.values()} == {
        ("digits", "digits:test", "test", "zero-shot-image-classification")
    }
    assert model_card("RN50", GROUPED_METRICS, None, None, eval_dataset="/data/imagenet/val").count("name: val") == 1


def test_written_card_loads_with_model_card_load(tiny_clip, tmp_path):
    folder = save_pretrained(tiny_clip, tmp_path / "cleaned", metrics=GROUPED_METRICS, eval_dataset="digits:test")
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "open_clip" and card.data.tags == ["clip", "clipclean", "backdoor-defense"]
    assert [result.metric_value for result in card.data.eval_results] == [0.88, 0.015]
    assert "| attack_success_rate | 99.00% | 1.50% |" in card.text


def test_model_card_fills_repo_id():
    card = model_card("RN50", None, None, None, repo_id="org/name")
    assert "hf-hub:org/name" in card and "<org>/<repo>" not in card


def test_sidecar_content(tiny_clip, tmp_path):
    provenance = {
        "method": "bibau",
        "source_checkpoint": Path("/models/poisoned"),
        "trigger": {"mask": torch.ones(2, 2), "size": np.int64(4), "strength": np.float32(0.5)},
        "seeds": (0, 1),
    }
    metrics = {"after": {"clean_accuracy": torch.tensor(0.875), "per_class": np.array([0.5, 1.0])}}
    folder = save_pretrained(tiny_clip, tmp_path / "ckpt", metrics=metrics, provenance=provenance)
    sidecar = read_sidecar(folder)
    assert set(sidecar) == {"clipclean_version", "created", "model_name", "metrics", "provenance"}
    assert sidecar["clipclean_version"] == "0.1.0"
    assert datetime.fromisoformat(sidecar["created"]).tzinfo is not None
    assert sidecar["model_name"] == "clipclean-tiny"
    assert sidecar["metrics"] == {"after": {"clean_accuracy": 0.875, "per_class": [0.5, 1.0]}}
    assert sidecar["provenance"] == {
        "method": "bibau",
        "source_checkpoint": "/models/poisoned",
        "trigger": {"mask": [[1.0, 1.0], [1.0, 1.0]], "size": 4, "strength": 0.5},
        "seeds": [0, 1],
    }
    assert json.loads((folder / SIDECAR_FILENAME).read_text()) == sidecar


def test_read_sidecar_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="clipclean.json"):
        read_sidecar(tmp_path)


def test_find_sidecar_in_folders_and_the_offline_hub_cache(saved, tmp_path):
    assert find_sidecar(str(saved)) == read_sidecar(saved) == find_sidecar(f"local-dir:{saved}")
    cache = tmp_path / "hub-cache"
    lay_out_hub_cache(saved, cache, "clipclean-test/with-sidecar")
    assert find_sidecar("hf-hub:clipclean-test/with-sidecar", cache_dir=str(cache)) == read_sidecar(saved)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "open_clip_config.json").write_text("{}")
    lay_out_hub_cache(bare, cache, "clipclean-test/no-sidecar")
    assert find_sidecar("hf-hub:clipclean-test/no-sidecar", cache_dir=str(cache)) is None
    assert find_sidecar(str(bare)) is None and find_sidecar("clipclean-tiny") is None


def test_unserialisable_provenance_writes_nothing(tiny_clip, tmp_path):
    with pytest.raises(TypeError):
        save_pretrained(tiny_clip, tmp_path / "ckpt", provenance={"callback": object()})
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------- atomicity


def test_overwrite_replaces_checkpoint(tiny_clip, saved):
    torch.manual_seed(5)
    other = load_clip("clipclean-tiny")
    save_pretrained(other, saved, metrics={"clean_accuracy": 0.1})
    assert read_sidecar(saved)["metrics"] == {"clean_accuracy": 0.1}
    assert_bit_identical(load_clip(str(saved)), other)
    assert hidden_leftovers(saved.parent) == []


def test_failure_midway_keeps_old_checkpoint(tiny_clip, saved, monkeypatch):
    before = {name: (saved / name).read_bytes() for name in CHECKPOINT_FILES}
    written = []

    def failing_sidecar(sidecar, folder):  # the last writer: config, weights and card are already staged
        written.extend(sorted(path.name for path in folder.iterdir()))
        raise RuntimeError("disk full")

    monkeypatch.setattr(hub, "_write_sidecar", failing_sidecar)
    torch.manual_seed(5)
    with pytest.raises(RuntimeError, match="disk full"):
        save_pretrained(load_clip("clipclean-tiny"), saved, metrics={"clean_accuracy": 0.1})
    assert written == ["README.md", CONFIG_FILENAME, WEIGHTS_FILENAME]
    assert {name: (saved / name).read_bytes() for name in CHECKPOINT_FILES} == before
    assert sorted(path.name for path in saved.parent.iterdir()) == ["cleaned"]  # no partial or hidden folder
    assert_bit_identical(load_clip(str(saved)), tiny_clip)


def test_failure_on_new_target_leaves_nothing(tiny_clip, tmp_path, monkeypatch):
    def failing_weights(model, folder):
        raise OSError("no space left on device")

    monkeypatch.setattr(hub, "_write_weights", failing_weights)
    with pytest.raises(OSError, match="no space"):
        save_pretrained(tiny_clip, tmp_path / "new")
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_replace_a_folder_that_is_not_a_checkpoint(tiny_clip, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    with pytest.raises(FileExistsError, match="does not look like a checkpoint"):
        save_pretrained(tiny_clip, precious)
    with pytest.raises(FileExistsError, match="not a directory"):
        save_pretrained(tiny_clip, precious / "thesis.tex")
    assert (precious / "thesis.tex").read_text() == "do not delete"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["precious"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert sorted(path.name for path in save_pretrained(tiny_clip, empty).iterdir()) == sorted(CHECKPOINT_FILES)


# ---------------------------------------------------------------------------------------------------------- push

SECRET = "hf_SECRETtokenTHATmustNEVERbeLOGGED"


@pytest.fixture
def fake_hub(monkeypatch):
    """Replace the network calls of ``HfApi``; record what they were called with."""
    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", self.token, repo_id, kwargs))
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_branch(self, repo_id, **kwargs):
        calls.append(("create_branch", self.token, repo_id, kwargs))

    def upload_folder(self, **kwargs):
        calls.append(("upload_folder", self.token, kwargs.pop("repo_id"), kwargs))
        return SimpleNamespace(commit_url=f"https://huggingface.co/org/cleaned/commit/{COMMIT}")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_branch", create_branch)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    return calls


def test_push_to_hub(saved, fake_hub, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    url = push_to_hub(saved, "org/cleaned", token=SECRET, private=True)
    assert url == f"https://huggingface.co/org/cleaned/commit/{COMMIT}"
    assert [call[0] for call in fake_hub] == ["create_repo", "upload_folder"]
    (_, token, repo_id, create_kwargs), (_, upload_token, upload_repo, upload_kwargs) = fake_hub
    assert (token, upload_token, repo_id, upload_repo) == (SECRET, SECRET, "org/cleaned", "org/cleaned")
    assert create_kwargs == {"private": True, "exist_ok": True}
    assert upload_kwargs["folder_path"] == str(saved)
    assert upload_kwargs["commit_message"] == "Upload CLIP checkpoint cleaned with clipclean"
    assert upload_kwargs["revision"] is None
    assert sorted(upload_kwargs["allow_patterns"]) == sorted(CHECKPOINT_FILES)
    assert "org/cleaned" in caplog.text
    captured = capsys.readouterr()
    assert SECRET not in caplog.text + captured.out + captured.err
    readme = (saved / "README.md").read_text()
    assert 'create_model_and_transforms("hf-hub:org/cleaned")' in readme and "<org>/<repo>" not in readme


def test_push_to_hub_token_from_environment_and_revision(saved, fake_hub):
    push_to_hub(saved, "org/cleaned", revision="cleaned-v2", commit_message="v2")
    assert [call[0] for call in fake_hub] == ["create_repo", "create_branch", "upload_folder"]
    assert all(call[1] is None for call in fake_hub)  # huggingface_hub resolves HF_TOKEN / the login itself
    assert fake_hub[1][3] == {"branch": "cleaned-v2", "exist_ok": True}
    assert fake_hub[2][3]["revision"] == "cleaned-v2" and fake_hub[2][3]["commit_message"] == "v2"
    assert fake_hub[0][3]["private"] is False


@pytest.mark.parametrize("name", ["open_clip_pytorch_model.bin", "model.pt", "sub/weights.pth", "last.ckpt"])
def test_push_refuses_pickle_weights(saved, fake_hub, name):
    (saved / name).parent.mkdir(exist_ok=True)
    (saved / name).write_bytes(b"not really a pickle")
    with pytest.raises(ValueError, match=r"refusing to push .* pickle weight files"):
        push_to_hub(saved, "org/cleaned")
    assert fake_hub == []


def test_push_requires_config_and_safetensors(saved, fake_hub, tmp_path):
    (saved / WEIGHTS_FILENAME).unlink()
    with pytest.raises(FileNotFoundError, match=WEIGHTS_FILENAME):
        push_to_hub(saved, "org/cleaned")
    with pytest.raises(FileNotFoundError, match="not found"):
        push_to_hub(tmp_path / "missing", "org/cleaned")
    assert fake_hub == []
