"""Two-speaker test mixtures from a folder of real recordings, to see how a model does on real voices.

Short recordings of one speaker each (read digits, words, sentences) are strung together with short random
pauses into utterances of a few seconds per speaker, and two speakers are mixed at WSJ0-2mix levels (the
dynamic-mixing `Wsj0Levels`), cut to the shorter utterance (`min` mode). The result is written as the test
split of a custom tree with its manifest, which `train.py --test_only` scores:

    python -m speechsep.data.recorded_mixtures RECORDINGS OUT --speaker-regex '^\\d+_([a-z]+)_'
    python train.py hparams/demo.yaml --test_only --skip_prep=True --test_data=OUT/test.csv \\
        --data_folder=OUT --results_folder=results/demo/recorded

Speakers come from the file names (`--speaker-regex`, its first group) or else from each file's folder.
Deterministic for a seed; mixtures that would peak above the peak limit are scaled down with their sources.
"""

import argparse
import functools
from collections.abc import Sequence
import logging
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from speechsep.data.audio import PEAK_LIMIT, is_audio_name, write_pcm16
from speechsep.data.audio_checks import read_header
from speechsep.data.dynamic_mixing import Wsj0Levels
from speechsep.errors import RecipeError
from speechsep.output_files import write_csv, write_file

logger = logging.getLogger(__name__)

PAUSE_SECONDS = (0.1, 0.4)  # between the recordings strung into one utterance
UTTERANCE_SECONDS = (3.0, 5.0)
LONG_RECORDING_SECONDS = 30.0  # longer recordings are not read whole: a random stretch of this length


class RecordingsError(RecipeError):
    """A recordings folder that cannot give two-speaker mixtures."""


def recordings_by_speaker(folder: Path, speaker_regex: str | None = None) -> dict[str, list[Path]]:
    """Every audio file under `folder`, grouped by speaker (sorted, so the grouping is deterministic)."""
    pattern = re.compile(speaker_regex) if speaker_regex else None
    speakers: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file() and is_audio_name(p)):
        if pattern is None:  # the top folder (LibriSpeech: <speaker>/<chapter>/<file>)
            parts = path.relative_to(folder).parts
            speaker = parts[0] if len(parts) > 1 else Path(folder).name
        else:
            match = pattern.search(path.stem)
            if match is None:
                raise RecordingsError(f"{path.name} does not match --speaker-regex {speaker_regex!r}")
            speaker = match.group(1)
        speakers[speaker].append(path)
    if len(speakers) < 2:
        raise RecordingsError(
            f"{folder} holds recordings of {len(speakers)} speaker(s); two-speaker mixtures need at least 2 "
            "(speakers come from the folders, or from the file names with --speaker-regex)"
        )
    return dict(speakers)


def _read(path: Path, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A recording, or a random stretch of `LONG_RECORDING_SECONDS` of a longer one (a talk, an audiobook)."""
    header = read_header(path)  # a stream without its length in the header is measured
    start, frames = 0, header.frames
    if frames > LONG_RECORDING_SECONDS * header.sample_rate:
        frames = int(LONG_RECORDING_SECONDS * header.sample_rate)
        start = int(rng.integers(0, header.frames - frames + 1))
    signal, rate = sf.read(path, start=start, frames=frames, dtype="float32", always_2d=True)
    signal = signal[:, 0]  # the first channel, as dynamic mixing reads it
    if rate != sample_rate:
        signal = torchaudio.functional.resample(torch.from_numpy(signal), rate, sample_rate).numpy()
    return signal


def utterance(rng: np.random.Generator, recordings: list[Path], sample_rate: int) -> np.ndarray:
    """Random recordings of one speaker with random pauses between them, until a random target duration."""
    target = int(rng.uniform(*UTTERANCE_SECONDS) * sample_rate)
    pieces, length = [], 0
    while length < target:
        piece = _read(recordings[int(rng.integers(len(recordings)))], sample_rate, rng)
        pause = np.zeros(int(rng.uniform(*PAUSE_SECONDS) * sample_rate), dtype=np.float32)
        pieces += [piece, pause]
        length += len(piece) + len(pause)
    return np.concatenate(pieces)[:target]


def make_mixtures(
    recordings_folder: str | Path,
    output_folder: str | Path,
    num_mixtures: int = 100,
    sample_rate: int = 8000,
    speaker_regex: str | None = None,
    seed: int = 0,
) -> Path:
    """Write `num_mixtures` two-speaker test mixtures and their sources; returns the test manifest's path."""
    speakers = recordings_by_speaker(Path(recordings_folder), speaker_regex)
    return write_mixtures(speakers, output_folder, "test", num_mixtures, sample_rate, num_spks=2, seed=seed)


def write_mixtures(
    speakers: dict[str, list[Path]],
    output_folder: str | Path,
    split: str,
    num_mixtures: int,
    sample_rate: int,
    num_spks: int = 2,
    seed: int = 0,
    talker_counts: Sequence[int] | None = None,
) -> Path:
    """Write `num_mixtures` mixtures of `num_spks` distinct speakers of `speakers` (name -> recordings) into
    `<output_folder>/<split>/{mixture,source1,...}/` with the manifest `<output_folder>/<split>.csv`; returns it.
    With `talker_counts`, the mixtures hold each of those counts of talkers in turn (as many of each); the sources
    beyond a mixture's count are written silent, so that every mixture has `num_spks` source files."""
    counts = list(talker_counts) if talker_counts else [num_spks]
    names = sorted(speakers)
    output_folder = Path(output_folder)
    signal_names = ["mixture", *(f"source{k}" for k in range(1, num_spks + 1))]
    folders = {name: output_folder / split / name for name in signal_names}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    levels = Wsj0Levels()
    rows = []
    for index in range(num_mixtures):
        chosen = rng.choice(len(names), size=counts[index % len(counts)], replace=False)
        sources = [utterance(rng, speakers[names[k]], sample_rate) for k in chosen]
        length = min(len(source) for source in sources)
        sources = [source[:length] for source in sources]
        gains, _ = levels.gains(rng, sources, None)
        sources = [source * gain for source, gain in zip(sources, gains)]
        sources += [np.zeros(length, dtype=np.float32)] * (num_spks - len(chosen))  # no talker
        mixture = np.sum(sources, axis=0)
        scale = min(1.0, PEAK_LIMIT / max(float(np.abs(mixture).max()), 1e-9))
        mixture_id = "_".join([f"{index:05d}", *(names[k][:40] for k in chosen)])  # a file name of a few talkers
        row = {"ID": mixture_id, "duration": round(length / sample_rate, 4)}
        for name, signal in zip(signal_names, [mixture, *sources]):
            path = folders[name] / f"{mixture_id}.wav"
            write = functools.partial(write_pcm16, signal=torch.from_numpy(signal * scale), sample_rate=sample_rate)
            write_file(path, write, overwrite=True)
            row["mix_wav" if name == "mixture" else f"s{name[len('source'):]}_wav"] = str(path.resolve())
        rows.append(row)
    manifest = output_folder / f"{split}.csv"
    write_csv(manifest, rows, overwrite=True)  # last: a manifest lists only files written whole
    logger.info(f"{num_mixtures} mixtures of {len(names)} speakers in {output_folder / split}; manifest {manifest}")
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recordings", help="folder of recordings, one speaker per file (searched recursively)")
    parser.add_argument("output", help="where test/{mixture,source1,source2}/ and test.csv are written")
    parser.add_argument("--num-mixtures", type=int, default=100)
    parser.add_argument("--sample-rate", type=int, default=8000)
    parser.add_argument("--speaker-regex", default=None, help="speaker = first group of this regex on the file stem")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        manifest = make_mixtures(
            args.recordings, args.output, args.num_mixtures, args.sample_rate, args.speaker_regex, args.seed
        )
    except RecipeError as err:
        raise SystemExit(f"error: {err}") from None
    print(manifest)


if __name__ == "__main__":
    main()
