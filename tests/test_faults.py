"""kill -9 of recipes/clean_clip.py at two points after its first checkpoint, then ``--resume_from_checkpoint
latest``: the resumed run reports the same numbers as an uninterrupted one, on one process and on two (slow)."""

import json
import subprocess
import time

import pytest
from conftest import ROOT, save_tiny_clip_and_patch_trigger, script_command

from clipclean.cli.common import CHECKPOINT_COMPLETE_FILENAME


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return save_tiny_clip_and_patch_trigger(tmp_path_factory.mktemp("faults"))


def _arguments(setup, output):
    return [
        "--model", str(setup / "model"), "--clean-data", "digits:defender", "--eval-data", "digits:test",
        "--eval-trigger", str(setup / "trigger.json"), "--max-clean-pairs", "96", "--batch-size", "32",
        "--rounds", "3", "--epochs", "2", "--set", "inversion.rounds=1", "--set", "inversion.steps_per_round=3",
        "--set", "inversion.verdict_steps=2", "--set", "reinversion_steps=2", "--set", "unlearn_when_clean=true",
        "--no-progress", "--output_dir", str(output),
    ]  # fmt: skip


def _kill_9(pid: int) -> None:
    """SIGKILL the launcher ``pid`` and every process under it, all found before any is killed, and wait until none
    is left to write anything. Not ``os.killpg``: torch's elastic agent (under ``accelerate launch --multi_gpu``)
    starts each worker in a session of its own, so a kill of the launcher's process group leaves the workers running,
    and they finish the run and delete its checkpoints."""
    import psutil

    launcher = psutil.Process(pid)
    processes = [launcher, *launcher.children(recursive=True)]
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(processes, timeout=30)
    assert not alive, f"still running after SIGKILL: {alive}"


def _run(setup, output, processes, *extra, kill_when=None):
    """Run the recipe; with ``kill_when(output) -> bool``, SIGKILL it and all its processes as soon as it holds.
    Returns whether the run was killed."""
    command, env = script_command("recipes/clean_clip.py", *_arguments(setup, output), *extra, processes=processes)
    process = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    deadline = time.time() + 900
    while process.poll() is None and time.time() < deadline:
        if kill_when is not None and kill_when(output):
            _kill_9(process.pid)
            process.wait()
            return True
        time.sleep(0.005)
    if process.poll() is None:
        _kill_9(process.pid)
        pytest.fail("the recipe did not finish in 15 minutes")
    assert process.returncode == 0, process.stderr.read().decode()[-4000:]
    return False


def _first_checkpoint_complete(output):
    return (output / "checkpoints" / "checkpoint_0" / CHECKPOINT_COMPLETE_FILENAME).is_file()


def _second_checkpoint_started(output):
    return (output / "checkpoints" / "checkpoint_1").exists()


def _numbers(output):
    results = json.loads((output / "results.json").read_text())
    inversion = results["inversion"]
    return {
        "before": (results["before"]["clean_accuracy"], results["before"]["attack_success_rate"]),
        "after": (results["after"]["clean_accuracy"], results["after"]["attack_success_rate"]),
        "verdict": inversion["verdict"],
        "target": inversion["recovered_target"],
        "score": inversion["backdoor_score"],
        "rounds": results["rounds_done"],
        "world_size": results["world_size"],
    }


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_kill_9_then_resume_latest_reports_the_uninterrupted_numbers(setup, tmp_path, processes):
    reference = tmp_path / "uninterrupted"
    _run(setup, reference, processes)
    expected = _numbers(reference)
    assert expected["rounds"] == 3 and expected["world_size"] == processes
    for point, kill_when in (("first", _first_checkpoint_complete), ("second", _second_checkpoint_started)):
        output = tmp_path / point
        assert _run(setup, output, processes, kill_when=kill_when), f"the run finished before the {point} kill"
        assert not (output / "results.json").exists() and not (output / "cleaned").exists()
        _run(setup, output, processes, "--resume_from_checkpoint", "latest")
        assert _numbers(output) == expected, point
