"""Separating recordings of any length with a trained model, and exporting models to SpeechBrain's inference API.

The logic behind `separate.py` and `export.py`, in three parts:

- Model folders. A model is read from a training run's output folder (its `hyperparams.yaml` and the best
  checkpoint under `save/` by the `si-snr` meta) or from a folder written by `export_model` (`hyperparams.yaml`,
  `encoder.ckpt`, `masknet.ckpt`, `decoder.ckpt`). Both go through `find_model`, which reduces either to the
  same thing: an inference config that names SpeechBrain classes only, plus a folder of weights. The exported
  folder is that pair written out, so what `separate.py` runs and what
  `SepformerSeparation.from_hparams(source=<export dir>)` loads are the same modules with the same weights.
- Chunked separation (`separate_long`). A separator is never run on a whole long file, whose memory would grow
  with its length: the mixture is cut into overlapping windows, a batch of windows goes through the model at a
  time, each window's estimates are rescaled to the mixture's level, their speaker order is aligned to the
  previous window on the samples both share (best permutation by correlation), and they are overlap-added with
  a Hann cross-fade, as Asteroid's `LambdaOverlapAdd` does. Peak memory is then the input and output buffers
  plus one batch of windows, whatever the file's length.
- Files (`FileSeparator`). Any sample rate (resampled to the model's) and channel count (mixed down), one
  16-bit WAV per speaker, levels that match the mixture (or peak-normalised), never clipped.
"""

import dataclasses
import functools
import glob
import logging
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import ruamel.yaml
import soundfile as sf
import torch
import torchaudio
from hyperpyyaml import load_hyperpyyaml
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.tag import Tag
from speechbrain.inference.separation import SepformerSeparation
from speechbrain.utils.checkpoints import Checkpointer
from tqdm import tqdm

from speechsep.filterbank import use_fast_filterbank
from speechsep.metrics import best_permutation
from speechsep.transformer import use_sdpa_attention

logger = logging.getLogger(__name__)

HPARAMS_FILE = "hyperparams.yaml"
MODULE_NAMES = ("encoder", "masknet", "decoder")
CHECKPOINT_KEY = "si-snr"  # the meta a run's checkpoints are ranked by (higher is better)
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")

# Our SepFormer block is a drop-in for SpeechBrain's (same arguments, parameters and state_dict keys):
# exported configs name SpeechBrain's, so that an exported folder needs SpeechBrain alone.
SPEECHBRAIN_BLOCK = "!new:speechbrain.lobes.models.dual_path.SBTransformerBlock"
OUR_BLOCKS = ("!apply:speechsep.transformer.sepformer_block", "!new:speechsep.transformer.FastSBTransformerBlock")
# Likewise our encoder and decoder (speechsep.filterbank): SpeechBrain's classes with a faster forward.
SPEECHBRAIN_FILTERBANK = {
    f"!new:speechsep.filterbank.{name}": f"!new:speechbrain.lobes.models.dual_path.{name}" for name in ("Encoder", "Decoder")
}

INFERENCE_CONFIG = """\
sample_rate: {sample_rate}
num_spks: {num_spks}

{model}
modules:
    encoder: !ref <encoder>
    masknet: !ref <masknet>
    decoder: !ref <decoder>

# No `paths`: SepformerSeparation.from_hparams(source=<this folder>) collects <source>/<name>.ckpt, so the
# folder can be moved, copied or uploaded as it is.
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        encoder: !ref <encoder>
        masknet: !ref <masknet>
        decoder: !ref <decoder>
"""


class ModelFolderError(ValueError):
    """A --model folder that is neither a training run with a checkpoint nor an exported model."""


class AudioInputError(ValueError):
    """An input file that cannot be separated (unreadable, empty, or an output name already taken)."""


# ==================================================================== model folders
@dataclasses.dataclass(frozen=True)
class ModelSource:
    """What a model is built from: an inference config naming SpeechBrain classes only, and its weights."""

    config: str  # HyperPyYAML text with encoder, masknet, decoder, modules, pretrainer, num_spks, sample_rate
    checkpoint_dir: Path  # holds encoder.ckpt, masknet.ckpt and decoder.ckpt
    description: str  # says which weights, for logs


def _yaml() -> ruamel.yaml.YAML:
    yaml = ruamel.yaml.YAML()
    yaml.indent(mapping=4, sequence=4, offset=2)
    yaml.width = 120
    return yaml


def _portable_node(node):
    """A copy of a config node without comments or anchors, our SepFormer block and filterbank written as
    SpeechBrain's."""
    if isinstance(node, dict):
        copy = CommentedMap((key, _portable_node(value)) for key, value in node.items())
        tag = getattr(getattr(node, "tag", None), "value", None)
        if tag in OUR_BLOCKS:
            copy.pop("fast_attention", None)
            tag = SPEECHBRAIN_BLOCK
        tag = SPEECHBRAIN_FILTERBANK.get(tag, tag)
        if tag:
            copy.yaml_set_ctag(Tag(suffix=tag))
        return copy
    if isinstance(node, list):
        copy = CommentedSeq(_portable_node(value) for value in node)
        tag = getattr(getattr(node, "tag", None), "value", None)
        if tag:
            copy.yaml_set_ctag(Tag(suffix=tag))
        return copy
    return node


def _classes_outside_speechbrain(node) -> list[str]:
    """Tags of `node` and its children that build objects from modules other than speechbrain and torch."""
    tag = getattr(getattr(node, "tag", None), "value", None) or ""
    found = []
    kind, _, target = tag.partition(":")
    if kind in ("!new", "!apply", "!name") and not target.startswith(("speechbrain.", "torch.")):
        found.append(tag)
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else []
    for child in children:
        found.extend(_classes_outside_speechbrain(child))
    return found


def inference_config(run_hparams: str) -> str:
    """The inference config of a run: its encoder, masknet and decoder, `num_spks` and `sample_rate`.

    `run_hparams` is the text of a run's self-contained `hyperparams.yaml`. Data paths, optimiser, scheduler,
    augmentation and logger are left out; the SepFormer block is written as SpeechBrain's `SBTransformerBlock`.
    Raises ModelFolderError naming what is missing.
    """
    try:
        document = ruamel.yaml.YAML().load(run_hparams)
    except ruamel.yaml.YAMLError as err:
        raise ModelFolderError(f"{HPARAMS_FILE} is not valid YAML ({err.__class__.__name__})") from None
    modules = document.get("modules") if isinstance(document, dict) else None
    missing = [f"modules.{name}" for name in MODULE_NAMES if not isinstance(modules, dict) or name not in modules]
    missing += [key for key in ("num_spks", "sample_rate") if not isinstance(document, dict) or key not in document]
    if missing:
        raise ModelFolderError(f"{HPARAMS_FILE} lacks {', '.join(missing)}")
    model = CommentedMap((name, _portable_node(modules[name])) for name in MODULE_NAMES)
    for name in MODULE_NAMES:
        model.yaml_set_comment_before_after_key(name, before="\n" if name != "encoder" else None)
    stream = ruamel.yaml.compat.StringIO()
    _yaml().dump(model, stream)
    return INFERENCE_CONFIG.format(
        sample_rate=int(document["sample_rate"]),
        num_spks=int(document["num_spks"]),
        model=stream.getvalue(),
    )


def _first_line(err: Exception) -> str:
    """An exception as one line: its type and the first line of its message."""
    message = str(err).strip()
    return f"{err.__class__.__name__}: {message.splitlines()[0]}" if message else err.__class__.__name__


def _best_checkpoint(save_dir: Path):
    """The checkpoint of highest `si-snr` meta under a run's save folder (a SpeechBrain Checkpoint)."""
    checkpoint = Checkpointer(save_dir).find_checkpoint(max_key=CHECKPOINT_KEY)
    if checkpoint is None:
        raise ModelFolderError(
            f"{save_dir} has no checkpoint with a '{CHECKPOINT_KEY}' meta (training saves one after each validation)"
        )
    lacking = [f"{name}.ckpt" for name in MODULE_NAMES if not (checkpoint.path / f"{name}.ckpt").is_file()]
    if lacking:
        raise ModelFolderError(f"{checkpoint.path} lacks {', '.join(lacking)}")
    return checkpoint


def find_model(model_dir: str | Path) -> ModelSource:
    """Resolve a training run's output folder or an exported folder to its inference config and weights.

    A folder with `save/` is a run: its best checkpoint by validation SI-SNR is used. A folder with the three
    `.ckpt` files beside `hyperparams.yaml` is an export. Anything else raises ModelFolderError (one line).
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelFolderError(f"model folder not found: {model_dir}")
    hparams_file = model_dir / HPARAMS_FILE
    if not hparams_file.is_file():
        raise ModelFolderError(f"{model_dir} has no {HPARAMS_FILE}: expected a training output folder or an export")
    try:
        text = hparams_file.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ModelFolderError(f"cannot read {hparams_file} ({err})") from None
    if (model_dir / "save").is_dir():
        checkpoint = _best_checkpoint(model_dir / "save")
        score = checkpoint.meta[CHECKPOINT_KEY]
        description = f"{model_dir}: {checkpoint.path.name} (valid si-snr {score:.2f} dB)"
        try:
            config = inference_config(text)
        except ModelFolderError as err:
            raise ModelFolderError(f"{hparams_file}: {err}") from None
        return ModelSource(config, checkpoint.path, description)
    lacking = [f"{name}.ckpt" for name in MODULE_NAMES if not (model_dir / f"{name}.ckpt").is_file()]
    if lacking:
        raise ModelFolderError(
            f"{model_dir} is neither a training output folder (no save/) nor an export (lacks {', '.join(lacking)})"
        )
    return ModelSource(text, model_dir, f"{model_dir} (exported model)")


def build_separator(source: ModelSource, device: str = "cpu", fast_attention: bool = True) -> SepformerSeparation:
    """SpeechBrain's `SepformerSeparation` (any encoder/masknet/decoder model) with the source's weights.

    Weights are loaded strictly: a checkpoint that does not fit the config is an error, not a warning.
    `fast_attention` swaps in our fused attention, and our matrix-product encoder and decoder (same parameters,
    same outputs up to rounding), for speed.
    """
    try:
        hparams = load_hyperpyyaml(source.config)
    except Exception as err:  # any error building the modules: the folder is unusable, say why in one line
        raise ModelFolderError(f"{source.description}: cannot build the model ({_first_line(err)})") from None
    for name in MODULE_NAMES:
        path = source.checkpoint_dir / f"{name}.ckpt"
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
            hparams[name].load_state_dict(state_dict)
        except Exception as err:
            raise ModelFolderError(f"{path}: cannot load into the {name} ({_first_line(err)})") from None
    if fast_attention:
        use_sdpa_attention(hparams["masknet"])
        use_fast_filterbank(hparams["encoder"], hparams["decoder"])
    modules = {name: hparams[name] for name in MODULE_NAMES}
    return SepformerSeparation(modules=modules, hparams=hparams, run_opts={"device": device})


def load_separator(model_dir: str | Path, device: str = "cpu", fast_attention: bool = True) -> SepformerSeparation:
    """`build_separator(find_model(model_dir))`: a run folder or an exported folder, ready to separate."""
    source = find_model(model_dir)
    separator = build_separator(source, device, fast_attention)
    hparams = separator.hparams
    logger.info(f"Model: {source.description}, {hparams.num_spks} speakers at {hparams.sample_rate} Hz")
    return separator


def export_model(model_dir: str | Path, export_dir: str | Path) -> ModelSource:
    """Write `hyperparams.yaml` and the three `.ckpt` files that `SepformerSeparation.from_hparams` loads.

    The config holds only the model (SpeechBrain classes), `num_spks` and `sample_rate`: no data paths,
    optimiser or hub references. The model is built and loaded once first, so a broken run is not exported.
    """
    source = find_model(model_dir)
    outside = _classes_outside_speechbrain(ruamel.yaml.YAML().load(source.config))
    if outside:
        classes = ", ".join(sorted(set(outside)))
        raise ModelFolderError(f"{model_dir}: the model uses {classes}, which SpeechBrain alone cannot build")
    build_separator(source, fast_attention=False)
    export_dir = Path(export_dir)
    export_dir.mkdir(parents=True, exist_ok=True)
    config = source.config
    if source.checkpoint_dir.resolve() != Path(model_dir).resolve():  # from a run, not an earlier export
        config = (
            f"# Exported by export.py from the training checkpoint {source.checkpoint_dir.name}.\n"
            "# SepformerSeparation.from_hparams(source=<this folder>, savedir=<a folder>) loads it, and so does\n"
            "# `python separate.py --model <this folder> ...`.\n\n" + config
        )
    (export_dir / HPARAMS_FILE).write_text(config)
    for name in MODULE_NAMES:
        target = export_dir / f"{name}.ckpt"
        if target.resolve() != (source.checkpoint_dir / f"{name}.ckpt").resolve():
            shutil.copyfile(source.checkpoint_dir / f"{name}.ckpt", target)
    logger.info(f"Exported {source.description} to {export_dir}")
    return ModelSource(config, export_dir, f"{export_dir} (exported model)")


# ==================================================================== chunked separation
SeparateBatch = Callable[[torch.Tensor], torch.Tensor]  # mixture [batch, time] -> est_sources [batch, time, num_spks]


def match_mixture_level(est_sources: torch.Tensor, mixture: torch.Tensor, ridge: float = 1e-6) -> torch.Tensor:
    """Rescale each estimate so that their sum fits the mixture in the least-squares sense.

    Separators trained with SI-SNR output each source at an arbitrary scale, different in every window; the
    gains g [batch, num_spks] minimising ||mixture - sum_k g_k est_k||^2 give the estimates the mixture's level
    (in a clean mixture, the sources' own level) and make consecutive windows agree. A gain can only amplify
    an estimate as far as the mixture needs it. Diagonal loading (`ridge` times each estimate's energy, plus a
    floor) keeps the system solvable when estimates are alike or silent: identical estimates share the
    mixture equally, a silent window gives silence.

    est_sources: [batch, time, num_spks]; mixture: [batch, time] -> [batch, time, num_spks].
    """
    estimates = est_sources.double()
    gram = estimates.transpose(1, 2) @ estimates  # [batch, num_spks, num_spks]
    target = (estimates.transpose(1, 2) @ mixture.double().unsqueeze(-1)).squeeze(-1)  # [batch, num_spks]
    energy = gram.diagonal(dim1=-2, dim2=-1)  # [batch, num_spks]
    loading = ridge * energy + 1e-9 * energy.mean(dim=-1, keepdim=True) + 1e-30
    gains = torch.linalg.solve(gram + torch.diag_embed(loading), target)  # [batch, num_spks]
    return (estimates * gains.unsqueeze(1)).to(est_sources.dtype)


def align_to_previous(previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """The speaker order of `current` that best matches `previous` on the samples they share.

    previous, current: [overlap, num_spks] -> index tensor [num_spks]; `current[:, order]` follows `previous`.
    Scores are normalised correlations; silent overlaps (all scores 0) keep the order as it is.
    """
    previous = previous.double() / (previous.double().norm(dim=0, keepdim=True) + 1e-8)
    current = current.double() / (current.double().norm(dim=0, keepdim=True) + 1e-8)
    correlation = previous.T @ current  # [num_spks (previous), num_spks (current)]
    return best_permutation(correlation.unsqueeze(0))[0]


def separate_shifted(separate_batch: SeparateBatch, mixture: torch.Tensor, shifts: int, hop: int) -> torch.Tensor:
    """The mean of the estimates of `shifts` copies of the mixture, delayed by offsets spread over one `hop`.

    A learned encoder reads the mixture in frames `hop` samples apart, so a delay of a fraction of a hop gives
    the model another view of the same signal and slightly different errors; averaging the views is a cheap
    ensemble (test-time augmentation, like Demucs' --shifts). Each view's estimates are brought to the
    mixture's level (`match_mixture_level`) and into the speaker order of the first view before averaging.
    With shifts=1 this is `separate_batch(mixture)` itself.

    mixture: [batch, time] -> est_sources [batch, time, num_spks].
    """
    if shifts < 1 or shifts > hop:
        raise ValueError(f"shifts must lie in [1, hop={hop}], got {shifts}")
    if shifts == 1:
        return separate_batch(mixture)
    num_samples = mixture.shape[1]
    total = first = None
    for k in range(shifts):
        offset = k * hop // shifts
        delayed = torch.nn.functional.pad(mixture, (offset, 0))
        estimates = match_mixture_level(separate_batch(delayed)[:, offset : offset + num_samples], mixture)
        if first is None:
            first, total = estimates, estimates.clone()
        else:
            for b in range(mixture.shape[0]):
                total[b] += estimates[b][:, align_to_previous(first[b], estimates[b])]
    return total / shifts


def mixture_consistency(est_sources: torch.Tensor, mixture: torch.Tensor) -> torch.Tensor:
    """Estimates that sum to the mixture: what they leave out is shared equally between them.

    The unweighted mixture-consistency projection of Wisdom et al. (ICASSP 2019), applied at test time after
    `match_mixture_level` (estimates at an arbitrary scale would get the whole mixture added). Only for
    mixtures that are the sum of the sources: on noisy ones the noise would be shared out too.

    est_sources: [batch, time, num_spks]; mixture: [batch, time] -> [batch, time, num_spks].
    """
    estimates = match_mixture_level(est_sources, mixture)
    residual = mixture.to(estimates.dtype) - estimates.sum(dim=-1)
    return estimates + residual.unsqueeze(-1) / estimates.shape[-1]


def with_mixture_consistency(separate_batch: SeparateBatch) -> SeparateBatch:
    """`separate_batch` followed by `mixture_consistency`."""

    def separate(mixture: torch.Tensor) -> torch.Tensor:
        return mixture_consistency(separate_batch(mixture), mixture)

    return separate


def crossfade(length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hann fade-in and fade-out of `length` samples that sum to exactly one, sample by sample."""
    fade_in = torch.sin(0.5 * math.pi * (torch.arange(length, dtype=torch.float64) + 0.5) / length) ** 2
    return fade_in.float(), (1 - fade_in).float()


def separate_long(
    separate_batch: SeparateBatch,
    mixture: torch.Tensor,
    window: int,
    hop: int,
    batch_size: int = 1,
    progress: bool | None = False,
    description: str | None = None,
) -> torch.Tensor:
    """Separate a mixture of any length by overlap-add of windows, keeping each speaker on one track.

    mixture: [time] -> est_sources [time, num_spks], each window's estimates at the mixture's level
    (`match_mixture_level`). A mixture of at most `window` samples is separated in one pass. Otherwise windows
    start every `hop` samples (the last one zero-padded), go through `separate_batch` `batch_size` at a time,
    are put in the speaker order of the previous window on their `window - hop` shared samples, and are
    cross-faded there. `progress`: a tqdm bar (None: only on a terminal).
    """
    if not 0 < hop < window:
        raise ValueError(f"hop ({hop} samples) must be positive and shorter than the window ({window}) so they overlap")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    num_samples = mixture.shape[0]
    if num_samples <= window:
        return match_mixture_level(separate_batch(mixture.unsqueeze(0)).cpu(), mixture.unsqueeze(0))[0]

    overlap = window - hop
    num_windows = math.ceil((num_samples - overlap) / hop)  # the last one reaches the end, no other one does
    fade_in, fade_out = crossfade(overlap)
    est_sources = None  # [time, num_spks], allocated once the number of speakers is known
    previous_tail = None  # the last window's estimates on the samples it shares with the next one
    disable = None if progress is None else not progress  # tqdm: None disables the bar off a terminal
    with tqdm(total=num_windows, unit="window", desc=description, disable=disable, leave=False) as bar:
        for first in range(0, num_windows, batch_size):
            starts = [k * hop for k in range(first, min(first + batch_size, num_windows))]
            chunks = torch.zeros(len(starts), window, dtype=mixture.dtype)  # [batch, window]
            for row, start in enumerate(starts):
                piece = mixture[start : start + window]
                chunks[row, : piece.shape[0]] = piece
            estimates = match_mixture_level(separate_batch(chunks).cpu().float(), chunks)  # [batch, window, num_spks]
            if est_sources is None:
                est_sources = torch.zeros(num_samples, estimates.shape[-1])
            for start, estimate in zip(starts, estimates):
                if previous_tail is not None:
                    estimate = estimate[:, align_to_previous(previous_tail, estimate[:overlap])]
                previous_tail = estimate[hop:]
                weight = torch.ones(window)
                if start > 0:
                    weight[:overlap] = fade_in
                if start + window < num_samples:
                    weight[hop:] = fade_out
                end = min(start + window, num_samples)
                est_sources[start:end] += (estimate * weight.unsqueeze(-1))[: end - start]
            bar.update(len(starts))
    return est_sources


# ==================================================================== files
@dataclasses.dataclass
class SeparationOptions:
    """How files are separated; times in seconds."""

    window: float = 8.0  # seconds the model sees at once; longer files are cut into windows
    hop: float = 4.0  # seconds between window starts (window - hop is the cross-faded overlap)
    batch_size: int = 1  # windows per forward pass (faster on GPU, more memory)
    output_rate: str = "model"  # "model": the model's sample rate; "input": each input's own
    normalize: str = "mixture"  # "mixture": the mixture's level (least squares); "peak": each track peaks at 0.9
    progress: bool | None = None  # tqdm bar over windows (None: only on a terminal)
    shifts: int = 1  # >1: average over that many sub-hop delays of each window (`separate_shifted`), shifts x slower
    mixture_consistency: bool = False  # estimates that sum to each window (`mixture_consistency`): clean mixtures only

    def __post_init__(self):
        if self.shifts < 1:
            raise ValueError(f"shifts must be at least 1, got {self.shifts}")
        if self.output_rate not in ("model", "input"):
            raise ValueError(f"output_rate must be 'model' or 'input', got {self.output_rate!r}")
        if self.normalize not in ("mixture", "peak"):
            raise ValueError(f"normalize must be 'mixture' or 'peak', got {self.normalize!r}")
        if not 0 < self.hop < self.window:
            raise ValueError(f"hop ({self.hop} s) must be positive and shorter than the window ({self.window} s)")


@dataclasses.dataclass(frozen=True)
class SeparatedFile:
    """What `FileSeparator.separate_file` wrote."""

    outputs: list[Path]
    seconds: float  # the input's duration
    elapsed: float  # wall-clock seconds spent on it


def read_mixture(path: Path, block_frames: int = 1 << 20) -> tuple[np.ndarray, int, int]:
    """A file's audio mixed down to mono float32 [time], its sample rate and channel count.

    Read in blocks and mixed down block by block, so a multichannel file costs one mono buffer.
    """
    try:
        with sf.SoundFile(str(path)) as audio:
            sample_rate, channels = audio.samplerate, audio.channels
            mono = np.empty(audio.frames, dtype=np.float32)
            filled = 0
            for block in audio.blocks(blocksize=block_frames, dtype="float32", always_2d=True):
                mono[filled : filled + block.shape[0]] = block.mean(axis=1)
                filled += block.shape[0]
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        reason = getattr(err, "error_string", None) or str(err)
        raise AudioInputError(f"not a readable audio file ({reason})") from None
    if filled == 0:
        raise AudioInputError("no audio samples (empty file)")
    return mono[:filled], sample_rate, channels


def write_track(
    path: Path, track: torch.Tensor, sample_rate: int, gain: float = 1.0, block_samples: int = 1 << 20
) -> None:
    """Write a mono track [time] times `gain` as 16-bit PCM, block by block: no full-size copy of the track."""
    with sf.SoundFile(str(path), "w", samplerate=sample_rate, channels=1, subtype="PCM_16") as audio:
        for block in torch.split(track, block_samples):
            audio.write((block * gain).nan_to_num(0.0).clamp(-1.0, 1.0).numpy())


class FileSeparator:
    """Separates audio files with one model: any length, sample rate and channel count; one file per speaker."""

    def __init__(self, separator: SepformerSeparation, options: SeparationOptions | None = None):
        self.separator = separator
        self.options = options or SeparationOptions()
        self.sample_rate = int(separator.hparams.sample_rate)
        self.num_spks = int(separator.hparams.num_spks)
        self.separate_batch = separator.separate_batch  # what separates each window
        if self.options.shifts > 1:  # the delays are spread over one hop of the model's encoder
            encoder_hop = int(separator.mods.encoder.conv1d.stride[0])
            if self.options.shifts > encoder_hop:
                raise ValueError(f"shifts ({self.options.shifts}) exceed the encoder's hop ({encoder_hop} samples)")
            self.separate_batch = functools.partial(
                separate_shifted, separator.separate_batch, shifts=self.options.shifts, hop=encoder_hop
            )
        if self.options.mixture_consistency:
            self.separate_batch = with_mixture_consistency(self.separate_batch)
        self._said: set[str] = set()

    def _say_once(self, message: str) -> None:
        if message not in self._said:
            self._said.add(message)
            logger.info(message)

    @torch.inference_mode()
    def separate(self, mixture: torch.Tensor, description: str | None = None) -> torch.Tensor:
        """mixture [time] at the model's rate -> est_sources [time, num_spks] at the mixture's level."""
        return separate_long(
            self.separate_batch,
            mixture,
            window=round(self.options.window * self.sample_rate),
            hop=round(self.options.hop * self.sample_rate),
            batch_size=self.options.batch_size,
            progress=self.options.progress,
            description=description,
        )

    def separate_file(self, path: str | Path, output_dir: str | Path) -> SeparatedFile:
        """Write `<output_dir>/<stem>_s1.wav`, `<stem>_s2.wav`, ... for one input file.

        Raises AudioInputError for an unreadable or empty file.
        """
        path, output_dir = Path(path), Path(output_dir)
        started = time.perf_counter()
        samples, input_rate, channels = read_mixture(path)
        num_input_samples = samples.shape[0]
        if channels > 1:
            self._say_once(f"Mixing {channels}-channel inputs down to mono")
        mixture = torch.from_numpy(samples)
        del samples  # `mixture` is the input buffer from here on
        if input_rate != self.sample_rate:
            self._say_once(f"Resampling {input_rate} Hz inputs to the model's {self.sample_rate} Hz")
            mixture = torchaudio.functional.resample(mixture, input_rate, self.sample_rate)
        est_sources = self.separate(mixture, description=path.name)  # [time, num_spks]
        del mixture

        output_rate = input_rate if self.options.output_rate == "input" else self.sample_rate
        if output_rate != self.sample_rate:
            est_sources = torchaudio.functional.resample(est_sources.T, self.sample_rate, output_rate).T
            est_sources = est_sources[:num_input_samples]
        low, high = torch.aminmax(est_sources, dim=0)
        peaks = torch.maximum(high, -low)  # [num_spks], without a full-size copy
        if self.options.normalize == "peak":
            gains = 0.9 / peaks.clamp(min=1e-8)
        else:
            gains = torch.ones_like(peaks)
            peak = float(peaks.max())
            if peak > 1.0:  # never clip: every track down by the same factor, so their balance is kept
                logger.info(
                    f"{path.name}: estimates peak at {peak:.2f}, scaled down by {20 * math.log10(peak):.1f} dB "
                    "to avoid clipping"
                )
                gains /= peak

        output_dir.mkdir(parents=True, exist_ok=True)
        outputs = [output_dir / f"{path.stem}_s{k + 1}.wav" for k in range(est_sources.shape[1])]
        for k, output in enumerate(outputs):
            write_track(output, est_sources[:, k], output_rate, float(gains[k]))
        return SeparatedFile(outputs, num_input_samples / input_rate, time.perf_counter() - started)


def is_audio(path: Path) -> bool:
    """A file whose name says it is audio that folders and globs should pick up."""
    return path.is_file() and path.suffix.lower() in AUDIO_SUFFIXES


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """Files named by the command line's inputs (files, folders searched recursively, glob patterns).

    Returns the audio files in order, without duplicates, and one error message per input that names nothing.
    """
    files, errors = [], []
    for name in inputs:
        path = Path(name)
        if path.is_file():
            found = [path]
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if is_audio(p))
            if not found:
                errors.append(f"{name}: folder holds no {'/'.join(s[1:] for s in AUDIO_SUFFIXES)} file")
        elif any(char in name for char in "*?["):
            matches = sorted(Path(match) for match in glob.glob(name, recursive=True))
            found = [m for m in matches if m.is_file()]
            found += [p for m in matches if m.is_dir() for p in sorted(m.rglob("*")) if is_audio(p)]
            if not found:
                errors.append(f"{name}: matches no file")
        else:
            found = []
            errors.append(f"{name}: no such file or folder")
        files.extend(found)
    unique = list(dict.fromkeys(files))
    return unique, errors
