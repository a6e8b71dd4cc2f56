"""Plain helpers for the tests: tiny model sizes, a tiny Separation brain and batches of speech-like mixtures."""

import json
import resource
import signal
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import soundfile as sf
import speechbrain
import torch
from speechbrain.dataio.batch import PaddedBatch

from speechsep.training.config import load_hparams
from tests.speech import speech_like

REPO = Path(__file__).resolve().parents[1]

# A ConvTasNet small enough for a CPU test step in milliseconds.
TINY_CONVTASNET = {
    "N_encoder_out": 16,
    "kernel_size": 16,
    "B": 8,
    "H": 16,
    "P": 3,
    "X": 2,
    "R": 1,
    "use_speedperturb": False,
    "num_workers": 0,
}
TINY_SEPFORMER = {
    "N_encoder_out": 16,
    "kernel_size": 16,
    "out_channels": 16,
    "num_layers": 1,
    "nhead": 2,
    "d_ffn": 32,
    "num_blocks": 1,
    "chunk_size": 20,
    "use_speedperturb": False,
    "num_workers": 0,
}


def tiny_hparams(tmp_path, config="convtasnet.yaml", **overrides):
    """Load a recipe config shrunk to a tiny model, writing under tmp_path."""
    sizes = TINY_SEPFORMER if config.startswith("sepformer") else TINY_CONVTASNET
    values = {"data_folder": str(tmp_path / "data"), "output_folder": str(tmp_path / "out"), **sizes, **overrides}
    # YAML text, so that a string value may carry a tag, e.g. optimizer="!name:torch.optim.SGD {lr: 1.0}"
    text = "\n".join(
        f"{key}: {value if isinstance(value, str) else json.dumps(value)}" for key, value in values.items()
    )
    return load_hparams(REPO / "hparams" / config, text)


def make_brain(tmp_path, precision="fp32", config="convtasnet.yaml", checkpointer=False, **overrides):
    """A Separation brain on CPU with its optimizer initialised, ready for fit_batch / evaluate_batch."""
    from train import Separation

    hparams = tiny_hparams(tmp_path, config, **overrides)
    brain = Separation(
        modules=hparams["modules"],
        opt_class=hparams["optimizer"],
        hparams=hparams,
        run_opts={"device": "cpu", "precision": precision, "eval_precision": precision},
        checkpointer=hparams["checkpointer"] if checkpointer else None,
    )
    brain.init_optimizers()
    brain.nonfinite_count = 0
    brain.on_stage_start(speechbrain.Stage.TRAIN, 1)
    brain.step = 1
    return brain


def make_batch(batch_size=4, num_spks=2, seconds=0.5, sample_rate=8000, lengths=None, seed=0) -> PaddedBatch:
    """A PaddedBatch of speech-like mixtures; `lengths` (in samples) makes a padded batch."""
    rng = np.random.default_rng(seed)
    num_samples = int(seconds * sample_rate)
    lengths = lengths or [num_samples] * batch_size
    examples = []
    for b, length in enumerate(lengths):
        sources = [
            torch.from_numpy(0.1 * speech_like(length, sample_rate, rng, f0=f0)).float()
            for f0 in rng.uniform(90, 300, num_spks)
        ]
        example = {"id": f"utt{b}", "mix_sig": torch.stack(sources).sum(0)}
        example.update({f"s{k + 1}_sig": source for k, source in enumerate(sources)})
        examples.append(example)
    return PaddedBatch(examples)


def parameters_of(brain) -> list[torch.Tensor]:
    """A copy of every parameter, to compare before/after a step."""
    return [p.detach().clone() for p in brain.modules.parameters()]


def torchrun_command(script: str, *args) -> list[str]:
    """`python -m torch.distributed.run --standalone --nproc_per_node=2 <script> <args>`: two local processes."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return [*torchrun, script, *map(str, args)]


def train_command(config: str, data_folder, output_folder, *extra: str, **options) -> list[str]:
    """`python train.py hparams/<config> --data_folder=... --output_folder=... --<key>=<value> ... <extra>`."""
    return [
        sys.executable,
        "train.py",
        f"hparams/{config}",
        f"--data_folder={data_folder}",
        f"--output_folder={output_folder}",
        "--noprogressbar",
        *[f"--{key}={value}" for key, value in options.items()],
        *extra,
    ]


def flac_without_length(path: Path, samples: np.ndarray, sample_rate: int = 8000) -> Path:
    """A FLAC whose STREAMINFO says 0 total samples (unknown), as streaming encoders write it."""
    sf.write(path, samples, sample_rate, format="FLAC")
    data = bytearray(path.read_bytes())
    fields = int.from_bytes(data[18:26], "big") & ~((1 << 36) - 1)  # the low 36 bits are the sample count
    data[18:26] = fields.to_bytes(8, "big")
    path.write_bytes(bytes(data))
    return path


def sharing_separator(sample_rate: int = 8000, num_spks: int = 2):
    """A stand-in for SpeechBrain's separator (the attributes `FileSeparator` uses) that gives each speaker an
    equal share of the mixture: separating with it costs nothing, for tests of what is read and written."""

    def separate_batch(mixture: torch.Tensor) -> torch.Tensor:
        return mixture.unsqueeze(-1).repeat(1, 1, num_spks) / num_spks

    hparams = SimpleNamespace(sample_rate=sample_rate, num_spks=num_spks)
    return SimpleNamespace(separate_batch=separate_batch, hparams=hparams)


def limit_file_size(limit: int):
    """preexec_fn: files of at most `limit` bytes, and SIGXFSZ ignored so a write fails with EFBIG (a full disk)."""

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply
