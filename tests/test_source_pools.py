"""Dynamic mixing's source pools: layouts, speakers, index and resampling caches, unusable files."""

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import train
from speechsep.data import source_pool
from speechsep.data.dynamic_mixing import dynamic_mixing_dataset
from speechsep.data.source_pool import AudioIndex, PoolError, SourcePool
from speechsep.training import experiment
from tests.corpus_trees import make_wsj0mix
from tests.helpers import (
    SAMPLE_RATE,
    SEGMENT_LEN,
    SPEAKER_F0S,
    TINY_CONVTASNET,
    flac_without_length,
    librispeech_name,
    speaker_folders_name,
    steady_voice,
    write_pool,
    wsj0_name,
)


# ------------------------------------------------------------------ pools: layouts and caches
def assert_same_index(index: AudioIndex, other: AudioIndex) -> None:
    assert index.paths == other.paths and np.array_equal(index.num_frames, other.num_frames)


@pytest.mark.parametrize(
    "name, layout, first_speaker",
    [
        (librispeech_name, "LibriSpeech", "100"),
        (wsj0_name, "WSJ0", "010"),
        (speaker_folders_name, "speaker folders", "spk00"),
    ],
)
def test_layout_and_speakers_are_detected_from_the_folder(tmp_path, name, layout, first_speaker):
    pool = SourcePool.from_folder(write_pool(tmp_path, name, num_speakers=4), SAMPLE_RATE)
    assert pool.layout == layout
    assert len(pool.speakers) == 4 and pool.speakers[0] == first_speaker
    assert [len(utterances) for utterances in pool.utterances_of_speaker] == [3, 3, 3, 3]
    assert set(pool.files.num_frames) == {SAMPLE_RATE}


def test_unknown_layout_raises_an_error_naming_the_folder(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    sf.write(flat / "utterance.wav", steady_voice(200, 0.5, seed=0), SAMPLE_RATE)
    with pytest.raises(ValueError, match=f"{flat}.*expected a LibriSpeech split"):
        SourcePool.from_folder(flat, SAMPLE_RATE)


def test_folder_without_audio_raises_an_error_naming_it(tmp_path):
    with pytest.raises(PoolError, match=str(tmp_path)):
        SourcePool.from_folder(tmp_path, SAMPLE_RATE)


def test_fewer_speakers_than_num_spks_raises_an_error_naming_the_folder(tmp_path):
    folder = write_pool(tmp_path / "sources", num_speakers=2)
    with pytest.raises(PoolError, match=f"{folder} holds 2 speakers.*num_spks=3"):
        dynamic_mixing_dataset(folder, SAMPLE_RATE, num_spks=3, segment_len=SEGMENT_LEN, epoch_len=4)


def test_index_cache_spares_reading_the_files_again(tmp_path, monkeypatch):
    folder = write_pool(tmp_path / "sources")
    first = SourcePool.from_folder(folder, SAMPLE_RATE, cache_dir=tmp_path / "cache")

    def fail(*args, **kwargs):
        raise AssertionError("opened a file that the index cache already describes")

    monkeypatch.setattr(source_pool, "read_header", fail)
    second = SourcePool.from_folder(folder, SAMPLE_RATE, cache_dir=tmp_path / "cache")
    assert_same_index(second.files, first.files)


def test_resampling_cache_is_built_once(tmp_path, monkeypatch):
    folder = write_pool(tmp_path / "sources", sample_rate=16000)
    first = SourcePool.from_folder(folder, SAMPLE_RATE, cache_dir=tmp_path / "cache")
    assert all(Path(path).is_relative_to(tmp_path / "cache") for path in first.files.paths)
    assert set(first.files.num_frames) == {SAMPLE_RATE}

    def fail(*args, **kwargs):
        raise AssertionError("resampled again")

    monkeypatch.setattr(source_pool, "_resample_file", fail)
    second = SourcePool.from_folder(folder, SAMPLE_RATE, cache_dir=tmp_path / "cache")
    assert_same_index(second.files, first.files)


def test_resampling_keeps_the_level(tmp_path):
    folder = tmp_path / "noise16k"
    folder.mkdir()
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    sf.write(folder / "tone.wav", tone, 16000)
    index = AudioIndex.from_folder(folder, SAMPLE_RATE, cache_dir=tmp_path / "cache")
    resampled, sample_rate = sf.read(index.paths[0])
    assert sample_rate == SAMPLE_RATE and len(resampled) == SAMPLE_RATE
    rms = np.sqrt(np.mean(resampled[100:-100] ** 2))
    assert rms == pytest.approx(0.5 / np.sqrt(2), rel=1e-3)


def test_resampling_without_cache_dir_raises_an_error_asking_for_one(tmp_path):
    folder = write_pool(tmp_path / "sources", sample_rate=16000)
    with pytest.raises(ValueError, match="16000 Hz but sample_rate is 8000 Hz: pass a cache_dir"):
        SourcePool.from_folder(folder, SAMPLE_RATE)


def test_a_corrupt_file_in_the_pool_is_one_line_naming_it(tmp_path):
    folder = write_pool(tmp_path / "sources")
    corrupt = next(folder.rglob("*.wav")).with_name("corrupt.wav")
    corrupt.write_bytes(b"RIFF not really audio" * 10)
    with pytest.raises(PoolError, match=rf"unreadable audio file {corrupt}: .* \(in the pool {folder}\)") as error:
        SourcePool.from_folder(folder, SAMPLE_RATE, cache_dir=tmp_path / "cache")
    assert "\n" not in str(error.value)


def test_silent_files_and_stereo_files_silent_on_their_first_channel_are_left_out_with_a_warning(tmp_path, caplog):
    folder = write_pool(tmp_path / "sources")
    sf.write(folder / "spk00" / "spk00_0000.wav", np.zeros(SAMPLE_RATE, dtype=np.float32), SAMPLE_RATE)
    speech = steady_voice(SPEAKER_F0S[1], 1.0, seed=0)
    sf.write(folder / "spk01" / "spk01_0000.wav", np.stack([np.zeros_like(speech), speech], axis=1), SAMPLE_RATE)
    with caplog.at_level("WARNING"):
        pool = SourcePool.from_folder(folder, SAMPLE_RATE, cache_dir=tmp_path / "cache")
    assert "spk00/spk00_0000.wav" not in pool.files.rel_paths and "spk01/spk01_0000.wav" not in pool.files.rel_paths
    assert len(pool.files) == 13
    assert "Leaving out audio files of" in caplog.text and "2 silent, e.g. spk00/spk00_0000.wav" in caplog.text


def test_a_training_run_warns_once_of_the_silent_files_it_leaves_out(tmp_path, monkeypatch, caplog):
    folder = write_pool(tmp_path / "sources")
    sf.write(folder / "spk00" / "spk00_0000.wav", np.zeros(SAMPLE_RATE, dtype=np.float32), SAMPLE_RATE)
    corpus = make_wsj0mix(tmp_path / "data", per_split=1)
    monkeypatch.setattr(experiment, "create_experiment_directory", lambda folder, script: None)
    argv = ["hparams/convtasnet.yaml", f"--data_folder={corpus}", f"--output_folder={tmp_path / 'run'}"]
    argv += [f"--{key}={value}" for key, value in TINY_CONVTASNET.items()]
    with caplog.at_level("WARNING"):
        train.prepare_experiment([*argv, "--dynamic_mixing=True", f"--base_folder_dm={folder}"])
    assert sum("Leaving out audio files" in record.getMessage() for record in caplog.records) == 1


def test_a_pool_of_silent_files_is_one_error_line(tmp_path):
    folder = write_pool(tmp_path / "sources", silent=True)
    with pytest.raises(PoolError, match=f"no usable audio file under {folder}: 15 silent") as error:
        dynamic_mixing_dataset(folder, SAMPLE_RATE, num_spks=2, segment_len=SEGMENT_LEN, epoch_len=4)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("kind", ["dangling link", "fifo"])
def test_a_dangling_link_or_a_fifo_in_the_pool_is_one_line_naming_it(tmp_path, kind):
    folder = write_pool(tmp_path / "sources")
    odd = folder / "spk00" / "spk00_0099.wav"
    if kind == "fifo":
        os.mkfifo(odd)  # opening it would wait for a writer forever
    else:
        odd.symlink_to(tmp_path / "moved_away.wav")
    expected = "not a regular file" if kind == "fifo" else "broken symbolic link"
    with pytest.raises(PoolError, match=f"{odd} in the pool: {expected}"):
        SourcePool.from_folder(folder, SAMPLE_RATE, cache_dir=tmp_path / "cache")


def test_a_link_loop_in_the_pool_is_not_followed_and_named_once(tmp_path, caplog):
    folder = write_pool(tmp_path / "sources")
    (folder / "spk00" / "loop").symlink_to("..")
    with caplog.at_level("WARNING"):
        pool = SourcePool.from_folder(folder, SAMPLE_RATE, cache_dir=tmp_path / "cache")
    assert len(pool.files) == 15
    loop_lines = [record.getMessage() for record in caplog.records if "loop" in record.getMessage()]
    assert loop_lines == [f"Not following {folder / 'spk00' / 'loop'}: it leads back to {folder}, a folder above it"]


def test_a_flac_without_a_length_in_its_header_is_indexed_at_its_length_and_read_from_a_copy(tmp_path):
    folder = write_pool(tmp_path / "sources")
    stream = flac_without_length(folder / "spk00" / "spk00_0000.flac", steady_voice(SPEAKER_F0S[0], 0.5, seed=1))
    (folder / "spk00" / "spk00_0000.wav").unlink()
    pool = SourcePool.from_folder(folder, SAMPLE_RATE, cache_dir=tmp_path / "cache")
    index = pool.files.rel_paths.index(stream.relative_to(folder).as_posix())
    assert pool.files.num_frames[index] == SAMPLE_RATE // 2
    assert sf.info(pool.files.paths[index]).frames == SAMPLE_RATE // 2  # a copy whose header says so
