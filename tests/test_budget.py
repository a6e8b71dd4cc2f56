"""A training budget in wall-clock minutes: whole epochs that fit, a schedule that follows the budget, a resume
that continues the same budget."""

import json
import subprocess
from pathlib import Path

import pytest

from speechsep.training.budget import TrainingBudget
from speechsep.training.schedulers import HoldThenLinearDecay
from tests.corpus_trees import make_wsj0mix
from tests.helpers import REPO, TINY_CONVTASNET, train_command


def test_another_epoch_is_allowed_while_the_slowest_recent_one_would_still_fit(tmp_path):
    budget = TrainingBudget(minutes=1.0, spent_seconds=40.0, epoch_seconds=[5.0, 15.0, 10.0])
    assert budget.next_epoch_ends_at() == pytest.approx(55.0 / 60.0)
    assert budget.allows_another_epoch()
    budget.spent_seconds = 46.0  # 46 + 15 > 60
    assert not budget.allows_another_epoch()
    assert TrainingBudget(minutes=None, spent_seconds=1e9, epoch_seconds=[1e9]).allows_another_epoch()

    budget.save(tmp_path / "budget.ckpt")
    resumed = TrainingBudget(minutes=1.0)
    resumed.load(tmp_path / "budget.ckpt")
    assert (resumed.spent_seconds, resumed.epoch_seconds) == (46.0, [5.0, 15.0, 10.0])


def test_ended_epochs_are_counted_and_only_the_recent_ones_predict():
    budget = TrainingBudget(minutes=10.0)
    for _ in range(5):
        budget.start_epoch()
        budget.end_epoch()
    assert len(budget.epoch_seconds) == 3 and budget.spent_seconds >= 0.0
    budget.end_epoch()  # without a start: nothing to count
    assert len(budget.epoch_seconds) == 3


def test_schedule_decays_with_the_budget_before_the_epoch_count():
    scheduler = HoldThenLinearDecay(lr=1.0, final_lr=0.1, hold_epochs=10, num_epochs=20)
    assert scheduler(3)[1] == 1.0  # epoch count alone: still holding
    assert scheduler(3, progress=0.75)[1] == pytest.approx(0.55)  # half-way through the decay of the budget
    assert scheduler(3, progress=1.2)[1] == pytest.approx(0.1)
    assert scheduler(15, progress=0.1)[1] == scheduler(15)[1]  # the epoch count, when it is further along


@pytest.mark.slow
def test_a_run_stops_at_the_budget_tests_and_a_rerun_trains_no_more(tmp_path):
    data_folder = make_wsj0mix(tmp_path / "data", per_split=3)
    options = {**TINY_CONVTASNET, "N_epochs": 6, "batch_size": 2, "save_audio": False, "train_budget_minutes": 0.001}
    command = train_command("convtasnet.yaml", data_folder, tmp_path / "run", **options)

    first = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert first.returncode == 0, first.stdout[-2000:]
    assert "Training budget of 0.001 min: stopping after epoch 1 of 6" in first.stdout
    assert (tmp_path / "run" / "test_results.csv").is_file()
    log = (tmp_path / "run" / "train_log.txt").read_text()
    assert log.count("epoch: ") == 1  # one training epoch logged, then the test
    assert epoch_scored(tmp_path / "run") == 1  # the epoch trained, not the last of N_epochs

    again = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:]
    assert (tmp_path / "run" / "train_log.txt").read_text().count("epoch: ") == 1
    assert epoch_scored(tmp_path / "run") == 1


def epoch_scored(run: Path) -> int:
    """The epoch of the checkpoint that the test stage scored, by its results and by the training log."""
    epoch = json.loads((run / "test_results_summary.json").read_text())["scored"]["epoch"]
    assert f"epoch loaded: {epoch}," in (run / "train_log.txt").read_text()
    return epoch
