"""A corpus from a folder of single-speaker recordings (speechsep.data.speaker_corpus, hparams/recordings.yaml):
talkers split by speaker, deterministically and disjointly; fixed valid/test mixtures, never rewritten; one line
for each kind of bad folder; made whole or not at all, and a training run on it resumes after a kill."""

import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from speechsep.data.speaker_corpus import (
    RECORD_FILE,
    TRAIN_SOURCES,
    CorpusOptions,
    SpeakerCorpusError,
    prepare_for_run,
    prepare_speaker_corpus,
    split_speakers,
)
from tests.helpers import REPO, SAMPLE_RATE, TINY_CONVTASNET, read_csv, steady_voice

OPTIONS = CorpusOptions(valid_mixtures=4, test_mixtures=6, min_speaker_seconds=1.0)


def write_talkers(root, num_talkers=12, files=2, seconds=0.8, flat=False):
    """`num_talkers` talkers with `files` recordings each: `talkerNN/NN_k.wav`, or FSDD-like flat `k_talkerNN_0.wav`."""
    for talker in range(num_talkers):
        for index in range(files):
            name = f"{index}_talker{talker:02d}_0.wav" if flat else f"talker{talker:02d}/{talker:02d}_{index}.wav"
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            audio = steady_voice(110.0 + 23.0 * talker, seconds, seed=100 * talker + index)
            sf.write(path, audio, SAMPLE_RATE)
    return root


def split_of(corpus) -> dict[str, set[str]]:
    split = {}
    for row in read_csv(corpus / "speakers.csv"):
        split.setdefault(row["split"], set()).add(row["speaker"])
    return split


def talkers_in_mixtures(corpus, name) -> set[str]:
    """The talkers named in the mixture files' names (index_talkerA_talkerB.wav)."""
    return {talker for path in (corpus / name / "mixture").iterdir() for talker in path.stem.split("_")[1:]}


def test_the_split_is_by_speaker_deterministic_disjoint_and_independent_of_the_order_found():
    talkers = [f"s{k}" for k in range(40)]
    split = split_speakers(talkers, OPTIONS)
    shuffled = talkers[:]
    random.Random(0).shuffle(shuffled)
    assert split_speakers(shuffled, OPTIONS) == split
    assert [len(split[name]) for name in ("valid", "test", "train")] == [6, 8, 26]  # 0.15 and 0.2 of 40
    assert set().union(*split.values()) == set(talkers)
    assert sum(len(names) for names in split.values()) == len(talkers)  # disjoint
    other_seed = split_speakers(talkers, CorpusOptions(seed=1))
    assert other_seed["test"] != split["test"]
    # Few talkers: each held-out split still gets the num_spks a mixture needs
    assert [len(names) for names in split_speakers(talkers[:7], OPTIONS).values()] == [2, 2, 3]


def test_the_corpus_holds_held_out_talkers_only_in_valid_and_test_and_training_links_to_the_rest(tmp_path):
    source = write_talkers(tmp_path / "recordings")
    corpus = prepare_speaker_corpus(source, tmp_path / "corpus", OPTIONS)
    split = split_of(corpus)
    assert {name: len(talkers) for name, talkers in split.items()} == {"valid": 2, "test": 2, "train": 8}
    assert talkers_in_mixtures(corpus, "valid") <= split["valid"]
    assert talkers_in_mixtures(corpus, "test") <= split["test"]
    assert {path.name for path in (corpus / TRAIN_SOURCES).iterdir()} == split["train"]
    links = list((corpus / TRAIN_SOURCES).rglob("*.wav"))
    assert len(links) == 16 and all(link.is_symlink() and link.resolve().is_file() for link in links)
    assert len(list((corpus / "test" / "mixture").iterdir())) == 6
    first = sorted((corpus / "test" / "mixture").iterdir())[0].name  # the sum of its sources, to 16-bit rounding
    signals = [sf.read(corpus / "test" / name / first)[0] for name in ("mixture", "source1", "source2")]
    assert np.abs(signals[0] - signals[1] - signals[2]).max() < 1e-3
    assert not list(tmp_path.glob(".*partial"))


def test_a_rerun_reuses_the_mixtures_without_rewriting_them_and_another_folder_gets_the_same_ones(tmp_path):
    source = write_talkers(tmp_path / "recordings")
    corpus = prepare_speaker_corpus(source, tmp_path / "corpus", OPTIONS)
    written = {path: (path.lstat().st_ino, path.lstat().st_mtime_ns) for path in corpus.rglob("*.wav")}
    for path in source.rglob("*.wav"):  # a copy without its times, a touch: the same recordings
        os.utime(path, ns=(1, 1))
    prepare_speaker_corpus(source, tmp_path / "corpus", OPTIONS)
    assert {path: (path.lstat().st_ino, path.lstat().st_mtime_ns) for path in corpus.rglob("*.wav")} == written
    other = prepare_speaker_corpus(source, tmp_path / "other", OPTIONS)  # another run: the very same mixtures
    for path in (corpus / "test").rglob("*.wav"):
        assert (other / path.relative_to(corpus)).read_bytes() == path.read_bytes()


def test_a_corpus_of_other_recordings_or_options_or_a_folder_that_is_no_corpus_is_refused_and_kept(tmp_path):
    source = write_talkers(tmp_path / "recordings")
    corpus = prepare_speaker_corpus(source, tmp_path / "corpus", OPTIONS)
    record = (corpus / RECORD_FILE).read_text()
    with pytest.raises(SpeakerCorpusError, match=r"\(options.test_mixtures: 6 -> 7\).*give another corpus_folder"):
        prepare_speaker_corpus(source, corpus, CorpusOptions(valid_mixtures=4, test_mixtures=7, min_speaker_seconds=1))
    sf.write(source / "talker00" / "new.wav", steady_voice(110.0, 1.0, seed=9), SAMPLE_RATE)
    with pytest.raises(
        SpeakerCorpusError, match=r"other recordings or options \(source_folder: 24 -> 25 audio files\)"
    ):
        prepare_speaker_corpus(source, corpus, OPTIONS)
    assert (corpus / RECORD_FILE).read_text() == record
    mine = tmp_path / "my_data"
    (mine / "keep").mkdir(parents=True)
    with pytest.raises(SpeakerCorpusError, match=r"exists but holds no speaker corpus"):
        prepare_speaker_corpus(source, mine, OPTIONS)
    assert (mine / "keep").is_dir()
    (mine / RECORD_FILE).write_text('{"options": {}}')  # a record of another version, or damaged
    with pytest.raises(SpeakerCorpusError, match=r"its corpus.json is not a record this version reads"):
        prepare_speaker_corpus(source, mine, OPTIONS)


def test_speakers_from_a_regex_on_flat_file_names_and_valid_test_talkers_from_folders_of_their_own(tmp_path):
    options = CorpusOptions(
        speaker_regex=r"^\d+_([a-z0-9]+)_", valid_mixtures=3, test_mixtures=3, min_speaker_seconds=1
    )
    train = write_talkers(tmp_path / "train", num_talkers=4, flat=True)
    held_out = write_talkers(tmp_path / "held_out", num_talkers=8, flat=True)
    for talker in range(4):  # other names than the training talkers'
        for path in held_out.glob(f"*_talker{talker:02d}_*"):
            path.rename(path.with_name(path.name.replace("talker", "other")))
    corpus = prepare_speaker_corpus(train, tmp_path / "corpus", options, test_source_folder=held_out)
    split = split_of(corpus)
    assert split["train"] | split["valid"] == {f"talker{k:02d}" for k in range(4)}
    assert len(split["valid"]) == 2 and len(split["test"]) == 8
    overlapping = write_talkers(tmp_path / "overlapping", num_talkers=3, flat=True)
    with pytest.raises(SpeakerCorpusError, match=r"talker\(s\) talker00, .* in both source_folder and valid_source"):
        prepare_speaker_corpus(train, tmp_path / "corpus2", options, valid_source_folder=overlapping)
    with pytest.raises(SpeakerCorpusError, match=r"test_source_folder .*held_out is inside valid_source_folder"):
        prepare_speaker_corpus(train, tmp_path / "corpus3", options, held_out, held_out)
    with pytest.raises(SpeakerCorpusError, match=r"valid_source_folder .*train/v is inside source_folder"):
        prepare_speaker_corpus(train, tmp_path / "corpus4", options, write_talkers(train / "v", 3, flat=True))
    assert not list(tmp_path.glob("corpus[234]"))


def test_bad_recordings_folders_are_one_line_each(tmp_path, caplog):
    def fails(folder, match, options=OPTIONS):
        with pytest.raises(SpeakerCorpusError, match=match) as error:
            prepare_speaker_corpus(folder, tmp_path / "corpus", options)
        assert "\n" not in str(error.value)
        assert not (tmp_path / "corpus").exists() and not list(tmp_path.glob(".*partial"))

    fails(tmp_path / "missing", r"missing does not exist or is not a folder")
    (tmp_path / "empty" / "talker").mkdir(parents=True)
    (tmp_path / "empty" / "talker" / "notes.txt").write_text("no audio")
    fails(tmp_path / "empty", r"No .wav/.flac/.ogg files under .*empty")
    one = write_talkers(tmp_path / "one", num_talkers=1)
    fails(
        one,
        r"source_folder .*one gives the \w+ split 1 talker\(s\).* need 2 \(2 talkers for each split it is divided into\)",
    )
    flat = write_talkers(tmp_path / "flat", num_talkers=6, flat=True)
    fails(flat, r"0_talker00_0.wav is not in a speaker folder: .*or give speaker_regex")
    regex = CorpusOptions(speaker_regex=r"^([0-9]+)-")
    fails(flat, r"0_talker00_0.wav: speaker_regex '\^\(\[0-9\]\+\)-' does not match it, or its first group", regex)
    fails(
        flat,
        r"0_talker00_0.wav: .* or its first group \(the talker\) matches nothing",
        CorpusOptions(speaker_regex="^(x)?"),
    )
    broken = write_talkers(tmp_path / "broken", num_talkers=6)
    (broken / "talker03" / "bad.wav").write_bytes(b"RIFF not really a wave file")
    fails(broken, r"talker03/bad.wav.* \(in source_folder\): remove or replace it")

    short = write_talkers(tmp_path / "short", num_talkers=7)
    for path in (short / "talker05").iterdir():
        sf.write(path, steady_voice(200.0, 0.2, seed=1), SAMPLE_RATE)
    with caplog.at_level(logging.WARNING):
        corpus = prepare_speaker_corpus(short, tmp_path / "short_corpus", OPTIONS)
    assert "Leaving out 1 talker(s)" in caplog.text and "less than 1 s of audio" in caplog.text
    assert split_of(corpus)["left out"] == {"talker05"}  # listed, with its seconds, in no split
    assert "talker05" not in split_of(corpus)["train"] | split_of(corpus)["valid"] | split_of(corpus)["test"]
    assert json.loads((corpus / RECORD_FILE).read_text())["contents"]["talkers"] == {"valid": 2, "test": 2, "train": 2}


MAKE_CORPUS = """
import sys
from speechsep.data.speaker_corpus import CorpusOptions, prepare_speaker_corpus
prepare_speaker_corpus(sys.argv[1], sys.argv[2], CorpusOptions(valid_mixtures=2, test_mixtures=100000, min_speaker_seconds=1))
"""


def test_a_corpus_killed_while_being_made_leaves_nothing_that_looks_finished_and_the_next_run_makes_it(tmp_path):
    source = write_talkers(tmp_path / "recordings", num_talkers=6)
    corpus = tmp_path / "corpus"
    process = subprocess.Popen([sys.executable, "-c", MAKE_CORPUS, str(source), str(corpus)], cwd=REPO)
    partial_test = tmp_path / ".corpus.partial" / "test" / "mixture"
    while not (partial_test.is_dir() and len(os.listdir(partial_test)) >= 3):  # a few test mixtures written
        assert process.poll() is None, "the corpus was made before it could be killed"
        time.sleep(0.01)  # a poll, not a timing: the kill waits for the files
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not corpus.exists()
    corpus = prepare_speaker_corpus(source, corpus, OPTIONS)
    assert len(list((corpus / "test" / "mixture").iterdir())) == 6
    assert not list(tmp_path.glob(".*partial"))


@pytest.mark.slow
def test_training_on_a_recordings_folder_resumes_after_a_kill_without_remaking_its_corpus(tmp_path):
    from tests.test_interruptions import final_brain_state, interrupt_after, rerun

    source = write_talkers(tmp_path / "recordings", num_talkers=8, seconds=1.0)
    output = tmp_path / "run"
    values = {
        "source_folder": source,
        "output_folder": output,
        **TINY_CONVTASNET,
        "N_epochs": 1,
        "batch_size": 1,
        "dm_epoch_len": 20,
        "training_signal_len": 4000,
        "train_budget_minutes": "null",
        "valid_mixtures": 2,
        "test_mixtures": 2,
        "min_speaker_seconds": 1,
        "ckpt_interval_steps": 5,
        "precision": "fp32",
    }
    command = [sys.executable, "train.py", "hparams/recordings.yaml", *[f"--{k}={v}" for k, v in values.items()]]
    process = interrupt_after(command, 12, lambda pid: os.killpg(pid, signal.SIGKILL), steps=20)
    assert process.returncode == -signal.SIGKILL
    test_mixtures = {path: path.stat().st_mtime_ns for path in (output / "corpus" / "test").rglob("*.wav")}
    saved_step = final_brain_state(output)["step"]

    rerun(command)
    assert f"Resuming epoch 1 after batch {saved_step}" in (output / "log.txt").read_text()
    assert final_brain_state(output)["optimizer_step"] == 20
    assert {path: path.stat().st_mtime_ns for path in (output / "corpus" / "test").rglob("*.wav")} == test_mixtures
    results = read_csv(output / "test_results.csv")
    assert len(results) == 2


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "--speaker_regex=^[0-9]+_",
            r"speaker_regex is '\^\[0-9\]\+_'; expected null or a regular expression with a group",
        ),
        ("--speaker_regex=([", r"speaker_regex is '\(\['; expected null or a regular expression"),
        ("--test_speakers=1.5", r"test_speakers is 1.5; expected a fraction of the talkers, between 0 and 1"),
        ("--valid_mixtures=0", r"valid_mixtures is 0; expected a whole number of mixtures, at least 1"),
        ("--source_folder=/no/such/folder", r"source_folder does not exist or is not a folder: /no/such/folder"),
        ("--dynamic_mixing=False", r"the corpus holds no training mixtures\): set dynamic_mixing=True"),
        ("--corpus_folder=SOURCE/corpus", r"corpus_folder .*recordings/corpus is inside source_folder"),
        ("--output_folder=SOURCE/run", r"folder .*recordings/run(/corpus)? is inside source_folder"),
    ],
)
def test_the_recordings_config_refuses_bad_values_in_one_line_before_anything_is_written(tmp_path, override, message):
    source = write_talkers(tmp_path / "recordings", num_talkers=6)
    options = [f"--source_folder={source}", f"--output_folder={tmp_path / 'run'}"]
    options = [option for option in options if option.split("=")[0] != override.split("=")[0]]
    options.append(override.replace("SOURCE", str(source)))
    command = [sys.executable, "train.py", "hparams/recordings.yaml", *options]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert re.search(message, last_line), result.stderr[-2000:]
    assert not (tmp_path / "run" / "corpus").exists() and not {"corpus", "run"} & set(os.listdir(source))


def test_long_recordings_give_held_out_mixtures_from_stretches_of_them_without_being_read_whole(tmp_path, monkeypatch):
    from speechsep.data import recorded_mixtures

    source = write_talkers(tmp_path / "talks", num_talkers=6, files=1, seconds=40.0)
    frames_read = []
    read = recorded_mixtures.sf.read
    monkeypatch.setattr(
        recorded_mixtures.sf,
        "read",
        lambda *args, **kwargs: frames_read.append(kwargs["frames"]) or read(*args, **kwargs),
    )
    corpus = prepare_speaker_corpus(source, tmp_path / "corpus", OPTIONS)
    assert frames_read and max(frames_read) == 30 * SAMPLE_RATE
    durations = [sf.info(path).duration for path in (corpus / "test" / "mixture").iterdir()]
    assert len(durations) == 6 and all(3.0 <= duration <= 5.0 for duration in durations)


def test_two_runs_making_one_corpus_at_once_both_use_the_one_made_whole(tmp_path):
    source = write_talkers(tmp_path / "recordings", num_talkers=6)
    corpus = tmp_path / "corpus"
    script = MAKE_CORPUS.replace("test_mixtures=100000", "test_mixtures=40")
    command = [sys.executable, "-c", script, str(source), str(corpus)]
    processes = [subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [process.communicate(timeout=120)[1] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], errors
    assert len(list((corpus / "test" / "mixture").iterdir())) == 40
    assert sorted(path.name for path in tmp_path.iterdir()) == ["corpus", "recordings"]


def test_linked_speaker_folders_are_followed_and_hidden_silent_or_other_format_files_left_out(tmp_path, caplog):
    source = write_talkers(tmp_path / "recordings", num_talkers=6)
    elsewhere = write_talkers(tmp_path / "elsewhere", num_talkers=8)
    (source / "talker07").symlink_to(elsewhere / "talker07", target_is_directory=True)
    hidden = source / ".Trash-1000" / "files"
    hidden.mkdir(parents=True)
    sf.write(hidden / "old.wav", steady_voice(300.0, 2.0, seed=3), SAMPLE_RATE)
    sf.write(source / "talker01" / "silent.wav", np.zeros(8000, dtype=np.float32), SAMPLE_RATE)
    (source / "talker02" / "take.mp3").write_bytes(b"ID3")
    with caplog.at_level(logging.WARNING):
        corpus = prepare_speaker_corpus(source, tmp_path / "corpus", OPTIONS)
    talkers = set().union(*split_of(corpus).values())
    assert talkers == {f"talker{k:02d}" for k in (0, 1, 2, 3, 4, 5, 7)}
    assert "Leaving out 1 silent file(s)" in caplog.text and "silent.wav" in caplog.text
    assert "Leaving out 1 file(s)" in caplog.text and "take.mp3: convert them" in caplog.text
    nan = write_talkers(tmp_path / "nan", num_talkers=6)
    sf.write(nan / "talker04" / "nan.wav", np.full(800, np.nan, dtype=np.float32), SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(SpeakerCorpusError, match=r"talker04/nan.wav.*\(in source_folder\): remove or replace it"):
        prepare_speaker_corpus(nan, tmp_path / "nan_corpus", OPTIONS)


def test_a_corpus_that_lost_files_is_refused_and_an_empty_folder_made_beforehand_is_used(tmp_path):
    source = write_talkers(tmp_path / "recordings")
    (tmp_path / "corpus").mkdir()
    corpus = prepare_speaker_corpus(source, tmp_path / "corpus", OPTIONS)
    next((corpus / "test" / "source2").iterdir()).unlink()
    with pytest.raises(
        SpeakerCorpusError,
        match=r"does not hold what it was made with \(test/source2 holds 5 files, made with 6\): delete it",
    ):
        prepare_speaker_corpus(source, corpus, OPTIONS)
    shutil.rmtree(corpus / TRAIN_SOURCES / sorted(split_of(corpus)["train"])[0])
    with pytest.raises(SpeakerCorpusError, match=r"\(train_sources holds 14 files, made with 16\)"):
        prepare_speaker_corpus(source, corpus, OPTIONS)


def run_hparams(tmp_path, source, **overrides) -> dict:
    values = {"source_folder": str(source), "corpus_folder": str(tmp_path / "run" / "corpus")}
    values |= {"save_folder": str(tmp_path / "run" / "save"), "output_folder": str(tmp_path / "run")}
    values |= {"valid_source_folder": None, "test_source_folder": None, "corpus_seed": 0}
    values |= {key: getattr(OPTIONS, key) for key in ("num_spks", "sample_rate", "speaker_regex")}
    values |= {key: getattr(OPTIONS, key) for key in ("valid_speakers", "test_speakers", "min_speaker_seconds")}
    return values | {"valid_mixtures": 4, "test_mixtures": 6} | overrides


def test_checkpoints_are_tied_to_their_corpus_and_a_test_uses_the_corpus_as_it_is(tmp_path):
    source = write_talkers(tmp_path / "recordings")
    prepare_for_run(run_hparams(tmp_path, source), test_only=False)
    (tmp_path / "run" / "save" / "CKPT+1").mkdir()
    sf.write(source / "talker00" / "new.wav", steady_voice(110.0, 1.0, seed=9), SAMPLE_RATE)
    prepare_for_run(run_hparams(tmp_path, source), test_only=True)  # the test mixtures are fixed: used as they are
    with pytest.raises(SpeakerCorpusError, match=r"\(options.test_mixtures: 6 -> 50\)"):
        prepare_for_run(run_hparams(tmp_path, source, test_mixtures=50), test_only=True)
    with pytest.raises(SpeakerCorpusError, match=r"other recordings or options"):
        prepare_for_run(run_hparams(tmp_path, source), test_only=False)
    shutil.rmtree(tmp_path / "run" / "corpus")  # as that error suggests: the new corpus splits the talkers anew
    with pytest.raises(
        SpeakerCorpusError, match=r"checkpoints in .*run were trained on another corpus .*another output"
    ):
        prepare_for_run(run_hparams(tmp_path, source, corpus_seed=1), test_only=False)
