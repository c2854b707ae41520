"""benchmarks/cost.py: the cost lines, their ratio and break-even, the 224 px projection and the report."""

import csv
import json

import pytest
from conftest import load_script


@pytest.fixture(scope="module")
def cost():
    return load_script("benchmarks/cost.py")


def test_fit_line_recovers_fixed_and_per_pair_cost(cost):
    points = [(n, 100.0 + 0.05 * n) for n in (150, 300, 600, 1097)]
    line = cost.fit_line(points)
    assert line["fixed"] == pytest.approx(100.0) and line["per_pair"] == pytest.approx(0.05)
    with pytest.raises(ValueError, match="two sizes"):
        cost.fit_line([(300, 1.0), (300, 2.0)])


def test_break_even_and_limit(cost):
    cleanclip = {"fixed": 10.0, "per_pair": 0.02}
    cheap_steps = {"fixed": 100.0, "per_pair": 0.025}  # limit 1.25: below 1.5 from (100 - 15) / (0.03 - 0.025)
    assert cost.break_even(cheap_steps, cleanclip, 1.5) == pytest.approx(17_000)
    dear_steps = {"fixed": 100.0, "per_pair": 0.04}  # limit 2: never below 1.5
    assert cost.break_even(dear_steps, cleanclip, 1.5) is None
    assert cost.break_even({"fixed": 1.0, "per_pair": 0.01}, cleanclip, 1.5) == 0.0  # below it at every size
    summary = cost.ratio_summary({"bibau": cheap_steps, "cleanclip": cleanclip}, [300, 17_000], 1.5)
    assert set(summary) == {"bibau"}
    assert summary["bibau"]["limit"] == pytest.approx(1.25)
    assert summary["bibau"]["ratio_at"]["300"] == pytest.approx((100 + 7.5) / (10 + 6))
    assert summary["bibau"]["ratio_at"]["17000"] == pytest.approx(1.5)


def test_search_images_follow_the_default_configs(cost):
    from clipclean.defenses.bibau import BIBAUConfig

    config = BIBAUConfig()
    inv = config.inversion
    images = cost.search_images(candidates=10)
    per_step = inv.patch_hypotheses * inv.batch_size
    assert (
        images["m_step"]
        == (inv.rounds * inv.steps_per_round + (config.rounds + 1) * config.reinversion_steps) * per_step
    )
    assert images["verdict"] == inv.verdict_steps * 10 * inv.verdict_batch_size
    assert (
        cost.search_images(candidates=1000)["verdict"]
        == inv.verdict_steps * inv.max_verdict_candidates * inv.verdict_batch_size
    )


def test_projection_from_a_scale_table(cost):
    def row(model, phase, seconds, images, batch=16, processes=1):
        return {"model": model, "phase": phase, "processes": str(processes), "s_per_step": str(seconds),
                "images_per_step": str(images), "global_batch": str(batch)}  # fmt: skip

    rows = [row("M", "m_step", 48.0, 48), row("M", "verdict", 80.0, 80), row("M", "unlearning", 32.0, 32),
            row("M", "cleanclip", 16.0, 32), row("M", "unlearning", 1.0, 32, processes=2),
            row("N", "m_step", 1.0, 48)]  # fmt: skip  # N lacks phases: left out
    projected = cost.project(rows, passes=18, ratio=1.5, sizes=[1000])
    assert set(projected) == {"M"}
    images = cost.search_images()
    lines = projected["M"]["lines"]
    assert lines["bibau"]["fixed"] == pytest.approx(images["m_step"] + images["verdict"])  # 1 s an image
    assert lines["bibau"]["per_pair"] == pytest.approx(18 * 2.0) and lines["cleanclip"]["per_pair"] == pytest.approx(
        18
    )
    assert (
        projected["M"]["bibau"]["limit"] == pytest.approx(2.0) and projected["M"]["bibau"]["break_even_pairs"] is None
    )


def test_report_only_collects_finished_runs(cost, tmp_path):
    zoo_dir, output = tmp_path / "zoo", tmp_path / "out"

    def finished(model, variant, n, wall, search, unlearning):
        folder = cost.folder(zoo_dir, model, variant, n)
        folder.mkdir(parents=True)
        phases = {
            "defense/inversion": search / 2,
            "defense/verdict": search / 2,
            "cleaning/unlearning_steps": unlearning,
        }
        results = {"wall_time_s": wall, "phase_wall_time_s": phases, "steps_per_epoch": n // 64,
                   "before": {"clean_accuracy": 0.95, "attack_success_rate": 1.0},
                   "after": {"clean_accuracy": 0.94, "attack_success_rate": 0.01},
                   "inversion": {"verdict": "backdoored"} if variant != "cleanclip" else None}  # fmt: skip
        (folder / "results.json").write_text(json.dumps(results))

    for n in (300, 600):
        finished("m_s1_v0", "bibau", n, 100 + 0.1 * n, 80, 0.1 * n)
        finished("m_s1_v0", "cleanclip", n, 5 + 0.05 * n, 0, 0.05 * n)
    absent = str(tmp_path / "absent.csv")
    arguments = ["--zoo-dir", str(zoo_dir), "--models", "m_s1_v0", "--sizes", "300", "600", "--output", str(output),
                 "--variants", "bibau", "cleanclip", "--report-only", "--scale", absent]  # fmt: skip
    cost.main(arguments)
    with (output / "cost.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["variant"], r["n_pairs"]) for r in rows] == [
        ("bibau", "300"),
        ("cleanclip", "300"),
        ("bibau", "600"),
        ("cleanclip", "600"),
    ]
    assert float(rows[0]["search_s"]) == 80 and float(rows[0]["other_s"]) == pytest.approx(130 - 80 - 30)
    summary = json.loads((output / "cost.json").read_text())
    measured = summary["measured"]
    assert measured["lines"]["bibau"] == pytest.approx({"fixed": 100.0, "per_pair": 0.1})
    assert measured["bibau"]["limit"] == pytest.approx(2.0) and measured["bibau"]["break_even_pairs"] is None
    assert summary["projected_224px"] == {}
    table = (output / "cost.md").read_text()
    assert "| bibau | 300 | 1 | 130 (130-130) | 80 | 30.0 |" in table and "never" in table


def test_sizes_beyond_a_digits_split_repeat_its_pairs(cost, tmp_path):
    import argparse

    from clipclean.data import load_image_caption_dataset

    args = argparse.Namespace(data="digits:defender", zoo_dir=str(tmp_path))
    assert cost.data_for(args, 300) == "digits:defender" and cost.digits_split_size("pairs.csv") is None
    path = cost.data_for(args, 310)
    assert path.endswith(".csv") and cost.data_for(args, 310) == path  # written once
    repeated = load_image_caption_dataset(path, image_size=32)
    defender = load_image_caption_dataset("digits:defender", image_size=32)
    assert len(repeated) == 310 and repeated.captions[300:] == defender.captions[:10]
    image, _ = repeated[305]
    assert (image - defender[5][0]).abs().max() <= 1 / 255  # the same image, through an 8-bit PNG
