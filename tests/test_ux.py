"""What a new user meets first: --help that answers at once (no torch) and shows the defaults, one output flag name,
where the outputs are, checkpoints deleted after a finished run, headline metrics that mean something, the scan's
cleaning record, model-card titles and trigger-picture legends."""

import argparse
import json
import logging
import subprocess
import sys
from dataclasses import MISSING, fields
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from PIL import Image

from clipclean.cli import catalogue, clean_clip, complete_unlearning, poison_classifier, poison_clip, zeroshot_imagenet
from clipclean.cli.common import RunCheckpoints, TrainingProgress, make_accelerator, setup_logging
from clipclean.cli.main import build_parser
from clipclean.hub import card_title, save_pretrained
from clipclean.models import load_clip
from clipclean.triggers import PatchBlendTrigger, draw_trigger

SCRIPTS = [
    "recipes/clean_clip.py",
    "recipes/clean_classifier.py",
    "recipes/poison_clip.py",
    "recipes/poison_classifier.py",
    "eval/zeroshot_imagenet.py",
    "eval/complete_unlearning.py",
]
COMMANDS = ["scan", "clean", "eval", "convert", "push"]

# Runs each --help in one fresh interpreter and reports which of them imported torch (or failed to exit 0).
HELP_PROBE = """
import contextlib, io, json, runpy, sys
from clipclean.cli.main import main
heavy = []
for entry in json.loads(sys.argv[1]):
    script, command = entry
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            if script:
                sys.argv = [script, "--help"]
                runpy.run_path(script, run_name="__main__")
            else:
                main([command, "--help"])
            status = None
        except SystemExit as exit_:
            status = exit_.code
    if status not in (0, None) or "usage:" not in out.getvalue():
        heavy.append([entry, "help failed"])
    for module in ("torch", "open_clip", "accelerate"):
        if module in sys.modules:
            heavy.append([entry, module])
            sys.exit(json.dumps(heavy))
print(json.dumps(heavy))
"""


def test_help_of_every_script_and_command_imports_no_torch():
    """``--help`` answers at once (about half a second on a loaded 2-core machine, 8-9 s when it imported torch):
    no script, recipe or ``clipclean`` command imports torch, open_clip or accelerate to print its help."""
    entries = [[str(ROOT / script), None] for script in SCRIPTS] + [[None, command] for command in COMMANDS]
    completed = subprocess.run(
        [sys.executable, "-c", HELP_PROBE, json.dumps(entries)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert json.loads(completed.stdout.strip().splitlines()[-1]) == []


def test_delegated_command_help_has_one_usage_line_then_the_examples(capsys):
    from clipclean.cli.main import main

    for command in ("clean", "eval"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        text = capsys.readouterr().out
        assert exit_info.value.code == 0 and text.count("usage:") == 1
        assert text.startswith(f"usage: clipclean {command} ") and text.index("examples:") > text.index("--seed")


def test_the_help_catalogue_matches_the_registries():
    """The names and defaults --help reads from the source are the imported registries' own."""
    from clipclean.attacks import list_attacks
    from clipclean.classifiers import CLASSIFIER_ARCHITECTURES
    from clipclean.complete import RetuningConfig
    from clipclean.defenses import DEFENSES

    assert catalogue.defense_names() == sorted(DEFENSES)
    assert catalogue.attack_names() == list_attacks()
    assert catalogue.classifier_architecture_names() == sorted(CLASSIFIER_ARCHITECTURES)
    retuning = {field.name: field.default for field in fields(RetuningConfig)}
    assert catalogue.config_defaults("complete.py", "RetuningConfig") == retuning


@pytest.mark.parametrize("name", sorted(catalogue.defense_names()))
def test_the_help_shows_each_defenses_own_rounds_epochs_and_lr(name):
    from clipclean.defenses import DEFENSES

    live = {field.name: field.default for field in fields(DEFENSES[name][0]) if field.default is not MISSING}
    read = catalogue._class_defaults(DEFENSES[name][0].__name__, catalogue._package_modules("defenses"))
    assert {key: live[key] for key in read} == read  # every default read from the source is the config's
    help_text = clean_clip.build_parser().format_help()
    help_text = " ".join(help_text.split())  # argparse wraps the help
    for field_name in ("rounds", "epochs", "lr"):
        assert catalogue.defense_defaults(field_name)[name] == live[field_name]
    assert f"{name} {live['rounds']}," in help_text or f"{name} {live['rounds']})" in help_text
    assert f"{name} {live['lr']:g}" in help_text


def test_help_prints_default_values(capsys):
    with pytest.raises(SystemExit):
        poison_clip.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "passes over the training data (default: 40)" in text and "(default: outputs/poison_clip)" in text
    assert "(default: True)" not in text and "(default: None)" not in text  # switches and unset values say nothing


def test_one_output_flag_name_everywhere(tmp_path):
    for flag in ("--output-dir", "--output_dir", "--output"):  # scan: --output was its first name
        args = build_parser().parse_args(["scan", "model", "--data", "digits", flag, "somewhere"])
        assert args.output_dir == "somewhere"
    evaluate = zeroshot_imagenet
    for flag in ("--output-dir", "--output_dir"):
        args, _ = evaluate.parse_args(["--model", "m", "--data", "digits", flag, str(tmp_path)])
        assert args.output == str(tmp_path / "results.json")
    args, _ = evaluate.parse_args(["--model", "m", "--data", "digits", "--output", "r.json"])
    assert args.output == "r.json"
    complete = complete_unlearning.build_parser()
    args = complete.parse_args(["--model", "m", "--clean-data", "digits", "--output-dir", str(tmp_path)])
    assert args.output == str(tmp_path / "results.json")
    clean = clean_clip
    for flag in ("--output-dir", "--output_dir"):
        assert clean.parse_args([flag, "somewhere"]).output_dir == "somewhere"


def test_scan_writes_under_outputs_by_default():
    from clipclean.cli.scan import _default_output

    assert _default_output("outputs/badnet/model") == Path("outputs") / "scan-model"
    assert _default_output("hf-hub:org/suspect-clip") == Path("outputs") / "scan-suspect-clip"
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "/outputs/" in ignored or "outputs/" in ignored


def test_scan_says_not_cleaned_by_clipclean_without_a_cleaning_record(tiny_clip, tmp_path, capsys):
    from clipclean.cli.scan import _print_recorded, _recorded_cleaning

    poisoned = save_pretrained(tiny_clip, tmp_path / "poisoned", provenance={"method": "poison_clip", "target": "0"})
    assert _recorded_cleaning(str(poisoned), None) is None
    _print_recorded(None, str(poisoned), None)
    printed = capsys.readouterr().out
    assert "not cleaned by clipclean" in printed and "poison_clip" in printed and "verdict" not in printed
    _print_recorded(None, "clipclean-tiny", None)
    assert "not cleaned by clipclean" in capsys.readouterr().out
    cleaned = save_pretrained(tiny_clip, tmp_path / "cleaned", provenance={"method": "bibau", "verdict": "backdoored"})
    assert _recorded_cleaning(str(cleaned), None)["verdict"] == "backdoored"


def test_the_model_card_names_the_model_not_a_local_path(tiny_clip, tmp_path):
    first = save_pretrained(tiny_clip, tmp_path / "deep" / "folder" / "model")  # tiny_clip.name: "clipclean-tiny"
    reloaded = load_clip(str(first))
    assert reloaded.name == str(first)  # the path it was loaded from...
    provenance = {"method": "bibau", "source_model": str(first), "complete": None, "verdict": "backdoored"}
    card = (save_pretrained(reloaded, tmp_path / "cleaned", provenance=provenance) / "README.md").read_text()
    title = next(line for line in card.splitlines() if line.startswith("# "))
    assert title == "# clipclean-tiny — cleaned with clipclean"  # ...is not the title
    assert "**complete**" not in card and "—\n" not in card  # a field that was not measured is left out
    assert "- **verdict**: backdoored" in card
    assert card_title("hf-hub:org/suspect-clip") == "org/suspect-clip" and card_title("ViT-B-32") == "ViT-B-32"


def test_the_trigger_picture_has_a_legend_naming_the_target(tmp_path):
    trigger = PatchBlendTrigger.patch(32, 4, "bottom-right", "white")
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    path = draw_trigger(trigger, tmp_path / "t.png", images=images, title="inverted trigger (bibau)", target="zero")
    with Image.open(path) as image:
        assert image.text["Title"] == "inverted trigger (bibau) -> target class: zero"
        description = image.text["Description"]
        assert "patch/blend trigger" in description and "clean and with the trigger" in description
        legend = image.convert("L").crop((0, 0, image.width, 12))  # the legend's first line is drawn on top
        assert min(legend.getdata()) < 128


def test_checkpoints_rotate_at_debug_level(tmp_path, caplog):
    args = argparse.Namespace(output_dir=str(tmp_path / "run"), report_to=None, mixed_precision=None, seed=0)
    accelerator = make_accelerator(args)
    model = accelerator.prepare(torch.nn.Linear(2, 2))
    checkpoints = RunCheckpoints(accelerator, args.output_dir, progress=TrainingProgress())
    with caplog.at_level(logging.INFO):
        for _ in range(4):
            checkpoints.save()
    assert sorted(path.name for path in checkpoints.folder.iterdir()) == ["checkpoint_2", "checkpoint_3"]
    assert not [record for record in caplog.records if "room" in record.getMessage()]  # nothing at INFO or above
    with caplog.at_level(logging.DEBUG, logger="clipclean"):
        checkpoints.save()
    assert any("make room" in record.getMessage() for record in caplog.records if record.levelno == logging.DEBUG)
    del model


def test_a_finished_run_deletes_its_checkpoints_and_says_where_its_outputs_are(tmp_path, capsys):
    recipe = poison_classifier
    tiny = ["--epochs", "1", "--batch-size", "128", "--architecture-kwargs", '{"width": 2}', "--no-progress"]
    recipe.main([*tiny, "--output-dir", str(tmp_path / "default")])
    printed = capsys.readouterr().out
    assert not (tmp_path / "default" / "checkpoints").exists()
    assert f"outputs in {tmp_path / 'default'}" in printed and "model/" in printed and "results.json" in printed
    recipe.main([*tiny, "--output-dir", str(tmp_path / "kept"), "--keep-checkpoints"])
    assert list((tmp_path / "kept" / "checkpoints").glob("checkpoint_*"))
    assert "checkpoints/" in capsys.readouterr().out


def test_top_k_at_least_the_number_of_classes_is_not_a_headline_number():
    evaluate = zeroshot_imagenet
    results = {"top1": 0.95, "top5": 1.0, "asr_top1": 0.9, "asr_top10": 1.0, "n_images": 400, "n_asr_images": 360,
               "templates": "openai_imagenet", "n_templates": 80}  # fmt: skip
    rows = evaluate.headline_rows({**results, "n_classes": 10})
    ten = [name for name, _ in rows]
    assert "ASR top-10 (%)" not in ten and "CA top-5 (%)" in ten and ("templates", "openai_imagenet (80)") in rows
    five = [name for name, _ in evaluate.headline_rows({**results, "n_classes": 5})]
    assert "CA top-5 (%)" not in five
    thousand = [name for name, _ in evaluate.headline_rows({**results, "n_classes": 1000})]
    assert {"CA top-5 (%)", "ASR top-10 (%)"} <= set(thousand)


def test_the_recipes_summary_names_its_template_set():
    from clipclean.cli.cleaning import templates_note

    note = templates_note("clipclean.data.DIGIT_CAPTION_TEMPLATES (8)")
    assert "DIGIT_CAPTION_TEMPLATES" in note and "eval/zeroshot_imagenet.py" in note and "docs/evaluation.md" in note
    assert "eval/zeroshot_imagenet.py" not in templates_note("openai_imagenet_templates (80)")


def test_the_demo_trains_its_model_with_a_progress_bar(tmp_path, monkeypatch):
    from clipclean.cli.cleaning import prepare_demo

    monkeypatch.delenv("CLIPCLEAN_SMOKE", raising=False)

    def fake_poison_main(argv):
        out = Path(argv[argv.index("--output-dir") + 1])
        out.mkdir(parents=True)
        (out / "results.json").write_text(json.dumps(argv))

    args = argparse.Namespace(demo_cache=str(tmp_path / "cache"), seed=0, progress=True, keep_checkpoints=False,
                              clean_data=None, eval_data=None, eval_trigger=None)  # fmt: skip
    prepare_demo(args, fake_poison_main, "a fake model")
    argv = json.loads((tmp_path / "cache" / "results.json").read_text())
    assert "--no-progress" not in argv and "--keep-checkpoints" not in argv
    assert args.model == str(tmp_path / "cache" / "model")


def test_the_poison_rate_help_gives_each_attack_s_own_default():
    from clipclean.attacks import ATTACKS, list_attacks
    from clipclean.cli.catalogue import attack_defaults

    assert attack_defaults("default_poison_rate") == {
        name: ATTACKS[name].config_class.default_poison_rate for name in list_attacks()
    }
    assert set(attack_defaults("default_poison_rate").values()) == {0.05}


def test_a_negative_verdict_says_it_is_no_proof_and_names_the_easiest_candidate():
    from clipclean.cli.clean_clip import _card_note
    from clipclean.cli.common import negative_verdict_notes

    # as on the 2% set's blended_two_s8_v1: the search named "eight", the targeted inversion reached "two" best
    missed = {
        "verdict": "no backdoor found",
        "untargeted_winner": "eight",
        "recovered_target": "eight",
        "candidate_asr": {"two": 0.809, "nine": 0.48, "eight": 0.251},
    }
    proof, easiest = negative_verdict_notes(missed)
    assert "not proof" in proof and "README.md" in proof
    assert "'two' (80.9%)" in easiest and "'eight' (25.1%)" in easiest
    # the search's winner was also the easiest candidate: only the caveat
    assert len(negative_verdict_notes({**missed, "untargeted_winner": "two", "recovered_target": "two"})) == 1
    # a positive verdict (or none) needs no caveat
    assert negative_verdict_notes({**missed, "verdict": "backdoored"}) == [] == negative_verdict_notes({})
    assert "not proof" in _card_note("bibau", "no backdoor found", unchanged=True)
    assert "not proof" not in _card_note("bibau", "backdoored", unchanged=False)


def test_log_records_go_to_the_current_stderr(monkeypatch):
    """A job run in-process sets up logging once; a caller that swaps and closes ``sys.stderr`` afterwards (pytest's
    capture, a notebook) still gets every later record, and no "I/O operation on closed file" error."""
    import io

    setup_logging()
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    logging.getLogger("clipclean.test_ux").warning("first record")
    first.close()
    monkeypatch.setattr(sys, "stderr", second)
    logging.getLogger("clipclean.test_ux").warning("second record")
    assert "second record" in second.getvalue()
    assert "WARNING clipclean.test_ux" in second.getvalue()
