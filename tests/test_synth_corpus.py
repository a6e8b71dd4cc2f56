"""The synthetic LibriMix-style corpus: eSpeak wrapper, layout, levels, speakers, determinism."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from demo.corpus import synth_corpus
from demo.corpus.corpus_folder import foreign_files, manifest_identity, prepare_root
from demo.corpus.espeak import EspeakSynth, available_languages, available_variants
from demo.corpus.options import (
    MANIFEST_NAME,
    MAX_AMPLITUDE,
    NOISE_LOUDNESS_RANGE,
    POOL_LOUDNESS,
    SIZE_PRESETS,
    SOURCE_LOUDNESS_RANGE,
    SPLIT_FOLDERS,
    CorpusOptions,
)
from demo.corpus.sentences import make_sentence
from demo.corpus.synth_corpus import synthesize_corpus
from demo.corpus.synth_noise import coloured_noise, mains_hum
from demo.corpus.voices import ENGLISH_ACCENTS, FEMALE_VARIANTS, MALE_VARIANTS, OTHER_LANGUAGES
from speechsep.data.loudness import measure_loudness, normalize_loudness
from speechsep.evaluation.report import improvement_by_gender_pairing
from tests.helpers import REPO, limit_file_size

TINY = SIZE_PRESETS["tiny"]
LOUDNESS_TOLERANCE = 0.2  # LU: PCM_16 rounding and the clipping guard's 0.9 peak


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def _wav_digests(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha1(path.read_bytes()).hexdigest() for path in sorted(root.rglob("*.wav"))
    }


def _read(path: str | Path) -> np.ndarray:
    waveform, _ = sf.read(path, dtype="float64")
    return waveform


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A tiny 2-speaker 8 kHz 'min' corpus shared by the read-only tests."""
    return synthesize_corpus(tmp_path_factory.mktemp("corpus"), num_workers=2, **TINY)


def _mixture_rows(root: Path, split: str, mix_type: str, wav_dir: str = "wav8k/min"):
    return _read_csv(root / wav_dir / "metadata" / f"mixture_{SPLIT_FOLDERS[split]}_{mix_type}.csv")


# --- eSpeak NG wrapper, sentences, loudness, noise ---------------------------------------


def test_espeak_returns_non_silent_speech_of_plausible_duration():
    synth = EspeakSynth()
    waveform = synth.synthesize("The old farmer carried seven baskets to the market.", voice="en-us+m3")
    duration = len(waveform) / synth.sample_rate
    assert synth.sample_rate == 22050
    assert waveform.dtype == np.float32 and waveform.ndim == 1
    assert 1.5 < duration < 6.0
    assert np.sqrt(np.mean(waveform**2)) > 0.01 and np.abs(waveform).max() <= 1.0


def test_espeak_pitch_parameter_changes_the_voice():
    synth = EspeakSynth()
    low = synth.synthesize("Hello there, how are you?", voice="en+f2", pitch=10)
    high = synth.synthesize("Hello there, how are you?", voice="en+f2", pitch=90)
    zero_crossings = [np.mean(np.abs(np.diff(np.sign(w)))) for w in (low, high)]
    assert zero_crossings[1] > zero_crossings[0]


def test_espeak_rejects_unknown_voice():
    with pytest.raises(ValueError, match="no voice"):
        EspeakSynth().synthesize("hello", voice="xx-nowhere")


def test_speaker_voices_exist_in_the_shipped_espeak_data():
    assert set(FEMALE_VARIANTS + MALE_VARIANTS) <= set(available_variants())
    assert set(ENGLISH_ACCENTS + OTHER_LANGUAGES) <= set(available_languages())


def test_make_sentence_has_the_requested_words_and_follows_the_seed():
    texts = [make_sentence(np.random.default_rng(3), num_words) for num_words in (1, 4, 9, 25)]
    assert [len(text.split()) for text in texts] == [1, 4, 9, 25]
    assert make_sentence(np.random.default_rng(3), 25) == texts[-1]
    assert make_sentence(np.random.default_rng(4), 25) != texts[-1]


def test_loudness_is_finite_for_short_signals_and_silence_is_left_alone():
    short = 0.1 * np.random.default_rng(0).standard_normal(800)  # 0.1 s at 8 kHz
    assert math.isfinite(measure_loudness(short, 8000))
    normalized, _ = normalize_loudness(short, 8000, -30.0)
    assert measure_loudness(normalized, 8000) == pytest.approx(-30.0, abs=0.01)
    silence = np.zeros(8000)
    assert measure_loudness(silence, 8000) == -math.inf
    unchanged, gain = normalize_loudness(silence, 8000, -30.0)
    assert gain == 1.0 and np.all(unchanged == 0.0)


def test_coloured_noise_exponent_tilts_the_spectrum():
    def low_to_high_ratio(exponent):
        noise = coloured_noise(np.random.default_rng(0), 16000, 8000, exponent)
        power = np.abs(np.fft.rfft(noise)) ** 2
        return power[: len(power) // 8].sum() / power[-len(power) // 2 :].sum()

    white, pink, brown = (low_to_high_ratio(exponent) for exponent in (0.0, 1.0, 2.0))
    assert white < pink < brown
    assert 0.1 < white < 0.5  # flat: 1/8 of the band against 1/2 of it


def test_mains_hum_repeats_at_the_mains_period():
    hum = mains_hum(np.random.default_rng(1), 8000, 8000)
    lags = np.arange(100, 200)  # 40 to 80 Hz at 8 kHz
    correlation = [np.dot(hum[:-lag], hum[lag:]) for lag in lags]
    period = lags[int(np.argmax(correlation))]
    assert min(abs(period - 8000 / 50), abs(period - 8000 / 60)) <= 2


# --- corpus layout ----------------------------------------------------------------------


def test_corpus_has_the_librimix_folders(corpus):
    assert corpus.name == "MiniLibri2Mix"
    for split in SPLIT_FOLDERS.values():
        for track in ("mix_clean", "mix_both", "s1", "s2", "noise"):
            assert any((corpus / "wav8k" / "min" / split / track).glob("*.wav")), (split, track)
    assert not (corpus / "wav8k" / "min" / "test" / "s3").exists()
    assert (corpus / "metadata").resolve() == (corpus / "wav8k" / "min" / "metadata").resolve()


def test_metadata_csvs_have_the_librimix_columns(corpus):
    for split in SPLIT_FOLDERS:
        clean = _read_csv_header(corpus, split, "mix_clean")
        both = _read_csv_header(corpus, split, "mix_both")
        assert clean == ["mixture_ID", "mixture_path", "source_1_path", "source_2_path", "length"]
        assert both == ["mixture_ID", "mixture_path", "source_1_path", "source_2_path", "noise_path", "length"]


def _read_csv_header(root: Path, split: str, mix_type: str) -> list[str]:
    path = root / "metadata" / f"mixture_{SPLIT_FOLDERS[split]}_{mix_type}.csv"
    with open(path, newline="") as file:
        return next(csv.reader(file))


def test_metadata_rows_point_to_existing_files_of_the_stated_length(corpus):
    for split in SPLIT_FOLDERS:
        rows = _mixture_rows(corpus, split, "mix_both")
        assert len(rows) == TINY[f"num_{split}"]
        for row in rows:
            for column in ("mixture_path", "source_1_path", "source_2_path", "noise_path"):
                info = sf.info(row[column])
                assert Path(row[column]).stem == row["mixture_ID"]
                assert info.samplerate == 8000 and info.channels == 1 and info.subtype == "PCM_16"
                assert info.frames == int(row["length"])


def test_mixture_ids_join_the_source_utterance_ids(corpus):
    utterance_ids = {row["utterance_id"] for row in _read_csv(corpus / "sources" / "utterances.csv")}
    for row in _mixture_rows(corpus, "train", "mix_clean"):
        parts = row["mixture_ID"].split("_")
        ids = ["_".join(parts[i : i + 2]) for i in range(0, len(parts), 2)]
        assert len(ids) == 2 and set(ids) <= utterance_ids


def test_min_mode_cuts_mixtures_to_the_shortest_source(corpus):
    lengths = {row["utterance_id"]: int(row["num_samples"]) for row in _read_csv(corpus / "sources" / "utterances.csv")}
    for row in _mixture_rows(corpus, "dev", "mix_clean"):
        parts = row["mixture_ID"].split("_")
        ids = ["_".join(parts[i : i + 2]) for i in range(0, len(parts), 2)]
        assert int(row["length"]) == min(lengths[i] for i in ids)


# --- levels -----------------------------------------------------------------------------


def test_mixtures_are_exact_sums_of_the_written_tracks(corpus):
    for split in SPLIT_FOLDERS:
        for row in _mixture_rows(corpus, split, "mix_both"):
            s1, s2, noise = (_read(row[c]) for c in ("source_1_path", "source_2_path", "noise_path"))
            mix_both = _read(row["mixture_path"])
            mix_clean = _read(row["mixture_path"].replace("/mix_both/", "/mix_clean/"))
            np.testing.assert_array_equal(mix_clean, s1 + s2)
            np.testing.assert_array_equal(mix_both, s1 + s2 + noise)


def test_mixtures_do_not_clip(corpus):
    for split in SPLIT_FOLDERS:
        for mix_type in ("mix_clean", "mix_both"):
            for row in _mixture_rows(corpus, split, mix_type):
                assert np.abs(_read(row["mixture_path"])).max() <= MAX_AMPLITUDE + 1 / 32768


def test_sources_and_noise_have_librimix_loudness(corpus):
    for split in SPLIT_FOLDERS:
        for row in _mixture_rows(corpus, split, "mix_both"):
            # The clipping guard may have lowered everything together: then only upper bounds hold.
            scaled = np.abs(_read(row["mixture_path"])).max() >= MAX_AMPLITUDE - 1 / 32768
            for column, (low, high) in (
                ("source_1_path", SOURCE_LOUDNESS_RANGE),
                ("source_2_path", SOURCE_LOUDNESS_RANGE),
                ("noise_path", NOISE_LOUDNESS_RANGE),
            ):
                loudness = measure_loudness(_read(row[column]), 8000)
                assert loudness <= high + LOUDNESS_TOLERANCE, (row["mixture_ID"], column)
                assert scaled or loudness >= low - LOUDNESS_TOLERANCE, (row["mixture_ID"], column)


def test_source_pool_is_loudness_normalised_at_the_corpus_rate(corpus):
    for row in _read_csv(corpus / "sources" / "utterances.csv"):
        waveform, sample_rate = sf.read(row["path"])
        assert sample_rate == 8000 and len(waveform) == int(row["num_samples"])
        assert 2.0 <= len(waveform) / sample_rate <= 6.0
        assert measure_loudness(waveform, sample_rate) == pytest.approx(POOL_LOUDNESS, abs=0.5)


# --- speakers ---------------------------------------------------------------------------


def test_speakers_are_disjoint_across_splits(corpus):
    speakers = _read_csv(corpus / "sources" / "speakers.csv")
    assert len({row["speaker_id"] for row in speakers}) == len(speakers)
    for row in speakers:
        folder = corpus / "sources" / row["split"] / row["speaker_id"]
        assert len(list(folder.glob(f"{row['speaker_id']}_*.wav"))) == TINY["utts_per_speaker"]
    for split in ("train", "dev", "test"):
        assert sum(row["split"] == split for row in speakers) == TINY[f"num_{split}_speakers"]
    voices = [(row["voice"], row["pitch"], row["pitch_range"], row["rate"]) for row in speakers]
    assert len(set(voices)) == len(voices)


def test_each_mixture_has_distinct_speakers_of_its_split(corpus):
    split_of = {row["speaker_id"]: row["split"] for row in _read_csv(corpus / "sources" / "speakers.csv")}
    for split in SPLIT_FOLDERS:
        for row in _mixture_rows(corpus, split, "mix_clean"):
            speakers = row["mixture_ID"].split("_")[::2]
            assert len(set(speakers)) == len(speakers) == 2
            assert {split_of[speaker] for speaker in speakers} == {split}


def test_babble_never_uses_the_mixture_speakers():
    options = CorpusOptions(**TINY)
    utterances = {f"spk{s:03d}": [Path(f"spk{s:03d}_{u:04d}.wav") for u in range(3)] for s in range(6)}
    plans = synth_corpus.plan_mixtures("train", utterances, options)
    for plan in plans:
        mixture_speakers = {path.stem[:6] for path in plan.source_paths}
        babble_speakers = {path.stem[:6] for paths in plan.babble_paths for path in paths}
        assert babble_speakers and not babble_speakers & mixture_speakers


# --- determinism, reruns, variants ------------------------------------------------------


def test_same_seed_gives_identical_files_whatever_the_worker_count(corpus, tmp_path):
    again = synthesize_corpus(tmp_path, num_workers=1, **TINY)
    assert _wav_digests(again) == _wav_digests(corpus)


def test_rerun_with_same_options_does_nothing(corpus):
    manifest = (corpus / MANIFEST_NAME).read_text()
    before = {path: path.stat().st_mtime_ns for path in corpus.rglob("*.wav")}
    assert synthesize_corpus(corpus.parent, num_workers=2, **TINY) == corpus
    assert (corpus / MANIFEST_NAME).read_text() == manifest
    assert {path: path.stat().st_mtime_ns for path in corpus.rglob("*.wav")} == before


def test_other_options_fail_unless_overwrite_and_other_seed_differs(tmp_path):
    first = synthesize_corpus(tmp_path, num_workers=2, **TINY)
    first_digests = _wav_digests(first)
    with pytest.raises(FileExistsError, match="other options"):
        synthesize_corpus(tmp_path, num_workers=2, seed=1, **TINY)
    second = synthesize_corpus(tmp_path, num_workers=2, seed=1, overwrite=True, **TINY)
    assert json.loads((second / MANIFEST_NAME).read_text())["options"]["seed"] == 1
    assert not set(_wav_digests(second).values()) & set(first_digests.values())


def test_a_corpus_stamped_with_the_generators_former_module_path_is_reused(tmp_path):
    root = tmp_path / "MiniLibri2Mix"
    root.mkdir()
    identity = manifest_identity(CorpusOptions(**TINY), root)
    manifest = {"generator": "speechsep.corpus.synth_corpus", **identity, "complete": True}
    (root / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert prepare_root(root, identity, overwrite=False)  # complete for these options: kept as it is


def test_a_generated_corpus_holds_no_file_the_generator_does_not_write(corpus):
    assert foreign_files(corpus) == []


@pytest.mark.parametrize("manifest", [{"complete": True, "options": {"seed": 99}}, {"complete": False}])
def test_replacing_a_corpus_that_holds_the_users_files_refuses_naming_them(tmp_path, manifest):
    root = tmp_path / "MiniLibri2Mix"
    (root / "wav8k" / "min" / "test" / "s1").mkdir(parents=True)
    (root / "wav8k" / "min" / "test" / "s1" / "a.wav").write_bytes(b"")  # the generator's own
    (root / "wav8k" / "min" / "mywork").mkdir()
    (root / "mynotes.txt").write_text("precious\n")
    (root / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(FileExistsError, match=r"did not write \(mynotes.txt, wav8k/min/mywork\)"):
        synthesize_corpus(tmp_path, num_workers=1, overwrite=True, **TINY)
    assert (root / "mynotes.txt").read_text() == "precious\n" and (root / "wav8k" / "min" / "mywork").is_dir()
    assert (root / "wav8k" / "min" / "test" / "s1" / "a.wav").is_file()


def test_a_write_that_fails_in_a_worker_is_one_error_line_naming_the_file(tmp_path):
    command = [sys.executable, "-m", "demo.corpus.synth_corpus", str(tmp_path), "--size=tiny", "--num-workers=1"]
    result = subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        preexec_fn=limit_file_size(10240),  # the manifest fits, an utterance does not
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        timeout=300,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    failed = tmp_path / "MiniLibri2Mix" / "sources" / "train" / "spk000" / "spk000_0000.wav"
    assert result.stderr.splitlines()[-1].startswith(f"error: cannot write {failed}: File too large"), result.stderr
    assert not failed.exists()


def test_three_speakers_at_16k_in_max_mode(tmp_path):
    root = synthesize_corpus(tmp_path, num_spks=3, sample_rate=16000, mode="max", num_workers=2, **TINY)
    assert root.name == "MiniLibri3Mix"
    lengths = {row["utterance_id"]: int(row["num_samples"]) for row in _read_csv(root / "sources" / "utterances.csv")}
    rows = _mixture_rows(root, "test", "mix_both", wav_dir="wav16k/max")
    assert list(rows[0]) == [
        "mixture_ID",
        "mixture_path",
        "source_1_path",
        "source_2_path",
        "source_3_path",
        "noise_path",
        "length",
    ]
    for row in rows:
        parts = row["mixture_ID"].split("_")
        ids = ["_".join(parts[i : i + 2]) for i in range(0, len(parts), 2)]
        assert len({i.split("_")[0] for i in ids}) == 3
        assert int(row["length"]) == max(lengths[i] for i in ids)  # max mode zero-pads
        sources = [_read(row[f"source_{i}_path"]) for i in (1, 2, 3)]
        assert sf.info(row["mixture_path"]).samplerate == 16000
        np.testing.assert_array_equal(_read(row["mixture_path"]), sum(sources) + _read(row["noise_path"]))


def test_invalid_options_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="num_test_speakers"):
        CorpusOptions(num_spks=3, num_test_speakers=2)
    with pytest.raises(ValueError, match="mode"):
        CorpusOptions(mode="average")
    with pytest.raises(ValueError, match="sample_rate"):
        CorpusOptions(sample_rate=22050)
    (tmp_path / "MiniLibri2Mix").mkdir()
    (tmp_path / "MiniLibri2Mix" / "notes.txt").write_text("not a corpus")
    with pytest.raises(FileExistsError, match="not a synthetic corpus"):
        synthesize_corpus(tmp_path, **TINY)


def test_test_results_split_by_gender_pairing_of_the_talkers(corpus, tmp_path):
    gender = {row["speaker_id"]: row["gender"] for row in _read_csv(corpus / "sources" / "speakers.csv")}
    rows = [row for split in SPLIT_FOLDERS for row in _mixture_rows(corpus, split, "mix_clean")]
    same = [gender[a] == gender[b] for a, b in (row["mixture_ID"].split("_")[::2] for row in rows)]
    assert any(same) and not all(same)  # the tiny corpus has both kinds (all splits scored as one here)
    results = tmp_path / "test_results.csv"
    # Score 10 dB for same-gender mixtures, 0 dB for the others.
    results.write_text("snt_id,si-snr_i\n" + "".join(f"{row['mixture_ID']},{10 * s}\n" for row, s in zip(rows, same)))
    by_pairing = improvement_by_gender_pairing(results, corpus / "sources" / "speakers.csv")
    assert by_pairing == {
        "same_gender": {"mean": 10.0, "count": sum(same)},
        "different_genders": {"mean": 0.0, "count": len(same) - sum(same)},
    }
