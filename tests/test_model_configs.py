"""The mask networks of hparams/ beyond SepFormer and Conv-TasNet: DPRNN, DPTNet, SkiM, RE-SepFormer and the
Conformer-intra SepFormer, each trained, tested, separated with and exported for SpeechBrain at tiny sizes."""

import subprocess

import pandas as pd
import pytest
import soundfile as sf
import torch
from speechbrain.inference.separation import SepformerSeparation

import export
import separate
from speechsep.inference.model_folder import load_separator
from speechsep.models.speechbrain_classes import with_speechbrain_classes
from speechsep.models.transformer import SDPAMultiheadAttention
from speechsep.training.config import load_hparams
from tests.corpus_trees import make_wsj0mix
from tests.helpers import REPO, TINY_SEPFORMER, train_command

COMMON = {"N_encoder_out": 16, "kernel_size": 16, "use_speedperturb": False, "num_workers": 0}
# The smallest sizes that still run every part of each class: two blocks where a memory block sits between them.
TINY_SIZES = {
    "dprnn.yaml": {"out_channels": 16, "hidden_channels": 8, "num_blocks": 1, "chunk_size": 20},
    "dptnet.yaml": {"out_channels": 16, "nhead": 2, "num_blocks": 1, "chunk_size": 20},
    "skim.yaml": {"hidden_size": 16, "num_blocks": 2, "chunk_size": 10},
    "resepformer.yaml": {"num_layers": 1, "nhead": 2, "d_ffn": 32, "num_blocks": 2, "chunk_size": 10},
    "sepformer-conformerintra.yaml": TINY_SEPFORMER,  # SepFormer's own sizes, Conformer intra blocks
}
# Models with SpeechBrain's regular transformer attention, which the configs' blocks compute fused.
FUSED_ATTENTION_LAYERS = {"resepformer.yaml": 3, "sepformer-conformerintra.yaml": 1}  # at the tiny sizes
SAMPLE_RATE = 8000


def tiny_options(config: str) -> dict:
    return {**COMMON, **TINY_SIZES[config]}


def mixture(num_samples: int = 3000, seed: int = 0) -> torch.Tensor:
    return 0.1 * torch.randn(1, num_samples, generator=torch.Generator().manual_seed(seed))


def separate_with(modules: dict, mix: torch.Tensor) -> torch.Tensor:
    """Encoder -> masks -> decoder, as train.py's `Separation.separate`: [batch, time, num_spks]."""
    mixture_w = modules["encoder"](mix)
    masks = modules["masknet"](mixture_w)
    return torch.stack([modules["decoder"](mixture_w * masks[k]) for k in range(masks.shape[0])], dim=-1)


@pytest.mark.parametrize("config", sorted(TINY_SIZES))
def test_the_configs_classes_compute_what_speechbrains_classes_do(config, tmp_path):
    options = {"data_folder": "/data", **tiny_options(config)}
    hparams = load_hparams(REPO / "hparams" / config, options)
    as_speechbrain_config = tmp_path / config
    as_speechbrain_config.write_text(with_speechbrain_classes((REPO / "hparams" / config).read_text()))
    as_speechbrain = load_hparams(as_speechbrain_config, options)["modules"]
    fused = [m for m in hparams["modules"]["masknet"].modules() if isinstance(m, SDPAMultiheadAttention)]
    assert len(fused) == FUSED_ATTENTION_LAYERS.get(config, 0)
    assert not [m for m in as_speechbrain["masknet"].modules() if isinstance(m, SDPAMultiheadAttention)]

    for name, module in hparams["modules"].items():
        module.load_state_dict(as_speechbrain[name].state_dict())  # same keys and shapes, or this raises
    for module in [*hparams["modules"].values(), *as_speechbrain.values()]:
        module.eval()
    mix = mixture()
    with torch.no_grad():
        expected = separate_with(as_speechbrain, mix)
        faster = separate_with(hparams["modules"], mix)
    assert faster.shape == expected.shape == (1, mix.shape[1], 2)
    assert (faster - expected).abs().max() < 1e-5


def run_train(config: str, data_folder, output_folder) -> subprocess.CompletedProcess:
    options = {"N_epochs": 1, "batch_size": 2, "save_audio": False, **tiny_options(config)}
    command = train_command(config, data_folder, output_folder, **options)
    return subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)


@pytest.fixture(scope="module")
def tiny_tree(tmp_path_factory):
    return make_wsj0mix(tmp_path_factory.mktemp("data") / "wsj0mix", per_split=2)


@pytest.mark.slow
@pytest.mark.parametrize("config", sorted(TINY_SIZES))
def test_model_trains_tests_separates_and_exports_for_speechbrain(tmp_path, tiny_tree, config):
    run = tmp_path / "run"
    result = run_train(config, tiny_tree, run)
    assert result.returncode == 0, result.stdout[-3000:]
    results = pd.read_csv(run / "test_results.csv")
    assert sorted(results["snt_id"]) == sorted(pd.read_csv(run / "save" / "test.csv")["ID"])
    assert results[["sdr", "si-snr", "si-snr_i"]].notna().all().all()

    mix = mixture()
    sf.write(tmp_path / "talk.wav", mix[0].numpy(), SAMPLE_RATE, subtype="FLOAT")
    arguments = ["--model", str(run), "--output-dir", str(tmp_path / "sep"), "--keep-all-tracks"]  # an untrained model
    status = separate.main([*arguments, str(tmp_path / "talk.wav")])
    assert status == 0
    assert sorted(path.name for path in (tmp_path / "sep").iterdir()) == ["talk_s1.wav", "talk_s2.wav"]

    assert export.main([str(run), str(tmp_path / "export")]) == 0
    exported = SepformerSeparation.from_hparams(source=str(tmp_path / "export"), savedir=str(tmp_path / "savedir"))
    with torch.no_grad():
        expected = load_separator(run).separate_batch(mix)
        estimates = exported.separate_batch(mix)
    assert estimates.shape == expected.shape == (1, mix.shape[1], 2)
    assert (estimates - expected).abs().max() < 1e-4
