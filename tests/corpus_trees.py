"""Small WSJ0Mix / WHAM! / WHAMR! / LibriMix / Aishell1Mix / custom trees of synthetic signals, for the tests.

Sources are speech-like signals (tests/speech.py) without formants or pauses and with a different base
pitch per speaker, so a tiny model can start to separate them within a few steps and metrics are not computed on white noise.
"""

from pathlib import Path

import numpy as np
import soundfile as sf

from tests.speech import speech_like


def voice(rng: np.random.Generator, num_samples: int, sample_rate: int, f0: float) -> np.ndarray:
    """A speech-like signal (tests/speech.py) with base pitch `f0`, without formants or pauses (so that the tiny
    models of the tests learn to separate it in a few epochs), at a peak of 0.3 as float32."""
    signal = speech_like(num_samples, sample_rate, rng, f0=f0, pauses=False, formants=False)
    return (0.3 * signal / max(np.abs(signal).max(), 1e-9)).astype(np.float32)


def _write_example(folders: dict[str, Path], name: str, rng, num_spks, sample_rate, seconds, noise: bool):
    num_samples = int(seconds * sample_rate)
    sources = [voice(rng, num_samples, sample_rate, f0) for f0 in rng.uniform(90, 300, num_spks)]
    mixture = np.sum(sources, axis=0)
    signals = {f"s{k + 1}": s for k, s in enumerate(sources)}
    if noise:
        signals["noise"] = (0.01 * rng.standard_normal(num_samples)).astype(np.float32)
        signals["mix_both"] = mixture + signals["noise"]
        signals["mix_single"] = sources[0] + signals["noise"]
    signals["mix"] = mixture
    for key, folder in folders.items():
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / f"{name}.wav", signals[key], sample_rate, subtype="FLOAT")


def make_wsj0mix(
    root: Path,
    num_spks=2,
    sample_rate=8000,
    mode="min",
    per_split: int | dict[str, int] = 4,
    seconds=1.0,
    seed=0,
    length_spread=0.2,
) -> Path:
    """`<root>/{2,3}speakers/wav8k/min/{tr,cv,tt}/{mix,s1,s2[,s3]}/*.wav`; returns the speakers folder.

    `per_split` is the number of examples of every split, or of each, e.g. {"tr": 40, "cv": 2, "tt": 2}.
    Examples last `seconds` give or take `length_spread` (relative); 0 makes batches without padding.
    """
    counts = per_split if isinstance(per_split, dict) else dict.fromkeys(("tr", "cv", "tt"), per_split)
    rng = np.random.default_rng(seed)
    data_folder = Path(root) / f"{num_spks}speakers"
    base = data_folder / f"wav{sample_rate // 1000}k" / mode
    for split, count in counts.items():
        folders = {"mix": base / split / "mix", **{f"s{k}": base / split / f"s{k}" for k in range(1, num_spks + 1)}}
        for i in range(count):
            _write_example(
                folders,
                f"{split}_{i:03d}_mix",
                rng,
                num_spks,
                sample_rate,
                seconds * rng.uniform(1 - length_spread, 1 + length_spread),
                False,
            )
    return data_folder


def make_librimix(root: Path, num_spks=2, sample_rate=8000, mode="min", per_split=4, seconds=1.0, seed=0) -> Path:
    """`<root>/Libri{2,3}Mix/wav8k/min/{train-360,dev,test}/{mix_clean,mix_both,mix_single,s1,s2,noise}/*.wav`."""
    rng = np.random.default_rng(seed)
    data_folder = Path(root) / f"Libri{num_spks}Mix"
    base = data_folder / f"wav{sample_rate // 1000}k" / mode
    for split in ("train-360", "dev", "test"):
        folders = {
            "mix": base / split / "mix_clean",
            "mix_both": base / split / "mix_both",
            "mix_single": base / split / "mix_single",
            "noise": base / split / "noise",
            **{f"s{k}": base / split / f"s{k}" for k in range(1, num_spks + 1)},
        }
        for i in range(per_split):
            name = f"{1000 + i}-{split}-{i:04d}_{2000 + i}-{i:04d}"
            _write_example(folders, name, rng, num_spks, sample_rate, seconds * rng.uniform(0.8, 1.2), True)
    return data_folder


def reverberate(signal: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """The signal through a short exponentially decaying random impulse response, cut to its length."""
    taps = int(0.05 * sample_rate)
    response = rng.standard_normal(taps) * np.exp(-np.arange(taps) / (0.01 * sample_rate))
    response[0] = 1.0
    return np.convolve(signal, 0.5 * response)[: len(signal)].astype(np.float32)


def corpus_signals(rng, num_spks: int, num_samples: int, sample_rate: int, reverb: bool) -> dict[str, np.ndarray]:
    """Every signal of one example of a WHAM!-style corpus, by folder name: sources, noise and the mixtures
    (clean, both, single); with `reverb`, WHAMR!'s `_anechoic` and `_reverb` versions of each."""
    anechoic = [voice(rng, num_samples, sample_rate, f0) for f0 in rng.uniform(90, 300, num_spks)]
    noise = (0.01 * rng.standard_normal(num_samples)).astype(np.float32)
    versions = {"": anechoic}
    if reverb:
        versions = {"_anechoic": anechoic, "_reverb": [reverberate(s, sample_rate, rng) for s in anechoic]}
    signals = {"noise": noise}
    for suffix, sources in versions.items():
        signals.update({f"s{k + 1}{suffix}": source for k, source in enumerate(sources)})
        signals[f"mix_clean{suffix}"] = np.sum(sources, axis=0)
        signals[f"mix_both{suffix}"] = np.sum(sources, axis=0) + noise
        signals[f"mix_single{suffix}"] = sources[0] + noise
    return signals


def _make_corpus(data_folder: Path, splits, num_spks, sample_rate, mode, per_split, seconds, seed, reverb) -> Path:
    rng = np.random.default_rng(seed)
    base = data_folder / f"wav{sample_rate // 1000}k" / mode
    for split in splits:
        for i in range(per_split):
            num_samples = int(seconds * rng.uniform(0.8, 1.2) * sample_rate)
            for folder, signal in corpus_signals(rng, num_spks, num_samples, sample_rate, reverb).items():
                (base / split / folder).mkdir(parents=True, exist_ok=True)
                sf.write(base / split / folder / f"{split}_{i:03d}_mix.wav", signal, sample_rate, subtype="FLOAT")
    return data_folder


def make_wham(root: Path, sample_rate=8000, mode="min", per_split=4, seconds=1.0, seed=0) -> Path:
    """`<root>/wham/wav8k/min/{tr,cv,tt}/{mix_clean,mix_both,mix_single,s1,s2,noise}/*.wav`."""
    return _make_corpus(Path(root) / "wham", ("tr", "cv", "tt"), 2, sample_rate, mode, per_split, seconds, seed, False)


def make_whamr(root: Path, sample_rate=8000, mode="min", per_split=4, seconds=1.0, seed=0) -> Path:
    """`<root>/whamr/wav8k/min/{tr,cv,tt}/{mix_{clean,both,single}_{anechoic,reverb},s{1,2}_{anechoic,reverb},noise}`."""
    return _make_corpus(Path(root) / "whamr", ("tr", "cv", "tt"), 2, sample_rate, mode, per_split, seconds, seed, True)


def make_aishell1mix(root: Path, num_spks=2, sample_rate=8000, mode="min", per_split=4, seconds=1.0, seed=0) -> Path:
    """`<root>/Aishell1Mix/wav8k/min/{train,dev,test}/{mix_clean,mix_both,mix_single,s1,s2[,s3],noise}/*.wav`."""
    splits = ("train", "dev", "test")
    data_folder = Path(root) / "Aishell1Mix"
    return _make_corpus(data_folder, splits, num_spks, sample_rate, mode, per_split, seconds, seed, False)


def make_custom(root: Path, num_spks=2, sample_rate=8000, per_split=4, seconds=1.0, seed=0) -> Path:
    """`<root>/mydata/{train,valid,test}/{mixture,source1,source2,...}/*.wav`."""
    rng = np.random.default_rng(seed)
    data_folder = Path(root) / "mydata"
    for split in ("train", "valid", "test"):
        folders = {"mix": data_folder / split / "mixture"}
        folders.update({f"s{k}": data_folder / split / f"source{k}" for k in range(1, num_spks + 1)})
        for i in range(per_split):
            _write_example(folders, f"utt{i:03d}", rng, num_spks, sample_rate, seconds, False)
    return data_folder


def make_speaker_pool(root: Path, num_speakers=4, utts_per_speaker=3, sample_rate=8000, seconds=1.5, seed=0) -> Path:
    """`<root>/pool/<speaker>/<speaker>_<n>.wav`: a single-speaker pool for dynamic mixing."""
    rng = np.random.default_rng(seed)
    pool = Path(root) / "pool"
    for s in range(num_speakers):
        speaker = f"spk{s:03d}"
        (pool / speaker).mkdir(parents=True, exist_ok=True)
        f0 = 90 + 50 * s
        for u in range(utts_per_speaker):
            signal = voice(rng, int(seconds * sample_rate), sample_rate, f0)
            sf.write(pool / speaker / f"{speaker}_{u:04d}.wav", signal, sample_rate, subtype="FLOAT")
    return pool
