"""clipclean.training: the run monitor (collapsed-loss plateau, per-epoch curves) and the convergence criterion."""

import math

import pytest

from clipclean.training import ConvergenceCriterion, TrainingMonitor


def test_monitor_counts_the_steps_at_the_collapsed_loss_and_summarises_each_epoch():
    monitor = TrainingMonitor(global_batch_size=128)
    collapsed = math.log(128)
    assert monitor.collapsed_loss == pytest.approx(4.852, abs=1e-3)
    steps = [(0, collapsed + 0.01, 0.5, 14.3), (0, collapsed, 20.0, 14.2), (1, 3.0, 2.0, 14.5), (1, 2.0, 4.0, 15.0)]
    for step in steps:
        monitor.update(*step)

    summary = monitor.summary()
    assert summary["steps"] == 4 and summary["plateau_steps"] == 2  # within 0.5% of ln(128)
    assert summary["max_grad_norm"] == 20.0
    first, second = summary["epochs"]
    assert first["epoch"] == 0 and first["steps"] == 2 and first["loss"] == pytest.approx(collapsed + 0.005)
    assert first["grad_norm"] == pytest.approx(10.25) and first["grad_norm_max"] == 20.0
    assert second["loss"] == pytest.approx(2.5) and second["logit_scale"] == 15.0  # the scale at the epoch's end

    restored = TrainingMonitor(global_batch_size=2)
    restored.load_state_dict(monitor.state_dict())
    assert restored.summary() == summary and restored.collapsed_loss == monitor.collapsed_loss
    restored.update(1, 1.0, float("inf"), 15.0)  # a non-finite norm (fp16 overflow) is kept out of the maximum
    assert restored.max_grad_norm == 20.0 and restored.summary()["epochs"][1]["steps"] == 3

    with pytest.raises(ValueError, match="global_batch_size"):
        TrainingMonitor(global_batch_size=1)
    with pytest.raises(ValueError, match="plateau_tolerance"):
        TrainingMonitor(global_batch_size=8, plateau_tolerance=0)


def test_convergence_needs_clean_accuracy_well_above_chance_and_for_a_poisoned_run_the_backdoor():
    criterion = ConvergenceCriterion()
    # default clean-accuracy bar: 5x chance, or halfway from chance to 100% when lower
    assert criterion.clean_accuracy_threshold(10) == pytest.approx(0.5)
    assert criterion.clean_accuracy_threshold(2) == pytest.approx(0.75)
    assert criterion.clean_accuracy_threshold(1000) == pytest.approx(0.005)

    # the runs: learned (seed 0) and the silent failures (seed 1, the new user's blended run)
    assert criterion.check(0.9625, 1.0, n_classes=10, poisoned=True)["converged"]
    seed_1 = criterion.check(0.535, 0.02, n_classes=10, poisoned=True)
    assert not seed_1["converged"] and seed_1["failures"] == ["attack success rate 2.00% < 50.00%"]
    user = criterion.check(0.82, 0.08, n_classes=10, poisoned=True)
    assert not user["converged"] and "attack success rate 8.00%" in user["failures"][0]
    collapsed = criterion.check(0.365, 0.137, n_classes=10, poisoned=True)
    assert len(collapsed["failures"]) == 2 and collapsed["failures"][0].startswith("clean accuracy 36.50% < 50.00%")
    assert not criterion.check(float("nan"), 1.0, n_classes=10, poisoned=True)["converged"]

    clean = criterion.check(0.945, 0.0, n_classes=10, poisoned=False)  # a never-poisoned run: ASR is not asked for
    assert clean["converged"] and clean["min_attack_success_rate"] is None
    assert not criterion.check(0.945, None, n_classes=10, poisoned=True)["converged"]

    strict = ConvergenceCriterion(min_clean_accuracy=0.9, min_attack_success_rate=0.9)
    result = strict.check(0.89, 0.95, n_classes=10, poisoned=True)
    assert not result["converged"] and result["min_clean_accuracy"] == 0.9
    assert result["criterion"] == {"min_clean_accuracy": 0.9, "min_attack_success_rate": 0.9}

    with pytest.raises(ValueError, match="min_clean_accuracy"):
        ConvergenceCriterion(min_clean_accuracy=1.5)
    with pytest.raises(ValueError, match="min_attack_success_rate"):
        ConvergenceCriterion(min_attack_success_rate=-0.1)
    with pytest.raises(ValueError, match="n_classes"):
        criterion.clean_accuracy_threshold(1)
