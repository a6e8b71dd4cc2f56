"""DDP through torchrun (gloo on CPU): synchronised parameters, results written once, global metrics, the decisions
of rank 0 on every rank, and a stop and resume that counts every rank's batches once."""

import json
import os
import re
import subprocess

import pandas as pd
import pytest
import torch
import yaml

from speechsep.training.losses import pit_si_snr_loss
from tests.corpus_trees import make_wsj0mix
from tests.helpers import REPO, TINY_CONVTASNET, tiny_hparams, torchrun_command

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("torchrun")]  # train.py in subprocesses, one group at a time

TINY = {**TINY_CONVTASNET, "use_speedperturb": False}
TOLERANCE_DB = 1e-3  # float32 sums in another order, batched on the ranks, one by one here


def options(data_folder, output, **overrides):
    values = {"data_folder": data_folder, "output_folder": output, "N_epochs": 1, "batch_size": 2, **TINY, **overrides}
    return [f"--{key}={value}" for key, value in values.items()] + ["--noprogressbar"]


# Epoch 2's learning rate follows the share of the budget spent (after a hold of 0 epochs of 10).
SCHEDULE = "!new:speechsep.training.schedulers.HoldThenLinearDecay {lr: 0.001, final_lr: 0.0001, hold_epochs: 0, num_epochs: 10}"
RANK1_EPOCH_MINUTES = 20  # rank 1's clock: epoch 1 took a third of the 60-minute budget (rank 0's: seconds)
AUDIO_EXAMPLES = 3  # of the 5 test examples: tt_000..tt_002 in a single process


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """A 2-process torchrun training of two epochs on 5 train / 5 valid / 5 test mixtures, in batches of 2.

    Each rank gets 3 of the 5 examples (batches of 2 and 1): the sampler pads the second shard by repeating
    an example, which must not be counted twice. Rank 0 is signalled to stop before the first batch of epoch 1
    and the run resumes from that checkpoint in the same processes (tests/ddp_train_and_dump.py). Rank 1's
    budget clock says that epoch 1 took 20 of the 60 minutes of the budget, rank 0's that it took seconds.
    """
    root = tmp_path_factory.mktemp("ddp")
    data_folder = make_wsj0mix(root / "data", per_split=5, length_spread=0)  # no padding: the same losses here
    output = root / "out"
    command = torchrun_command(
        "tests/ddp_train_and_dump.py",
        "hparams/convtasnet.yaml",
        *options(
            data_folder,
            output,
            N_epochs=2,
            train_budget_minutes=60,
            lr_scheduler=SCHEDULE,
            n_audio_to_save=AUDIO_EXAMPLES,
        ),
        "--distributed_backend=gloo",
        "--device=cpu",
    )
    env = {**os.environ, "DDP_TEST_STOP_AT_STEP": "1", "DDP_TEST_RANK1_EPOCH_MINUTES": str(RANK1_EPOCH_MINUTES)}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return root, data_folder, output


def test_ddp_parameters_are_identical_on_both_ranks_and_trained(ddp_run, tmp_path):
    _, _, output = ddp_run
    rank0 = torch.load(output / "params_rank0.pt")
    rank1 = torch.load(output / "params_rank1.pt")
    initial = tiny_hparams(tmp_path, **TINY)["modules"]  # same seed, same initialisation
    initial_params = {f"{key}.{name}": p for key, module in initial.items() for name, p in module.named_parameters()}
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[name], rank1[name]) for name in rank0)
    assert any(not torch.equal(rank0[name], initial_params[name.replace(".module.", ".", 1)]) for name in rank0)


def test_ddp_writes_checkpoint_and_results_once(ddp_run):
    _, _, output = ddp_run
    assert len(list((output / "save").glob("CKPT+*"))) == 1
    results = pd.read_csv(output / "test_results.csv")
    assert sorted(results["snt_id"]) == [f"tt_{i:03d}_mix" for i in range(5)]
    log = (output / "train_log.txt").read_text().splitlines()
    assert len(log) == 3 and "valid examples: 5" in log[0]  # two epochs and the test


def test_ddp_valid_loss_is_the_mean_over_all_valid_examples(ddp_run, tmp_path):
    """Recompute the valid SI-SNR of the final model example by example in this process: the mean over the
    5 examples, each once, although the ranks saw 6 in batches of 2 and 1."""
    from train import Separation, dataio_prep

    root, data_folder, output = ddp_run
    hparams = tiny_hparams(tmp_path, **TINY, data_folder=str(data_folder), save_folder=str(output / "save"))
    brain = Separation(modules=hparams["modules"], hparams=hparams, run_opts={"device": "cpu"})
    rank0 = torch.load(output / "params_rank0.pt")
    for key, module in brain.modules.items():
        module.load_state_dict(
            {name.split(".module.", 1)[1]: p for name, p in rank0.items() if name.startswith(key + ".")}
        )
    _, valid, _ = dataio_prep(hparams)
    brain.modules.eval()
    losses = []
    with torch.no_grad():
        for example in valid:
            mixture = example["mix_sig"].unsqueeze(0)
            sources = torch.stack([example["s1_sig"], example["s2_sig"]], dim=-1).unsqueeze(0)
            losses.append(float(pit_si_snr_loss(brain.separate(mixture), sources)))
    expected = -sum(losses) / len(losses)
    logged = float(re.findall(r"valid si-snr: (\S+),", (output / "train_log.txt").read_text())[-1])  # last epoch
    assert logged == pytest.approx(expected, abs=0.051)  # the log keeps 3 digits
    (checkpoint,) = (output / "save").glob("CKPT+*")
    recorded = yaml.safe_load((checkpoint / "CKPT.yaml").read_text())["si-snr"]  # full precision
    assert recorded == pytest.approx(expected, abs=TOLERANCE_DB)
    # The check has teeth: counting any one example twice, or leaving it out, moves the mean by more.
    total, count = sum(losses), len(losses)
    assert all(abs(-(total + loss) / (count + 1) - expected) > 5 * TOLERANCE_DB for loss in losses)
    assert all(abs(-(total - loss) / (count - 1) - expected) > 5 * TOLERANCE_DB for loss in losses)


def training_records(output) -> list[dict]:
    """What tests/ddp_train_and_dump.py recorded on rank 0 and rank 1."""
    return [json.loads((output / f"training_rank{rank}.json").read_text()) for rank in (0, 1)]


def test_ddp_ranks_train_at_the_rate_of_rank_0s_budget_clock(ddp_run):
    """Rank 1's clock says epoch 1 took a third of the budget, rank 0's that it took seconds: the schedule of
    every rank places epoch 2 by the epoch count (2 of 10), as rank 0's clock says."""
    _, _, output = ddp_run
    rates = [record["lr"]["2"] for record in training_records(output)]
    assert rates[0] == rates[1] == pytest.approx(0.001 + (0.0001 - 0.001) * 2 / 10)
    assert "epoch: 2, lr: 8.20e-04" in (output / "train_log.txt").read_text()


def test_ddp_epoch_statistics_count_every_trained_batch_once_across_a_stop_and_resume(ddp_run):
    """Epoch 1 stopped at the first batch of each rank (trained, then checkpointed) and was resumed: its train
    SI-SNR is the mean over the 4 batches the two ranks trained, in either run."""
    _, _, output = ddp_run
    records = training_records(output)
    losses = [loss for record in records for epoch, loss in record["batch_losses"] if epoch == 1]
    assert len(losses) == 4  # batches of 2 and 1 on each rank
    for record in records:
        assert record["train_si_snr"]["1"] == pytest.approx(-sum(losses) / len(losses), abs=1e-9)


def test_ddp_writes_the_audio_examples_a_single_process_would(ddp_run):
    """The first n_audio_to_save examples of the test set, whichever rank evaluated them."""
    _, _, output = ddp_run
    written = sorted(path.name.removesuffix("_mix.wav") for path in (output / "audio").glob("*_mix.wav"))
    assert written == [f"tt_{i:03d}_mix" for i in range(AUDIO_EXAMPLES)]
    assert len(list((output / "audio").iterdir())) == AUDIO_EXAMPLES * 5  # mixture, 2 sources, 2 estimates
