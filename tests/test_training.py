"""clipclean.training: the training loop, the run monitor (collapsed-loss plateau, per-epoch curves) and the
convergence criterion."""

import math

import pytest
import torch

from clipclean.training import ConvergenceCriterion, TrainingMonitor, cosine_schedule_with_warmup, train_steps


class EpochLoader:
    """Three batches per epoch, ``x`` filled with ``10 * epoch + position`` so a test sees which batch was trained
    on; records its ``set_epoch`` calls."""

    def __init__(self) -> None:
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def __len__(self) -> int:
        return 3

    def __iter__(self):
        for position in range(3):
            yield torch.full((4, 2), 10.0 * self.epochs[-1] + position), torch.ones(4, 1)


def make_regression(lr: float = 1e-3):
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    return model, torch.optim.SGD(model.parameters(), lr=lr)


def squared_error(model, seen):
    def compute_loss(batch, state):
        x, y = batch
        seen.append((state.epoch, state.step, int(x[0, 0])))
        return ((model(x) - y) ** 2).mean()

    return compute_loss


def test_train_steps_cycles_over_epochs_calls_the_hooks_and_resumes_where_it_stopped():
    model, optimizer = make_regression()
    loader, seen, after_step, after_epoch = EpochLoader(), [], [], []
    state = train_steps(
        model,
        loader,
        optimizer,
        squared_error(model, seen),
        total_steps=7,
        on_step=lambda state: after_step.append((state.epoch, state.step, state.loss.item())),
        on_epoch_end=lambda state: after_epoch.append((state.epoch, state.step)),
    )  # no accelerator: loss.backward() and plain optimizer steps
    assert state.step == 7 and not state.stopped and state.grad_norm is None
    assert loader.epochs == [0, 1, 2]  # 7 steps of 3 batches: the third epoch is cut after its first batch
    assert [batch for _, _, batch in seen] == [0, 1, 2, 10, 11, 12, 20]
    assert [step for _, step, _ in seen] == list(range(7))  # the loss function sees the steps taken before it
    assert [(epoch, step) for epoch, step, _ in after_step] == [(0, 1), (0, 2), (0, 3), (1, 4), (1, 5), (1, 6), (2, 7)]
    assert after_epoch == [(0, 3), (1, 6), (2, 7)]  # also after the last, partial epoch
    assert state.loss.item() == after_step[-1][2]

    # stopped by on_step after 4 steps (no epoch-end hook for the cut epoch), then resumed at step 4: the batch of
    # epoch 1 already trained on is skipped, and the weights are the uninterrupted run's bit for bit
    resumed, resumed_optimizer = make_regression()
    loader, seen, after_epoch = EpochLoader(), [], []
    compute_loss = squared_error(resumed, seen)
    stopped = train_steps(
        resumed,
        loader,
        resumed_optimizer,
        compute_loss,
        7,
        on_step=lambda state: state.step == 4,
        on_epoch_end=lambda state: after_epoch.append(state.step),
    )
    assert stopped.stopped and stopped.step == 4 and after_epoch == [3]
    state = train_steps(resumed, loader, resumed_optimizer, compute_loss, 7, start_step=4)
    assert state.step == 7 and loader.epochs == [0, 1, 1, 2]
    assert [batch for _, _, batch in seen] == [0, 1, 2, 10, 11, 12, 20]
    for expected, actual in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(expected, actual)

    # a run resumed at its end trains nothing; an empty loader is an error
    finished = train_steps(resumed, loader, resumed_optimizer, compute_loss, 7, start_step=7)
    assert finished.step == 7 and math.isnan(float(finished.loss)) and len(seen) == 7
    with pytest.raises(ValueError, match="no batch"):
        train_steps(resumed, [], resumed_optimizer, compute_loss, 1)


def test_train_steps_clips_the_gradient_norm_steps_the_scheduler_and_cycles_a_plain_loader():
    model, optimizer = make_regression(lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    x, y = torch.full((8, 2), 10.0), torch.zeros(8, 1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)  # no set_epoch
    compute_loss = squared_error(model, [])
    state = train_steps(model, loader, optimizer, compute_loss, 1, scheduler=scheduler, max_grad_norm=1e-2)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert float(state.grad_norm) > 1  # recorded before clipping
    assert float((after - before).norm()) == pytest.approx(1e-2, rel=1e-4)  # SGD at lr 1 moves by the clipped norm
    assert scheduler.last_epoch == 1

    seen = []
    train_steps(model, loader, optimizer, lambda batch, state: seen.append(state.epoch) or model(batch[0]).mean(), 5)
    assert seen == [0, 0, 1, 1, 2]  # 2 batches per epoch, cycled


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
    assert clean["converged"] and clean["min_attack_success_rate"] is None and clean["partial"] is None

    # converged, but under the 90% bar: a partial backdoor (BadNet toward "eight" at seed 3, 2026-12-05)
    weak = criterion.check(0.935, 0.633, n_classes=10, poisoned=True)
    assert weak["converged"] and weak["partial"] is True
    assert criterion.check(0.95, 0.90, n_classes=10, poisoned=True)["partial"] is False
    assert seed_1["partial"] is False  # not converged: the failure is reported, not a partial backdoor
    with pytest.raises(ValueError, match="full_attack_success_rate"):
        ConvergenceCriterion(min_attack_success_rate=0.5, full_attack_success_rate=0.4)
    assert not criterion.check(0.945, None, n_classes=10, poisoned=True)["converged"]

    strict = ConvergenceCriterion(min_clean_accuracy=0.9, min_attack_success_rate=0.9)
    result = strict.check(0.89, 0.95, n_classes=10, poisoned=True)
    assert not result["converged"] and result["min_clean_accuracy"] == 0.9
    assert result["criterion"] == {
        "min_clean_accuracy": 0.9,
        "min_attack_success_rate": 0.9,
        "full_attack_success_rate": 0.9,
    }

    with pytest.raises(ValueError, match="min_clean_accuracy"):
        ConvergenceCriterion(min_clean_accuracy=1.5)
    with pytest.raises(ValueError, match="min_attack_success_rate"):
        ConvergenceCriterion(min_attack_success_rate=-0.1)
    with pytest.raises(ValueError, match="n_classes"):
        criterion.clean_accuracy_threshold(1)


@pytest.mark.parametrize("warmup, total", [(50, 320), (0, 10), (5, 5)])
def test_cosine_schedule_is_open_clips_cosine_lr(warmup, total):
    """The schedule is open_clip's training schedule (``open_clip_train.scheduler.cosine_lr``: warmup from lr/warmup,
    cosine to 0) at every step, kept as a ``LambdaLR`` so that ``accelerator.save_state`` resumes it."""
    from open_clip_train.scheduler import cosine_lr

    parameter = torch.nn.Parameter(torch.zeros(1))
    ours = torch.optim.SGD([parameter], lr=0.1)
    scheduler = cosine_schedule_with_warmup(ours, warmup_steps=warmup, total_steps=total)
    theirs = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    adjust = cosine_lr(theirs, 0.1, warmup, total)
    for step in range(total):
        assert ours.param_groups[0]["lr"] == pytest.approx(adjust(step), abs=1e-12), step
        ours.step()
        scheduler.step()
