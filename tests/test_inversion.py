"""Blind inversion (EM) on a CLIP with a planted backdoor: E-step, M-step, recovery, verdict pieces."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from planted import TARGET, PlantedBackdoorCLIP, clean_images, planted_candidates, true_trigger

from clipclean.inversion import (
    BlindInversion,
    InversionConfig,
    anomaly_index,
    cycle,
    micro_batch_layout,
    search_lift,
    total_variation,
    verdict_score,
)
from clipclean.triggers import PatchBlendTrigger, mask_iou


@pytest.fixture(scope="module")
def planted():
    return PlantedBackdoorCLIP()


def test_planted_model_is_backdoored(planted):
    images, _ = clean_images(16)
    with torch.no_grad():
        clean = planted.encode_image(images) @ planted.planted
        triggered = planted.encode_image(true_trigger()(images)) @ planted.planted
    assert clean.max() < 0.5 and triggered.min() > 0.95


def test_e_step_recovers_planted_direction(planted):
    images, captions = clean_images(64)
    inverter = BlindInversion(planted, InversionConfig(patch_hypotheses=1))
    inverter.population = [true_trigger()]
    stats = inverter.e_step([(images[:32], captions[:32]), (images[32:], captions[32:])])
    assert stats.n_images == 64
    assert float(stats.directions[0] @ planted.planted) > 0.99
    assert float(stats.hijacked_fractions[0]) == 1.0
    assert float(stats.backdoor_scores[0]) > 0.5
    # a second E-step with responsibilities from the first keeps the direction
    stats = inverter.e_step([(images, captions)])
    assert float(stats.directions[0] @ planted.planted) > 0.99


def test_e_step_without_trigger_effect_finds_no_collapse(planted):
    images, captions = clean_images(64)
    inverter = BlindInversion(planted, InversionConfig(patch_hypotheses=1))
    inverter.population = [PatchBlendTrigger.blend(32, alpha=0.01, pattern="black")]
    stats = inverter.e_step([(images, captions)])
    assert float(stats.directions[0] @ planted.planted) < 0.5


def test_m_step_raises_map_objective(planted):
    images, captions = clean_images(64)
    config = InversionConfig(patch_hypotheses=2, steps_per_round=30, mask_budgets=(0.02,), online_direction=False)
    inverter = BlindInversion(planted, config)
    batches = [(images, captions)]
    inverter.e_step(batches)
    text = inverter._text_features(captions)
    before = inverter.population_objective(inverter.population, images, text, inverter.directions).detach()
    inverter.m_step(cycle(batches))
    after = inverter.population_objective(inverter.population, images, text, inverter.directions).detach()
    assert (after > before).all(), (before, after)


def test_m_step_never_exceeds_the_mask_budget(planted):
    images, captions = clean_images(32)
    inverter = BlindInversion(planted, InversionConfig(patch_hypotheses=1, steps_per_round=10, mask_budgets=(0.01,)))
    inverter.e_step([(images, captions)])
    inverter.m_step(cycle([(images, captions)]))
    assert inverter.population[0].coverage() <= 0.01 + 1e-6


def test_model_parameters_are_untouched_by_inversion(planted):
    images, captions = clean_images(32)
    before = {name: value.clone() for name, value in planted.state_dict().items()}
    inverter = BlindInversion(planted, InversionConfig(patch_hypotheses=1, steps_per_round=3, rounds=1))
    inverter.run_em([(images, captions)], e_step_batches=1)
    assert all(torch.equal(value, planted.state_dict()[name]) for name, value in before.items())
    assert all(p.requires_grad for p in planted.parameters())


def test_untargeted_inversion_recovers_planted_patch_and_target(planted):
    images, captions = clean_images(64)
    names, embeddings = planted_candidates(planted)
    config = InversionConfig(
        rounds=3, steps_per_round=40, mask_budgets=(0.004, 0.016, 0.03), verdict_steps=30, batch_size=32
    )
    inverter = BlindInversion(planted, config, candidate_names=names, candidate_embeddings=embeddings)
    result = inverter.fit(images, captions)
    assert result.recovered_target == TARGET
    assert result.hijacked_fraction > config.collapse_fraction
    found_mask = result.trigger.full_mask_and_pattern()[0].detach()
    true_mask = true_trigger().full_mask_and_pattern()[0].detach()
    iou = mask_iou(found_mask, true_mask)
    # Reported, not asserted: at the growing budget the search stops at 0.4% of the image, where a natural
    # universal patch next to the planted 4x4 square (1.6%) already hijacks toward the target, so it names the
    # target without localising the planted patch (IoU 0 here; on the digits BadNet model the found mask's centroid
    # is (25.8, 25.8), beside the patch's rows/columns 28-31). The next test localises it at a budget that admits it.
    print(f"planted patch mask IoU at the growing budget: {iou:.2f}")
    assert 0.0 <= iou <= 1.0
    assert result.verdict == "backdoored"
    assert result.candidate_asr[TARGET] == max(result.candidate_asr.values())
    assert result.anomaly_index > result.verdict_threshold
    report = result.report()
    assert {"verdict", "recovered_target", "target_candidates", "backdoor_score", "anomaly_index"} <= set(report)
    # the search's own trigger, measured toward the winner on the verdict's images (a rate; here it pulls the
    # embeddings closer to u than to their captions but flips fewer zero-shot predictions than the targeted one)
    assert report["search_trigger_asr"] == result.search_trigger_asr and 0.0 <= result.search_trigger_asr <= 1.0
    rates, winner = list(result.candidate_asr.values()), list(result.candidate_asr).index(TARGET)
    searched = verdict_score(rates, "winner-or-max-or-search-lift", winner, result.search_trigger_asr)
    assert searched[0] >= verdict_score(rates, "winner-or-max-lift", winner)[0]
    # the report records the handicap its score paid (None: ln K, the default)
    assert report["lift_handicap"] is None and result.anomaly_index == pytest.approx(searched[0])


def test_inversion_localises_the_planted_patch_when_the_budget_admits_it(planted):
    """With a mask budget above the planted patch's 1.6% of the image, the focused start in the bottom-right
    corner grows onto the planted square and outscores the natural universal patches the other starts find.
    Measured: IoU 0.43, 47% of the mask's mass in the square, backdoor score 0.98 vs 0.65; diffuse starts: IoU 0."""
    images, captions = clean_images(64)
    names, embeddings = planted_candidates(planted)
    config = InversionConfig(rounds=3, steps_per_round=40, mask_budgets=(0.02,), batch_size=32)
    result = BlindInversion(planted, config, candidate_names=names, candidate_embeddings=embeddings).fit(
        images, captions, verdict=False
    )
    found_mask = result.trigger.full_mask_and_pattern()[0].detach()
    true_mask = true_trigger().full_mask_and_pattern()[0].detach()
    iou = mask_iou(found_mask, true_mask)
    print(f"planted patch mask IoU at a 2% budget: {iou:.2f}")
    assert result.recovered_target == TARGET
    assert iou > 0.25
    assert float(found_mask[..., -4:, -4:].sum() / found_mask.sum()) > 0.3


def test_targeted_mode_fixes_the_direction(planted):
    images, captions = clean_images(32)
    inverter = BlindInversion(planted, InversionConfig(patch_hypotheses=1), target_caption=f"a photo of a {TARGET}.")
    stats = inverter.e_step([(images, captions)])
    assert torch.allclose(stats.directions[0], planted.planted, atol=1e-5)


def test_reduce_fn_sees_statistics_and_trigger_gradients(planted):
    images, captions = clean_images(16)
    calls = []

    def reduce_fn(tensor, op):
        calls.append(op)
        return tensor

    inverter = BlindInversion(planted, InversionConfig(patch_hypotheses=1, steps_per_round=2), reduce_fn=reduce_fn)
    inverter.e_step([(images, captions)])
    assert calls.count("sum") >= 4
    calls.clear()
    inverter.m_step(cycle([(images, captions)]))
    assert calls.count("mean") >= 2 * 2  # two parameters (mask, pattern) per step


def test_anomaly_index():
    index, best = anomaly_index([0.1, 0.12, 0.09, 0.11, 0.95, 0.1])
    assert best == 4 and index > 10
    index, position = anomaly_index([0.1, 0.12, 0.09, 0.11, 0.95, 0.1], position=1)
    assert position == 1 and index < 2
    index, _ = anomaly_index([0.1, 0.3, 0.2, 0.25, 0.15])
    assert index < 2


def test_verdict_scores_spread_rates_near_one_on_the_log_odds_scale():
    # a target at 99.6% among natural classes at 8-72%: under 2.5 on the rates, far over it on their log-odds
    rates = [0.56, 0.08, 0.41, 0.996, 0.72, 0.21, 0.54, 0.61, 0.17, 0.63]
    plain, position = verdict_score(rates, "winner", 3)
    logit, _ = verdict_score(rates, "winner-logit", 3)
    assert position == 3 and plain == pytest.approx(anomaly_index(rates, 3)[0]) and plain < 2.5 < logit
    # the max-candidate statistics score the largest rate whatever the winner; without a winner so do all
    assert verdict_score(rates, "max-candidate", 0)[1] == verdict_score(rates, "max-candidate-logit", 0)[1] == 3
    assert verdict_score(rates, "winner", None) == verdict_score(rates, "max-candidate", None)
    # rates of 0 and 1 stay finite (clipped), and the order of the candidates is kept
    score, position = verdict_score([1.0, 0.0, 0.1, 0.2, 0.1], "max-candidate-logit", None)
    assert position == 0 and math.isfinite(score)
    with pytest.raises(ValueError, match="winner-logit"):
        verdict_score(rates, "largest", None)


def test_the_lift_is_a_log_odds_lead_over_the_median_candidate_not_divided_by_the_spread():
    def logit(p):
        return math.log(p / (1 - p))

    # every class hard to reach, one a little less (a never-poisoned model): a large anomaly index, a small lift
    hard = [0.38, 0.33, 0.21, 0.2, 0.19, 0.18, 0.18, 0.17, 0.16, 0.15]
    lift, position = verdict_score(hard, "winner-lift", 0)
    assert position == 0 and lift == pytest.approx(logit(0.38) - logit(0.18))  # the lower middle of ten
    assert verdict_score(hard, "winner", 0)[0] > 2.5 > lift
    # a backdoor target far easier to reach than the typical class: a large lift
    easy = [0.97, 0.56, 0.53, 0.46, 0.4, 0.35, 0.3, 0.3, 0.25, 0.2]
    assert verdict_score(easy, "max-candidate-lift", None) == (pytest.approx(logit(0.97) - logit(0.35)), 0)
    assert InversionConfig().threshold_for("winner-lift") < 2.5 == InversionConfig().threshold_for("winner")
    assert InversionConfig(anomaly_threshold=3).threshold_for("winner-lift") == 3.0


@pytest.mark.parametrize("values", [[0.1, 0.3, 0.2, 0.25, 0.15], [0.0, 0.01, 0.9, 0.02, 0.0, 0.03, 0.05]])
def test_anomaly_index_is_scipys_robust_z_score_for_an_odd_count(values):
    from scipy.stats import median_abs_deviation

    index, best = anomaly_index(values)
    robust_z = (max(values) - np.median(values)) / median_abs_deviation(values, scale="normal")
    assert best == int(np.argmax(values)) and index == pytest.approx(robust_z, rel=2e-6)  # 1.4826 vs 1.482602...
    # an even count uses the lower middle values (torch.median), as the verdict's threshold was measured
    even = [0.0, 0.0, 0.1, 0.3, 0.5, 0.9]
    assert anomaly_index(even)[0] == pytest.approx((0.9 - 0.1) / (1.4826 * 0.1))


def test_total_variation_and_config_validation():
    assert float(total_variation(torch.zeros(3, 8, 8))) == 0.0
    assert float(total_variation(torch.rand(3, 8, 8))) > 0
    with pytest.raises(ValueError):
        InversionConfig(mask_budgets=(0.03, 0.01))
    with pytest.raises(ValueError):
        InversionConfig(rounds=0)
    assert F.normalize(torch.ones(2), dim=0).norm() == pytest.approx(1.0)


def _trigger_gradients(inverter, triggers, images, text, directions):
    for trigger in triggers:
        trigger.zero_grad(set_to_none=True)
    objective = inverter._objective_backward(triggers, images, text, directions)
    return objective, [p.grad.clone() for trigger in triggers for p in trigger.parameters()]


@pytest.mark.parametrize("micro_batch", [7, 2])
@pytest.mark.parametrize("online", [False, True])
def test_micro_batches_give_the_whole_batch_gradient(planted, online, micro_batch):
    """``micro_batch`` chunks the stacked triggered images (verdict: candidates x batch) without changing Q or its
    gradient; the graph holds one chunk at a time, also with fewer images per pass than triggers (2 < 3)."""
    images, captions = clean_images(24)
    whole = BlindInversion(planted, InversionConfig(patch_hypotheses=3, mask_budgets=(0.02,)))
    whole.e_step([(images, captions)])
    text = whole._text_features(captions)
    directions = None if online else whole.directions
    reference, expected = _trigger_gradients(whole, whole.population, images, text, directions)
    config = InversionConfig(patch_hypotheses=3, mask_budgets=(0.02,), micro_batch=micro_batch)
    chunked = BlindInversion(planted, config)
    chunked.population = whole.population
    objective, gradients = _trigger_gradients(chunked, whole.population, images, text, directions)
    torch.testing.assert_close(objective, reference, rtol=1e-5, atol=1e-6)
    assert len(gradients) == len(expected) > 0
    for got, want in zip(gradients, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="micro_batch"):
        InversionConfig(micro_batch=0)


def test_micro_batch_layout_bounds_the_images_per_pass():
    assert micro_batch_layout(3, 24, 7) == (3, 2)  # every trigger, 2 images: 12 passes of 6
    assert micro_batch_layout(20, 32, 8) == (4, 2)  # the verdict: 4 candidates x 2 images, 80 passes (8 x 1: 96)
    assert micro_batch_layout(3, 24, 2) == (1, 2)  # 36 passes (2 x 1: 48)
    for triggers, images, micro_batch in [(20, 32, 8), (3, 5, 4), (1, 64, 8), (7, 3, 100)]:
        group, chunk = micro_batch_layout(triggers, images, micro_batch)
        assert group * chunk <= micro_batch and 1 <= group <= triggers and 1 <= chunk <= images


def test_micro_batches_in_the_classifier_inversion():
    from clipclean.classifiers import create_classifier
    from clipclean.inversion import build_inverter

    torch.manual_seed(0)
    names = ["a", "b", "c", "d"]
    model = create_classifier("small-cnn", names, image_size=32, width=4).eval()
    images, labels = torch.rand(10, 3, 32, 32), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    results = []
    for micro_batch in (None, 5):
        torch.manual_seed(1)
        config = InversionConfig(patch_hypotheses=2, mask_budgets=(0.02,), micro_batch=micro_batch)
        inverter = build_inverter(model, config, candidate_names=names, candidate_embeddings=model.class_embeddings)
        inverter.e_step([(images, labels)])
        text = inverter._text_features(labels)
        results.append(_trigger_gradients(inverter, inverter.population, images, text, None))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    for got, want in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_max_candidate_verdict_adopts_the_candidate_the_untargeted_search_missed(planted, monkeypatch):
    """``verdict_statistic="max-candidate"`` scores the largest targeted ASR; when that declares a backdoor on
    another class than the untargeted winner, the result names it, with its embedding and targeted trigger."""
    images, captions = clean_images(32)
    names, embeddings = planted_candidates(planted)
    config = InversionConfig(patch_hypotheses=1, rounds=1, steps_per_round=2, verdict_steps=2,
                             verdict_statistic="max-candidate")  # fmt: skip
    inverter = BlindInversion(planted, config, candidate_names=names, candidate_embeddings=embeddings)
    inverter.run_em([(images, captions)])
    winner = inverter.result().recovered_target
    other = next(index for index, name in enumerate(names) if name != winner)
    seen = {}

    def fake_verdict(batches, untargeted_winner):  # the targeted ASR of ``other`` stands out
        seen["scored"] = untargeted_winner
        inverter.verdict_triggers = {other: true_trigger()}
        # as the real verdict returns (verdict_score): the largest ASR's candidate for the max-candidate statistics
        named = other if inverter.verdict_statistic.startswith("max-candidate") else untargeted_winner
        return 9.0, {name: (0.9 if index == other else 0.1) for index, name in enumerate(names)}, named

    monkeypatch.setattr(inverter, "verdict", fake_verdict)
    result = inverter.result([(images, captions)])
    assert seen["scored"] == names.index(winner)  # the winner is always among the tested candidates
    assert result.verdict == "backdoored" and result.recovered_target == names[other]
    assert result.named_by == "verdict" and result.report()["named_by"] == "verdict"
    assert result.untargeted_winner == winner and result.report()["untargeted_winner"] == winner  # kept
    assert result.target_candidates[0][0] == names[other]
    torch.testing.assert_close(result.direction, F.normalize(embeddings[other].float(), dim=-1))
    assert result.trigger is inverter.verdict_triggers[other]
    # the default statistic scores the winner and keeps its name
    inverter.config.verdict_statistic = "winner"
    kept = inverter.result([(images, captions)])
    assert seen["scored"] == names.index(winner) and kept.named_by == "untargeted search"
    with pytest.raises(ValueError, match="verdict_statistic"):
        InversionConfig(verdict_statistic="best")


def test_winner_or_max_lift_takes_the_largest_lift_handicapped_by_ln_k_when_the_winner_is_wrong():
    def logit(p):
        return math.log(p / (1 - p))

    # the seed-0 BadNet digits CLIP of the benchmark: the untargeted search named "three" (index 3), while the
    # targeted inversion toward "zero" reached 96.6%; the winner's lift is 0 (it is the median candidate)
    rates = [0.966, 0.161, 0.447, 0.273, 0.149, 0.241, 0.358, 0.038, 0.549, 0.31]
    assert verdict_score(rates, "winner-lift", 3) == (0.0, 3)
    score, position = verdict_score(rates, "winner-or-max-lift", 3)
    assert position == 0 and score == pytest.approx(logit(0.966) - logit(0.273) - math.log(10))
    assert score > InversionConfig().threshold_for("winner-or-max-lift")
    # a right winner keeps its own lift (no handicap): the larger of the two terms
    assert verdict_score(rates, "winner-or-max-lift", 0) == verdict_score(rates, "winner-lift", 0)
    # a never-poisoned model: the largest lift minus ln(10) stays below the threshold
    hard = [0.38, 0.33, 0.21, 0.2, 0.19, 0.18, 0.18, 0.17, 0.16, 0.15]
    assert verdict_score(hard, "winner-or-max-lift", 5)[0] < InversionConfig().threshold_for("winner-or-max-lift")


def test_the_search_lift_scores_the_winner_by_the_search_trigger_handicapped_by_ln_k():
    def logit(p):
        return math.log(p / (1 - p))

    # the fresh set's badnet_three_s3_v0: the verdict's targeted trigger toward the right winner "three" reached 37%
    rates = [0.297, 0.018, 0.245, 0.370, 0.314, 0.325, 0.179, 0.227, 0.458, 0.591]
    statistic = "winner-or-max-or-search-lift"
    plain = verdict_score(rates, "winner-or-max-lift", 3)
    assert verdict_score(rates, statistic, 3) == plain == verdict_score(rates, statistic, 3, None)
    assert plain[0] < InversionConfig().threshold_for("winner-or-max-lift")  # the miss
    score, position = verdict_score(rates, statistic, 3, 0.98)  # the search's own trigger on the same images
    assert position == 3 and score == pytest.approx(logit(0.98) - logit(0.297) - math.log(10))
    assert score > InversionConfig().threshold_for(statistic)
    # a search trigger no better than a typical targeted one adds nothing; without a winner it is never scored
    assert verdict_score(rates, statistic, 3, 0.4) == plain
    assert verdict_score(rates, statistic, None, 0.98) == verdict_score(rates, "winner-or-max-lift", None)
    assert BlindInversion.default_verdict_statistic == statistic


def test_the_lift_handicap_replaces_ln_k_in_both_combined_statistics():
    def logit(p):
        return math.log(p / (1 - p))

    # the 2% test set's blended_two_s8_v1: the search named "eight" (index 8), the targeted trigger toward the true
    # target "two" reached the largest lift, and ln(10) kept it under the threshold
    rates = [0.12, 0.2, 0.93, 0.25, 0.3, 0.22, 0.35, 0.4, 0.57, 0.18]
    default = verdict_score(rates, "winner-or-max-lift", 8)
    assert default == verdict_score(rates, "winner-or-max-lift", 8, handicap=math.log(10))
    largest = logit(0.93) - sorted(logit(rate) for rate in rates)[4]
    assert default == (pytest.approx(largest - math.log(10)), 2)
    assert verdict_score(rates, "winner-or-max-lift", 8, handicap=1.0) == (pytest.approx(largest - 1.0), 2)
    # the search term pays the same handicap
    searched = verdict_score(rates, "winner-or-max-or-search-lift", 8, 0.99, 0.5)
    assert searched == (pytest.approx(search_lift(rates, 0.99) - 0.5), 8)
    assert search_lift(rates, 0.99) == pytest.approx(logit(0.99) - sorted(logit(rate) for rate in rates)[4])
    # a right winner's own lift never pays it; the config carries it and refuses a negative one
    assert verdict_score(rates, "winner-or-max-lift", 2, handicap=5.0) == verdict_score(rates, "winner-lift", 2)
    assert InversionConfig().lift_handicap is None and InversionConfig(lift_handicap=1.5).lift_handicap == 1.5
    with pytest.raises(ValueError, match="lift_handicap"):
        InversionConfig(lift_handicap=-1.0)


def test_the_confirmation_retests_the_largest_candidate_other_than_the_winner_without_the_handicap(planted):
    def logit(p):
        return math.log(p / (1 - p))

    images, captions = clean_images(64)
    names, embeddings = planted_candidates(planted)
    config = InversionConfig(verdict_steps=30, verdict_budget=0.03, confirm_top=1)
    inverter = BlindInversion(planted, config, candidate_names=names, candidate_embeddings=embeddings)
    batches = [(images[:32], captions[:32]), (images[32:], captions[32:])]
    target, wrong = names.index(TARGET), names.index("car")
    # as on blended_two_s8_v1: the search named a wrong class; the true target had the largest first targeted ASR
    rates = [0.6 if k == target else 0.3 if k == wrong else 0.1 for k in range(len(names))]
    lifts = inverter.confirm(range(len(names)), rates, wrong, batches)
    assert list(lifts) == [target]  # one candidate re-tested: the largest other than the winner
    # a fresh trigger toward the planted target hijacks most images (an ASR over 75%): a lift over the first
    # median (log-odds of 0.1) far above the threshold, and its trigger is the one kept for the candidate
    assert lifts[target] > logit(0.75) - logit(0.1) > InversionConfig().threshold_for("winner-lift")
    assert list(inverter.verdict_triggers) == [target]
    # the winner is never re-tested: with the target as winner, the next largest candidate is, and a wrong one
    # reaches a far smaller lift
    toward_target = lifts[target]
    lifts = inverter.confirm(range(len(names)), rates, target, batches)
    assert list(lifts) == [wrong] and lifts[wrong] < toward_target - 1.5
    assert inverter.confirm(range(len(names)), rates, target, batches) == lifts  # seeded: the same measurement
    with pytest.raises(ValueError, match="confirm_top"):
        InversionConfig(confirm_top=-1)


def test_the_verdict_takes_a_confirmed_lift_only_when_it_is_larger_and_reports_it(planted):
    images, captions = clean_images(64)
    names, embeddings = planted_candidates(planted)
    settings = dict(rounds=2, steps_per_round=20, mask_budgets=(0.03,), verdict_steps=30, batch_size=32)
    plain = BlindInversion(
        planted, InversionConfig(**settings), candidate_names=names, candidate_embeddings=embeddings
    )
    confirmed = BlindInversion(
        planted, InversionConfig(**settings, confirm_top=1), candidate_names=names, candidate_embeddings=embeddings
    )
    first, second = plain.fit(images, captions), confirmed.fit(images, captions)
    assert first.recovered_target == second.recovered_target == TARGET and first.confirmed_lifts == {}
    # the search and the first measurement are the same; the confirmation re-tested one other candidate, whose
    # confirmed lift stays below the winner's, so the score and the verdict are unchanged
    assert second.candidate_asr == first.candidate_asr and second.anomaly_index == first.anomaly_index
    [(name, lift)] = second.confirmed_lifts.items()
    assert name != TARGET and lift < second.anomaly_index
    assert second.report()["confirmed_lifts"] == {name: lift} and first.report()["confirmed_lifts"] == {}


def test_the_verdict_budget_scale_shrinks_the_verdicts_triggers_only(planted):
    from clipclean.inversion import take_confirmed

    images, captions = clean_images(32)
    names, embeddings = planted_candidates(planted)
    budgets = {}
    for scale in (1.0, 0.5):
        config = InversionConfig(verdict_steps=2, mask_budgets=(0.03,), verdict_budget_scale=scale)
        inverter = BlindInversion(planted, config, candidate_names=names, candidate_embeddings=embeddings)
        triggers = inverter._targeted_triggers([0, 1], cycle([(images, captions)]))
        budgets[scale] = {trigger.mask_budget for trigger in triggers}
        assert inverter.mask_budget == 0.03  # the search's budget is untouched
    assert budgets == {1.0: {0.03}, 0.5: {0.015}}
    # an explicit verdict_budget wins over the scale
    config = InversionConfig(verdict_steps=2, verdict_budget=0.02, verdict_budget_scale=0.5)
    inverter = BlindInversion(planted, config, candidate_names=names, candidate_embeddings=embeddings)
    assert {t.mask_budget for t in inverter._targeted_triggers([0], cycle([(images, captions)]))} == {0.02}
    assert config.verdict_budget_for(0.03) == 0.02  # what benchmarks/reverdict.py asks of a recorded search budget
    assert InversionConfig(verdict_budget_scale=0.5).verdict_budget_for(0.016) == 0.008
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="verdict_budget_scale"):
            InversionConfig(verdict_budget_scale=bad)
    # the confirmation rule: a confirmed lift replaces the score (and the name) only when it is larger
    assert take_confirmed(1.0, "two", {"eight": 0.5}) == (1.0, "two")
    assert take_confirmed(1.0, "two", {"eight": 1.5, "nine": 1.2}) == (1.5, "eight")
    assert take_confirmed(1.0, "two", {}) == (1.0, "two")


def test_the_holdout_mask_is_a_fixed_fraction_of_images_whatever_their_order():
    from clipclean.inversion import holdout_mask

    images = torch.rand(2000, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    held = holdout_mask(images, 0.25)
    assert held.dtype == torch.bool and 0.22 < held.float().mean() < 0.28
    order = torch.randperm(2000, generator=torch.Generator().manual_seed(1))
    assert torch.equal(holdout_mask(images[order], 0.25), held[order])  # per image, not per position
    assert torch.equal(holdout_mask(images[:7], 0.25), held[:7])  # nor per batch
    assert not holdout_mask(images, 0.0).any()
    assert (holdout_mask(images, 0.5) | ~held).all()  # a larger fraction holds out a superset
    with pytest.raises(ValueError, match="verdict_holdout"):
        InversionConfig(verdict_holdout=1.0)


def test_a_verdict_with_a_holdout_fits_its_triggers_on_the_other_images_and_measures_on_the_held_out(planted):
    from clipclean.inversion import holdout_mask

    images, captions = clean_images(128)
    names, embeddings = planted_candidates(planted)
    config = InversionConfig(verdict_steps=6, verdict_budget=0.03, verdict_holdout=0.25)
    inverter = BlindInversion(planted, config, candidate_names=names, candidate_embeddings=embeddings)
    fitted, measured = [], []
    objective = inverter._objective_backward

    def spy_objective(triggers, batch, text, directions):
        fitted.append(batch)
        assert text.shape[0] == batch.shape[0]  # the captions were selected with their images
        return objective(triggers, batch, text, directions)

    encode = planted.encode_image

    def spy_encode(batch):
        measured.append(batch)
        return encode(batch)

    inverter._objective_backward = spy_objective
    planted.encode_image = spy_encode
    try:
        batches = [(images[i : i + 32], captions[i : i + 32]) for i in range(0, 128, 32)]
        inverter.verdict(batches, names.index(TARGET), search_trigger=true_trigger())
    finally:
        del planted.encode_image
    assert len(fitted) == 6 and all(not holdout_mask(batch, 0.25).any() for batch in fitted)
    # the clean passes of the measurement (the triggered ones change the pixels) see only held-out images: 16
    # batches (ceil(4 / 0.25)) cycling over the 4, so each held-out image 4 times
    clean_passes = [batch for batch in measured if batch.shape[0] and holdout_mask(batch, 0.25).all()]
    assert sum(batch.shape[0] for batch in clean_passes) == 4 * int(holdout_mask(images, 0.25).sum())
    assert inverter.search_asr > 0.9  # the true trigger, measured on held-out images
