"""DDP through torchrun (gloo on CPU): synchronised parameters, results written once, global metrics."""

import re
import subprocess

import pandas as pd
import pytest
import torch
import yaml

from speechsep.training.losses import pit_si_snr_loss
from tests.corpus_trees import make_wsj0mix
from tests.helpers import REPO, TINY_CONVTASNET, tiny_hparams, torchrun_command

pytestmark = pytest.mark.slow  # every test runs train.py in a subprocess

TINY = {**TINY_CONVTASNET, "use_speedperturb": False}
TOLERANCE_DB = 1e-3  # float32 sums in another order, batched on the ranks, one by one here


def options(data_folder, output, **overrides):
    values = {"data_folder": data_folder, "output_folder": output, "N_epochs": 1, "batch_size": 2, **TINY, **overrides}
    return [f"--{key}={value}" for key, value in values.items()] + ["--noprogressbar"]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """A 2-process torchrun training of one epoch on 5 train / 5 valid / 5 test mixtures, in batches of 2.

    Each rank gets 3 of the 5 examples (batches of 2 and 1): the sampler pads the second shard by repeating
    an example, which must not be counted twice.
    """
    root = tmp_path_factory.mktemp("ddp")
    data_folder = make_wsj0mix(root / "data", per_split=5, length_spread=0)  # no padding: the same losses here
    output = root / "out"
    command = torchrun_command(
        "tests/ddp_train_and_dump.py",
        "hparams/convtasnet.yaml",
        *options(data_folder, output),
        "--distributed_backend=gloo",
        "--device=cpu",
    )
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
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
    assert len(log) == 2 and "valid examples: 5" in log[0]


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
    logged = float(re.search(r"valid si-snr: (\S+),", (output / "train_log.txt").read_text()).group(1))
    assert logged == pytest.approx(expected, abs=0.051)  # the log keeps 3 digits
    (checkpoint,) = (output / "save").glob("CKPT+*")
    recorded = yaml.safe_load((checkpoint / "CKPT.yaml").read_text())["si-snr"]  # full precision
    assert recorded == pytest.approx(expected, abs=TOLERANCE_DB)
    # The check has teeth: counting any one example twice, or leaving it out, moves the mean by more.
    total, count = sum(losses), len(losses)
    assert all(abs(-(total + loss) / (count + 1) - expected) > 5 * TOLERANCE_DB for loss in losses)
    assert all(abs(-(total - loss) / (count - 1) - expected) > 5 * TOLERANCE_DB for loss in losses)
