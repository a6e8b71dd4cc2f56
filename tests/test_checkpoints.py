"""RobustCheckpointer: atomic saves, recovery that falls back past damaged checkpoints, clear write errors."""

import errno
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from speechbrain.utils.checkpoints import Checkpointer
from speechbrain.utils.epoch_loop import EpochCounter

from speechsep.training.checkpoints import CheckpointWriteError, RobustCheckpointer
from tests.helpers import REPO, torchrun_command


class Run:
    """A tiny training state: a model, its Adam optimizer (moments included) and an epoch counter."""

    def __init__(self, seed: int = 0):
        torch.manual_seed(seed)
        self.model = torch.nn.Linear(4, 3)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=0.1)
        self.counter = EpochCounter(limit=10)

    @property
    def recoverables(self) -> dict:
        return {"model": self.model, "optimizer": self.optimizer, "counter": self.counter}

    def train_epoch(self) -> None:
        """One optimizer step and one epoch on: a state different from any saved before."""
        loss = self.model(torch.ones(2, 4)).pow(2).sum()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.counter.current += 1

    def state(self) -> dict:
        """A copy of everything a checkpoint restores, to compare runs."""
        moments = self.optimizer.state_dict()["state"]
        return {
            **{name: p.detach().clone() for name, p in self.model.named_parameters()},
            **{f"exp_avg.{i}": moment["exp_avg"].clone() for i, moment in moments.items()},
            "epoch": self.counter.current,
        }


def assert_same_state(state: dict, expected: dict) -> None:
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(torch.as_tensor(state[key]), torch.as_tensor(value)), key


def warning_messages(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]


def truncate(path) -> None:
    """Keep the first half of a file, as a crash or a full disk in the middle of a write leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def two_checkpoints(tmp_path):
    """A run saved at epochs 1 and 2; returns (run, checkpointer, older, newer, state at epoch 1).

    The run is left in its epoch-2 state, so a recovery of epoch 1 shows in the state.
    """
    run = Run()
    checkpointer = RobustCheckpointer(tmp_path, run.recoverables)
    run.train_epoch()
    older = checkpointer.save_checkpoint()
    older_state = run.state()
    run.train_epoch()
    newer = checkpointer.save_checkpoint()
    return run, checkpointer, older, newer, older_state


def fail_torch_save(monkeypatch, error: BaseException) -> None:
    """Make every torch.save (SpeechBrain's default save hook) raise `error`."""

    def failing_save(obj, path, *args, **kwargs):
        raise error

    monkeypatch.setattr(torch, "save", failing_save)


# ------------------------------------------------------------------------------------- as SpeechBrain
def test_round_trip_restores_model_optimizer_and_counter(tmp_path):
    run = Run()
    run.train_epoch()
    RobustCheckpointer(tmp_path, run.recoverables).save_checkpoint()

    fresh = Run(seed=1)
    loaded = RobustCheckpointer(tmp_path, fresh.recoverables).recover_if_possible()

    assert loaded is not None
    assert_same_state(fresh.state(), run.state())


def test_checkpoint_layout_and_meta_are_speechbrains_and_both_classes_read_them(tmp_path):
    run = Run()
    run.train_epoch()
    save = dict(meta={"si-snr": 7.5}, end_of_epoch=False)
    ours = RobustCheckpointer(tmp_path / "ours", run.recoverables).save_checkpoint(**save)
    theirs = Checkpointer(tmp_path / "sb", run.recoverables).save_checkpoint(**save)

    assert ours.path.name.startswith("CKPT+") and ours.path.name.endswith("+00")
    assert sorted(path.name for path in ours.path.iterdir()) == sorted(path.name for path in theirs.path.iterdir())
    assert ours.meta.keys() == theirs.meta.keys()
    assert (ours.meta["si-snr"], ours.meta["end-of-epoch"]) == (7.5, False)
    assert {key: path.name for key, path in ours.paramfiles.items()} == {
        key: path.name for key, path in theirs.paramfiles.items()
    }
    assert Checkpointer(tmp_path / "ours", run.recoverables).list_checkpoints() == [ours]
    assert RobustCheckpointer(tmp_path / "sb", run.recoverables).list_checkpoints() == [theirs]


def test_recover_picks_the_checkpoint_speechbrain_would(tmp_path):
    run = Run()
    checkpointer = RobustCheckpointer(tmp_path, run.recoverables)
    for si_snr in (5.0, 9.0, 7.0):
        run.train_epoch()
        checkpointer.save_checkpoint(meta={"si-snr": si_snr})
    speechbrain = Checkpointer(tmp_path, run.recoverables)

    for key in ({"max_key": "si-snr"}, {"min_key": "si-snr"}, {}):
        assert checkpointer.recover_if_possible(**key) == speechbrain.find_checkpoint(**key)


# ----------------------------------------------------------------------------------- interrupted saves
@pytest.mark.parametrize("interruption", [KeyboardInterrupt, SystemExit])
def test_save_interrupted_midway_leaves_no_checkpoint_and_no_partial_folder(two_checkpoints, interruption):
    run, checkpointer, older, newer, _ = two_checkpoints
    newer_state = run.state()
    run.train_epoch()

    def interrupted(obj, path):
        raise interruption()

    checkpointer.custom_save_hooks["optimizer"] = interrupted  # the second recoverable: the model is written
    with pytest.raises(interruption):
        checkpointer.save_checkpoint()

    assert set(checkpointer.list_checkpoints()) == {older, newer}
    assert sorted(checkpointer.checkpoints_dir.iterdir()) == sorted([older.path, newer.path])
    assert checkpointer.recover_if_possible() == newer
    assert_same_state(run.state(), newer_state)


KILLED_SAVE = textwrap.dedent(
    """
    import os, signal, sys, torch
    from speechsep.training.checkpoints import RobustCheckpointer

    model = torch.nn.Linear(4, 3)
    torch.nn.init.constant_(model.weight, 1.0)
    checkpointer = RobustCheckpointer(sys.argv[1], {"model": model})
    checkpointer.save_checkpoint()
    torch.nn.init.constant_(model.weight, 2.0)
    kill = lambda obj, path: os.kill(os.getpid(), signal.SIGKILL)
    checkpointer.add_recoverable("killer", object(), custom_save_hook=kill)  # after the model is written
    checkpointer.save_checkpoint()
    """
)


def test_save_killed_with_sigkill_is_not_listed_and_its_folder_is_removed_at_recovery(tmp_path, caplog):
    result = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(tmp_path)], cwd=REPO, timeout=120)
    assert result.returncode == -9
    (partial,) = tmp_path.glob(".CKPT+*.partial")
    assert (partial / partial.name.removeprefix(".").removesuffix(".partial") / "model.ckpt").exists()
    model = torch.nn.Linear(4, 3)
    assert len(Checkpointer(tmp_path, {"model": model}).list_checkpoints()) == 1  # hidden from SpeechBrain too

    with caplog.at_level(logging.INFO):
        loaded = RobustCheckpointer(tmp_path, {"model": model}).recover_if_possible()

    assert loaded is not None and torch.all(model.weight == 1.0)
    assert not partial.exists()
    assert any("left over by an interrupted checkpoint save" in record.getMessage() for record in caplog.records)


def test_leftover_partial_folder_is_removed_at_the_next_save(tmp_path, caplog):
    leftover = tmp_path / ".CKPT+2020-01-01+00-00-00+00.partial"
    leftover.mkdir()
    (leftover / "model.ckpt").write_bytes(b"PK\x03\x04half")
    run = Run()

    with caplog.at_level(logging.INFO):
        RobustCheckpointer(tmp_path, run.recoverables).save_checkpoint()

    assert not leftover.exists()
    assert any(str(leftover) in record.getMessage() for record in caplog.records)


def test_saving_a_custom_name_again_replaces_that_checkpoint(tmp_path):
    run = Run()
    checkpointer = RobustCheckpointer(tmp_path, run.recoverables)
    run.train_epoch()
    checkpointer.save_checkpoint(name="latest")
    run.train_epoch()
    saved = checkpointer.save_checkpoint(name="latest")

    assert sorted(path.name for path in tmp_path.iterdir()) == ["CKPT+latest"]
    assert checkpointer.list_checkpoints() == [saved]
    assert saved.paramfiles["counter"].read_text() == "2"


def test_checkpoint_caught_between_the_renames_of_a_replacement_is_put_back(tmp_path):
    run = Run()
    checkpointer = RobustCheckpointer(tmp_path, run.recoverables)
    run.train_epoch()
    saved = checkpointer.save_checkpoint(name="latest")
    saved_state = run.state()
    saved.path.rename(tmp_path / ".CKPT+latest.replaced")  # the crash came after the first rename
    run.train_epoch()

    assert checkpointer.recover_if_possible() == saved
    assert_same_state(run.state(), saved_state)


# --------------------------------------------------------------------------------- damaged checkpoints
def test_truncated_model_file_falls_back_to_the_previous_checkpoint_with_one_warning(two_checkpoints, caplog):
    run, checkpointer, older, newer, older_state = two_checkpoints
    truncate(newer.paramfiles["model"])

    with caplog.at_level(logging.WARNING):
        loaded = checkpointer.recover_if_possible()
        assert checkpointer.recover_if_possible() == older  # again, as --test_only does: not warned twice

    assert loaded == older
    assert_same_state(run.state(), older_state)
    (warning,) = warning_messages(caplog)
    assert str(newer.path) in warning and "model.ckpt is cut short" in warning


def test_unloadable_optimizer_file_falls_back_and_reloads_every_recoverable(two_checkpoints, caplog):
    run, checkpointer, older, newer, older_state = two_checkpoints
    newer.paramfiles["optimizer"].write_bytes(b"not a torch file")  # loads after the newer model did

    with caplog.at_level(logging.WARNING):
        loaded = checkpointer.recover_if_possible()

    assert loaded == older
    assert_same_state(run.state(), older_state)  # the model loaded from the newer one is overwritten
    (warning,) = warning_messages(caplog)
    assert str(newer.path) in warning


@pytest.mark.parametrize("garbage", [b"\x00\xff\xfe binary", b"unixtime: [1, 2", b"just some text\n"])
def test_unreadable_metafile_is_skipped_with_one_warning(two_checkpoints, caplog, garbage):
    run, checkpointer, older, newer, older_state = two_checkpoints
    (newer.path / "CKPT.yaml").write_bytes(garbage)

    with caplog.at_level(logging.WARNING):
        listed = checkpointer.list_checkpoints()
        loaded = checkpointer.recover_if_possible()

    assert listed == [older] and loaded == older
    assert_same_state(run.state(), older_state)
    (warning,) = warning_messages(caplog)  # once, though the folder was listed twice
    assert str(newer.path) in warning and "CKPT.yaml" in warning


def test_no_loadable_checkpoint_returns_none_with_a_warning_and_leaves_the_state_alone(two_checkpoints, caplog):
    run, checkpointer, older, newer, _ = two_checkpoints
    state = run.state()
    for checkpoint in (older, newer):  # the optimizer loads after the model: the check must come first
        truncate(checkpoint.paramfiles["optimizer"])

    with caplog.at_level(logging.WARNING):
        loaded = checkpointer.recover_if_possible()

    assert loaded is None
    assert_same_state(run.state(), state)
    assert "None of the 2 checkpoints" in warning_messages(caplog)[-1]


def test_checkpoint_of_another_model_shape_raises_instead_of_falling_back(two_checkpoints):
    *_, newer, _ = two_checkpoints
    wider = torch.nn.Linear(4, 5)

    with pytest.raises(RuntimeError, match="does not fit the current model"):
        RobustCheckpointer(newer.path.parent, {"model": wider}).recover_if_possible()


# ------------------------------------------------------------------------------------- write failures
def test_disk_full_raises_a_one_line_write_error_and_keeps_the_previous_checkpoint(two_checkpoints, monkeypatch):
    run, checkpointer, older, newer, _ = two_checkpoints
    newer_state = run.state()
    run.train_epoch()
    fail_torch_save(monkeypatch, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))

    with pytest.raises(CheckpointWriteError) as raised:
        checkpointer.save_checkpoint()
    monkeypatch.undo()

    message = str(raised.value)
    assert raised.value.errno == errno.ENOSPC and "\n" not in message
    assert "Could not write checkpoint" in message and "CKPT+" in message and "No space left on device" in message
    assert f"the previous checkpoint {newer.path} is intact" in message
    assert sorted(checkpointer.checkpoints_dir.iterdir()) == sorted([older.path, newer.path])
    assert checkpointer.recover_if_possible() == newer
    assert_same_state(run.state(), newer_state)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full, a device that is always full")
def test_full_device_under_torch_writer_is_a_write_error(tmp_path, monkeypatch):
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, path, *args, **kwargs: real_save(obj, "/dev/full"))
    checkpointer = RobustCheckpointer(tmp_path, Run().recoverables)

    with pytest.raises(CheckpointWriteError, match="there is no earlier checkpoint") as raised:
        checkpointer.save_checkpoint()

    assert isinstance(raised.value.__cause__, RuntimeError)  # torch's writer: no errno
    assert list(tmp_path.iterdir()) == []


def test_save_and_keep_only_keeps_the_old_checkpoint_when_the_new_save_fails(tmp_path, monkeypatch):
    run = Run()
    checkpointer = RobustCheckpointer(tmp_path, run.recoverables)
    run.train_epoch()
    checkpointer.save_and_keep_only(num_to_keep=1)
    (kept,) = checkpointer.list_checkpoints()
    run.train_epoch()
    fail_torch_save(monkeypatch, OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)))

    with pytest.raises(CheckpointWriteError, match="quota"):
        checkpointer.save_and_keep_only(num_to_keep=1)

    assert checkpointer.list_checkpoints() == [kept]
    assert list(tmp_path.iterdir()) == [kept.path]


# --------------------------------------------------------------------------------------------------- DDP
@pytest.mark.slow
@pytest.mark.xdist_group("torchrun")
def test_ddp_ranks_keep_complete_checkpoints_and_fall_back_alike(tmp_path):
    command = torchrun_command("tests/ddp_checkpoint_worker.py", tmp_path / "save", tmp_path)
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]

    kept = sorted(path.name for path in (tmp_path / "save").iterdir())  # no partial folder left
    assert len(kept) == 2 and all(name.startswith("CKPT+") for name in kept)
    # epoch 3's model file was cut short: both ranks fell back to epoch 2
    assert [(tmp_path / f"recovered_epoch_rank{rank}.txt").read_text() for rank in (0, 1)] == ["2", "2"]


def test_optimizer_state_of_another_parameter_layout_is_one_error_line_not_a_failed_step(tmp_path):
    """SpeechBrain's Conv-TasNet MaskNet and FastMaskNet share weights but not parameter shapes: Adam's moments of
    one would load into the other (torch compares no shapes) and fail at the first step with a traceback."""
    from speechbrain.lobes.models.conv_tasnet import MaskNet as SpeechBrainMaskNet

    from speechsep.models.conv_tasnet import FastMaskNet
    from speechsep.training.checkpoints import CheckpointMismatchError

    sizes = dict(N=8, B=8, H=8, P=3, X=2, R=1, C=2)

    def trained(masknet_class) -> dict:
        torch.manual_seed(0)
        masknet = masknet_class(**sizes)
        optimizer = torch.optim.Adam(masknet.parameters())
        masknet(torch.rand(1, 8, 20)).sum().backward()
        optimizer.step()
        return {"masknet": masknet, "optimizer": optimizer}

    RobustCheckpointer(tmp_path, trained(FastMaskNet)).save_checkpoint()
    with pytest.raises(CheckpointMismatchError, match=r"optimizer state .* shape \[8\], now \[1, 1, 8\]"):
        RobustCheckpointer(tmp_path, trained(SpeechBrainMaskNet)).recover_if_possible()
    assert RobustCheckpointer(tmp_path, trained(FastMaskNet)).recover_if_possible() is not None  # its own class
