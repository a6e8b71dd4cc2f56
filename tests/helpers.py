"""Plain helpers shared by test modules: tiny models and brains, speech-like batches and recordings, stand-in
separators and runs, tiny dynamic-mixing pools."""

import csv
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

from speechsep.data.dynamic_mixing import DynamicMixingDataset, dynamic_mixing_dataset
from speechsep.training.config import load_hparams, parse_arguments, record_yaml, resolved_values, resolved_yaml
from tests.corpus_trees import voice
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


# ---------------------------------------------------------------- separation: recordings, a stand-in run and model
SAMPLE_RATE = 8000  # of the recordings below and of the tiny models


def save_tiny_sepformer_run(run: Path) -> Path:
    """A tiny SepFormer run folder saved as train.py saves one (no training), with two checkpoints: the best is
    the older, for export and best-checkpoint selection."""
    values = {"data_folder": str(run / "data"), "output_folder": str(run), **TINY_SEPFORMER}
    overrides = "\n".join(f"{key}: {json.dumps(value)}" for key, value in values.items())
    hparams = load_hparams(REPO / "hparams" / "sepformer.yaml", overrides)
    run.mkdir(parents=True, exist_ok=True)
    (run / "hyperparams.yaml").write_text(resolved_yaml(REPO / "hparams" / "sepformer.yaml", overrides))
    checkpointer = hparams["checkpointer"]
    checkpointer.save_checkpoint(meta={"si-snr": 5.0}, name="best")
    with torch.no_grad():
        for parameter in hparams["modules"]["masknet"].parameters():
            parameter.add_(0.1)
    checkpointer.save_checkpoint(meta={"si-snr": 1.0}, name="latest")
    return run


def two_speaker_recording(seconds: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The same two speakers (pitch ~110 Hz and ~220 Hz) over many 1.5 s utterances with short pauses.

    Returns mixture [time] and sources [time, 2].
    """
    rng = np.random.default_rng(seed)
    num_samples = int(seconds * SAMPLE_RATE)
    sources = np.zeros((num_samples, 2), dtype=np.float32)
    for k, f0 in enumerate((110.0, 220.0)):
        start = int(rng.integers(0, SAMPLE_RATE // 2))
        while start < num_samples:
            length = min(int(1.5 * SAMPLE_RATE), num_samples - start)
            sources[start : start + length, k] = voice(rng, length, SAMPLE_RATE, f0) * rng.uniform(0.5, 1.5)
            start += length + int(rng.integers(0, SAMPLE_RATE // 4))
    sources = torch.from_numpy(sources)
    return sources.sum(dim=1), sources


def write_recording(path: Path, signal: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    sf.write(path, signal, sample_rate, subtype="FLOAT")
    return path


def write_recordings(folder: Path) -> Path:
    """Two short mono 8 kHz recordings in `folder`."""
    folder.mkdir()
    for seed in range(2):
        write_recording(folder / f"talk{seed}.wav", two_speaker_recording(2.0, seed)[0].numpy())
    return folder


def error_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("error:")]


class OracleSeparator:
    """Returns the true sources of each window, in a window-dependent order and at window-dependent gains.

    A tiny trained model does not separate speakers, so only a perfect separator can show that chunking keeps
    each speaker on one track and restores levels: any error is then the chunking's.

    It finds where a window starts in the recording from its first samples of sound, so it does not rely on
    being called in order or on where windows start. It records the shapes it was given.
    """

    KEY = 64  # samples of sound that tell where they are (the recordings' random voices never repeat them)

    def __init__(self, mixture: torch.Tensor, sources: torch.Tensor, seed: int = 0):
        self.mixture, self.sources = mixture, sources
        sound = mixture[: mixture.shape[0] - self.KEY].nonzero()[:, 0].tolist()
        self.positions = {self._key(mixture[position:]): position for position in sound}
        self.rng = np.random.default_rng(seed)
        self.input_shapes = []

    def _key(self, samples: torch.Tensor) -> bytes:
        return samples[: self.KEY].numpy().tobytes()

    def _sources_of(self, window: torch.Tensor) -> torch.Tensor:
        sources = torch.zeros(window.shape[0], 2)  # silence for a silent window
        if window.any():
            first_sound = int(window.nonzero()[0, 0])
            start = self.positions[self._key(window[first_sound:])] - first_sound
            piece = self.sources[start : start + window.shape[0]]
            sources[: piece.shape[0]] = piece
        return sources

    def separate_batch(self, mixtures: torch.Tensor) -> torch.Tensor:
        self.input_shapes.append(tuple(mixtures.shape))
        outputs = []
        for window in mixtures:
            sources = self._sources_of(window)
            order = torch.from_numpy(self.rng.permutation(2))
            gains = torch.from_numpy(self.rng.uniform(0.1, 10.0, 2)).float()
            outputs.append(sources[:, order] * gains)
        return torch.stack(outputs)


# ---------------------------------------------------------------- dynamic mixing: tiny pools of steady voices
SEGMENT_LEN = 4000  # 0.5 s
SPEAKER_F0S = [150.0, 200.0, 250.0, 300.0, 350.0, 400.0]  # every speaker is recognisable by its pitch


def steady_voice(f0: float, seconds: float, seed: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Speech-like audio (tests/speech.py) at a steady pitch `f0`, voiced throughout, at an RMS of 0.1."""
    signal = speech_like(int(seconds * sample_rate), sample_rate, np.random.default_rng(seed), f0, 0.0, pauses=False)
    return (0.1 * signal).astype(np.float32)


def librispeech_name(speaker: int, utterance: int) -> str:
    return f"{100 + speaker}/{2000 + speaker}/{100 + speaker}-{2000 + speaker}-{utterance:04d}.flac"


def wsj0_name(speaker: int, utterance: int) -> str:
    return f"01{speaker}/01{speaker}c02{utterance:02d}.wav"


def speaker_folders_name(speaker: int, utterance: int) -> str:
    return f"spk{speaker:02d}/spk{speaker:02d}_{utterance:04d}.wav"


def write_pool(
    root: Path,
    name=speaker_folders_name,
    num_speakers: int = 5,
    num_utterances: int = 3,
    seconds: float = 1.0,
    sample_rate: int = SAMPLE_RATE,
    silent: bool = False,
) -> Path:
    for speaker in range(num_speakers):
        for utterance in range(num_utterances):
            path = root / name(speaker, utterance)
            path.parent.mkdir(parents=True, exist_ok=True)
            seed = 100 * speaker + utterance
            audio = steady_voice(SPEAKER_F0S[speaker], seconds, seed, sample_rate)
            sf.write(path, np.zeros_like(audio) if silent else audio, sample_rate)
    return root


def write_noise(root: Path, seconds: float = 2.0, num_files: int = 2) -> Path:
    root.mkdir(parents=True)
    for number in range(num_files):
        noise = 0.05 * np.random.default_rng(number).standard_normal(int(seconds * SAMPLE_RATE))
        sf.write(root / f"noise_{number}.wav", noise.astype(np.float32), SAMPLE_RATE)
    return root


def make_dataset(tmp_path: Path, noise: bool = False, pool_options=None, **options) -> DynamicMixingDataset:
    settings = dict(num_spks=2, segment_len=SEGMENT_LEN, epoch_len=8, level_scheme="wsj0")
    settings.update(options)
    return dynamic_mixing_dataset(
        write_pool(tmp_path / "sources", **(pool_options or {})),
        sample_rate=SAMPLE_RATE,
        noise_folder=write_noise(tmp_path / "noise") if noise else None,
        **settings,
    )


# ---------------------------------------------------------------- manifests
def read_csv(path) -> list[dict]:
    """The rows of a manifest written by prepare_data.py."""
    with open(path) as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- run folders
def fake_run(folder: Path, *overrides: str) -> dict:
    """A tiny run's folder as train.py leaves one (its record and a checkpoint folder); returns its values."""
    config = REPO / "hparams" / "convtasnet.yaml"
    tiny = [f"--{key}={value}" for key, value in TINY_CONVTASNET.items()]
    text = parse_arguments([str(config), f"--output_folder={folder}", "--data_folder=/data", *tiny, *overrides])[2]
    record = record_yaml(config, text)
    (folder / "save" / "CKPT+1").mkdir(parents=True)
    (folder / "hyperparams.yaml").write_text(record)
    return resolved_values(record)
