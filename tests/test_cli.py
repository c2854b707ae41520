"""The ``clipclean`` command: help and examples, scan (outputs; slow: the verdicts), clean and eval delegation,
convert (legacy and transformers -> open_clip), push (safe files only, tokens never printed)."""

import hashlib
import json
import logging
import runpy
import sys
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import open_clip
import pytest
import torch
from test_clean_recipe import tiny_args
from test_legacy import TINY_VIT, cleanclip_checkpoint, openai_layout_model
from test_transformers_clip import build_tiny_transformers_clip

from clipclean.cli.main import main
from clipclean.hub import save_pretrained
from clipclean.models import load_clip
from clipclean.triggers import PatchBlendTrigger, save_trigger

ROOT = Path(__file__).resolve().parents[1]
FAST_INVERSION = ["--set", "rounds=1", "--set", "steps_per_round=3", "--set", "verdict_steps=2"]


def folder_digest(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_pretrained(load_clip("clipclean-tiny"), tmp_path_factory.mktemp("cli") / "model")


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")  # main is imported above
def test_the_console_script_is_declared_and_the_module_runs(monkeypatch, capsys):
    project = (ROOT / "pyproject.toml").read_text()
    assert '[project.scripts]\nclipclean = "clipclean.cli.main:main"' in project
    monkeypatch.setattr(sys, "argv", ["clipclean", "--help"])
    with pytest.raises(SystemExit) as exit_info:  # what `python -m clipclean.cli.main --help` runs
        runpy.run_module("clipclean.cli.main", run_name="__main__", alter_sys=True)
    assert exit_info.value.code == 0
    listed = capsys.readouterr().out
    for command in ("scan", "clean", "eval", "convert", "push"):
        assert command in listed


@pytest.mark.parametrize("command", ["scan", "clean", "eval", "convert", "push"])
def test_every_command_has_help_with_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and f"clipclean {command}" in text
    if command in ("clean", "eval"):  # then the script's own options
        assert "--model" in text and "--output" in text


def test_scan_writes_the_trigger_and_report_and_leaves_the_model_unchanged(tiny_folder, tmp_path, capsys):
    before = folder_digest(tiny_folder)
    output = tmp_path / "scan"
    args = ["scan", str(tiny_folder), "--data", "digits:defender", "--max-pairs", "64", "--output", str(output)]
    assert main([*args, *FAST_INVERSION]) == 0
    printed = capsys.readouterr().out
    report = json.loads((output / "report.json").read_text())
    assert report["verdict"] in ("backdoored", "no backdoor found") and f"verdict: {report['verdict']}" in printed
    assert report["recovered_target"] in [f"{d}" for d in report["candidate_asr"]]
    assert report["n_pairs"] == 64 and report["n_candidates"] == 10 and report["inversion_config"]["rounds"] == 1
    assert {"trigger.json", "trigger.safetensors", "trigger.png", "report.json"} <= {p.name for p in output.iterdir()}
    assert folder_digest(tiny_folder) == before
    assert "recorded_cleaning" not in report and "recorded when cleaned" not in printed


def test_scan_shows_the_persistence_recorded_when_the_model_was_cleaned(tmp_path, capsys):
    complete = {"ra_asr": 0.574, "reference_ra_asr": 0.398, "reinversion_score": 0.391, "reference_score": 0.283}
    torch.manual_seed(0)
    provenance = {"method": "bibau", "source_model": "suspect", "verdict": "backdoored", "complete": complete}
    cleaned = save_pretrained(load_clip("clipclean-tiny"), tmp_path / "cleaned", provenance=provenance)
    output = tmp_path / "scan"
    args = ["scan", str(cleaned), "--data", "digits:defender", "--max-pairs", "32", "--output", str(output)]
    assert main([*args, *FAST_INVERSION]) == 0
    printed = capsys.readouterr().out
    assert "recorded when cleaned: method bibau, verdict on the source: backdoored" in printed
    assert "RA-ASR (retuning attack): 57.4%  (never-poisoned reference: 39.8%)" in printed
    assert "re-inversion score: 0.391  (never-poisoned reference: 0.283)" in printed
    recorded = json.loads((output / "report.json").read_text())["recorded_cleaning"]
    assert recorded["complete"] == complete and recorded["method"] == "bibau"


@pytest.mark.slow
def test_scan_verdicts_on_a_backdoored_and_a_clean_tiny_clip(digits_clips, tmp_path, capsys):
    """Default InversionConfig (no loosened threshold) on tiny CLIPs trained by recipes/poison_clip.py (BadNet,
    target "zero", and never poisoned). Measured: backdoored anomaly index 3.73 naming "zero"; never-poisoned 1.76
    (naming "eight"); threshold 3.0. About 2 minutes per scan on 2 CPU cores."""
    backdoored, clean = digits_clips("badnet")[0] / "model", digits_clips("none")[0] / "model"
    assert main(["scan", str(backdoored), "--data", "digits:defender", "--output", str(tmp_path / "bd")]) == 0
    printed = capsys.readouterr().out
    assert "verdict: backdoored" in printed and "recovered target: zero" in printed
    assert main(["scan", str(clean), "--data", "digits:defender", "--output", str(tmp_path / "clean")]) == 0
    assert "verdict: no backdoor found" in capsys.readouterr().out


def test_clean_and_eval_run_the_installed_jobs(tiny_folder, tmp_path):
    save_trigger(
        PatchBlendTrigger.patch(32, 4, "bottom-right", "white"), tmp_path / "trigger", metadata={"target": "zero"}
    )
    run = tmp_path / "clean"
    status = main(["clean", *tiny_args(tmp_path, run, "--model", str(tiny_folder), "--rounds", "1")])
    assert status == 0
    results = json.loads((run / "results.json").read_text())
    assert results["defense"] == "bibau" and (run / "cleaned" / "open_clip_model.safetensors").is_file()
    evaluated = tmp_path / "eval.json"
    trigger = str(tmp_path / "trigger.json")
    arguments = ["--model", str(run / "cleaned"), "--data", "digits", "--trigger", trigger, "--target", "zero"]
    assert main(["eval", *arguments, "--output", str(evaluated)]) == 0
    metrics = json.loads(evaluated.read_text())
    assert metrics["n_images"] == 400 and 0 < metrics["n_asr_images"] < 400 and metrics["target"] == "zero"
    assert 0 <= metrics["top1"] <= 1 and 0 <= metrics["asr_top1"] <= 1


def test_convert_writes_an_open_clip_folder_with_the_same_embeddings(tmp_path, capsys):
    source = openai_layout_model(TINY_VIT)
    cleanclip_checkpoint(source, tmp_path / "epoch_64.pt")
    assert main(["convert", str(tmp_path / "epoch_64.pt"), str(tmp_path / "converted")]) == 0
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'converted'}")
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    normalize = preprocess.transforms[-1]
    normalised = (images - torch.tensor(normalize.mean).view(1, 3, 1, 1)) / torch.tensor(normalize.std).view(
        1, 3, 1, 1
    )
    with torch.no_grad():
        assert torch.equal(model.eval().encode_image(normalised), source.encode_image(normalised))
    sidecar = json.loads((tmp_path / "converted" / "clipclean.json").read_text())
    assert (
        sidecar["provenance"]["method"] == "convert"
        and "not cleaned" in (tmp_path / "converted" / "README.md").read_text()
    )

    transformers_folder = build_tiny_transformers_clip(tmp_path / "hf")
    assert main(["convert", str(transformers_folder), str(tmp_path / "hf_converted")]) == 0
    assert (tmp_path / "hf_converted" / "open_clip_config.json").is_file()
    assert main(["convert", str(tmp_path / "converted"), str(tmp_path / "again")]) == 2
    assert "already an open_clip model" in capsys.readouterr().err


def test_push_uploads_safe_files_with_the_metrics_card_and_never_prints_the_token(
    tiny_clip, tmp_path, monkeypatch, capsys, caplog
):
    secret = "hf_cliCLEANsecretTOKEN0123456789"
    monkeypatch.setenv("HF_TOKEN", secret)
    calls: list[tuple[str, dict]] = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", {"token": token}))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
            return SimpleNamespace(repo_id=repo_id)

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs))
            return SimpleNamespace(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/abc")

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    metrics = {"before": {"attack_success_rate": 0.99}, "after": {"attack_success_rate": 0.01}}
    folder = save_pretrained(tiny_clip, tmp_path / "cleaned", metrics=metrics)
    (folder / "notes.txt").write_text("not uploaded")
    with caplog.at_level(logging.DEBUG):
        assert main(["push", str(folder), "org/clip-cleaned", "--private"]) == 0
    printed = capsys.readouterr()
    assert "https://huggingface.co/org/clip-cleaned/commit/abc" in printed.out
    assert secret not in printed.out + printed.err + caplog.text
    upload = dict(calls)["upload_folder"]
    assert dict(calls)["create_repo"]["private"] is True and dict(calls)["init"]["token"] is None
    assert set(upload["allow_patterns"]) == {
        "open_clip_config.json",
        "open_clip_model.safetensors",
        "README.md",
        "clipclean.json",
    }
    card = (folder / "README.md").read_text()
    assert "| attack_success_rate | 99.00% | 1.00% |" in card and "org/clip-cleaned" in card

    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    assert main(["push", str(folder), "org/clip-cleaned"]) == 2  # the command reports bad input in one line
    assert "error: refusing to push" in capsys.readouterr().err
    bare = tmp_path / "bare"
    bare.mkdir()
    assert main(["push", str(bare), "org/x"]) == 2
    assert "README.md / clipclean.json" in capsys.readouterr().err
