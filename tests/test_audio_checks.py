"""One module decides whether audio is usable (speechsep.data.audio_checks), and every way in asks it."""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

import separate
from prepare_data import prepare_data
from speechsep.data.audio_checks import (
    AudioCheckError,
    AudioRequirements,
    check_header,
    file_problem,
    read_blocks,
    read_header,
)
from speechsep.data.layouts import DataPreparationError, detect_layout
from speechsep.data.manifests import ManifestError, check_manifest_audio, separation_dataset
from speechsep.data.resample import bounded_ratio, resample
from speechsep.inference.files import read_mixture
from speechsep.models.filterbank import shortest_input
from speechsep.training.preflight import check_manifests
from tests.corpus_trees import make_custom, make_librimix, make_wsj0mix
from tests.helpers import REPO, TINY_CONVTASNET, flac_without_length, tiny_hparams

RATE = 8000


def tone(num_samples: int, sample_rate: int = RATE) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * 440 * np.arange(num_samples) / sample_rate)).astype(np.float32)


# ------------------------------------------------------------------ the module
def test_dangling_link_fifo_and_folder_are_named_without_opening_them(tmp_path):
    os.symlink(tmp_path / "gone.wav", tmp_path / "link.wav")
    os.mkfifo(tmp_path / "pipe.wav")
    (tmp_path / "dir.wav").mkdir()
    assert file_problem(tmp_path / "link.wav") == f"broken symbolic link (to {tmp_path / 'gone.wav'})"
    assert file_problem(tmp_path / "pipe.wav").startswith("not a regular file")
    assert file_problem(tmp_path / "dir.wav").startswith("a folder")
    with pytest.raises(AudioCheckError, match=f"{tmp_path / 'pipe.wav'}: not a regular file"):
        read_header(tmp_path / "pipe.wav")  # would block forever if it were opened


def test_flac_without_a_length_in_its_header_is_measured_and_read_whole(tmp_path):
    signal = tone(10007)
    path = flac_without_length(tmp_path / "stream.flac", signal)
    assert sf.info(str(path)).frames > 1 << 62  # what libsndfile says of it
    assert read_header(path).frames == len(signal)
    read = np.concatenate(list(read_blocks(path, block_frames=4096)))[:, 0]
    np.testing.assert_allclose(read, signal, atol=1e-4)


def test_training_reads_a_crop_and_the_whole_of_a_flac_without_a_length_in_a_custom_tree(tmp_path):
    corpus = make_custom(tmp_path / "data", per_split=2)
    signals = {folder: tone(RATE // 2) * (k + 1) for k, folder in enumerate(("mixture", "source1", "source2"))}
    for folder, signal in signals.items():
        flac_without_length(corpus / "train" / folder / "zz.flac", signal)
    prepare_data(corpus, tmp_path / "save")
    crops = separation_dataset(str(tmp_path / "save/train.csv"), str(corpus), 2, segment_len=1000, random_crop=True)
    wholes = separation_dataset(str(tmp_path / "save/train.csv"), str(corpus), 2)
    zz = [row for row in range(len(wholes)) if wholes[row]["id"].endswith("zz")][0]
    crop, whole = crops[zz], wholes[zz]
    np.testing.assert_allclose(whole["s2_sig"].numpy(), signals["source2"], atol=1e-4)
    start = int(
        np.argmin([np.abs(signals["mixture"][i : i + 1000] - crop["mix_sig"].numpy()).max() for i in range(3001)])
    )
    for name, folder in (("mix", "mixture"), ("s1", "source1"), ("s2", "source2")):
        np.testing.assert_allclose(crop[f"{name}_sig"].numpy(), signals[folder][start : start + 1000], atol=1e-4)


def test_file_name_that_is_not_utf8_is_read(tmp_path):
    path = os.path.join(os.fsencode(tmp_path), b"caf\xe9.wav").decode(errors="surrogateescape")
    sf.write(tmp_path / "plain.wav", tone(800), RATE)
    os.rename(tmp_path / "plain.wav", path)
    assert read_header(path).frames == 800


def test_requirements_refuse_rate_channels_and_length_naming_the_file(tmp_path):
    sf.write(tmp_path / "a.wav", tone(100), RATE)
    sf.write(tmp_path / "stereo.wav", np.stack([tone(100)] * 2, axis=1), RATE)
    with pytest.raises(AudioCheckError, match=f"{tmp_path / 'a.wav'} is sampled at 8000 Hz, the config says 16000"):
        check_header(tmp_path / "a.wav", AudioRequirements(sample_rate=16000))
    with pytest.raises(AudioCheckError, match="stereo.wav has 2 channels, expected mono"):
        check_header(tmp_path / "stereo.wav", AudioRequirements())
    with pytest.raises(AudioCheckError, match="a.wav is 100 samples long, shorter than the model's shortest input"):
        check_header(tmp_path / "a.wav", AudioRequirements(min_samples=101))


def test_shortest_input_is_what_the_model_accepts(tmp_path):
    modules = tiny_hparams(tmp_path, "convtasnet.yaml")["modules"]
    shortest = shortest_input(modules["encoder"], modules["masknet"])
    assert shortest >= modules["encoder"].conv1d.kernel_size[0]
    modules["masknet"](modules["encoder"](torch.zeros(1, shortest)))
    with pytest.raises(RuntimeError):
        modules["masknet"](modules["encoder"](torch.zeros(1, shortest - 1)))


@pytest.mark.parametrize("orig, new", [(11127, 8000), (44101, 8000), (8000, 44101)])
def test_resampling_between_rates_with_a_tiny_common_divisor_uses_a_small_filter(orig, new):
    ratio = bounded_ratio(orig, new)
    assert max(ratio.numerator, ratio.denominator) <= 1000
    assert float(ratio) == pytest.approx(new / orig, rel=1e-5)
    resampled = resample(torch.from_numpy(tone(orig, orig)), orig, new)
    assert resampled.shape == (new,)
    reference = torch.from_numpy(tone(new, new))
    assert torch.allclose(resampled[200:-200], reference[200:-200], atol=0.01)


# ------------------------------------------------------------------ prepare_data.py's trees
def test_dangling_link_in_a_tree_is_reported_and_listed_with_skip_bad_files(tmp_path):
    corpus = make_wsj0mix(tmp_path / "data", per_split=2)
    mixture = corpus / "wav8k/min/tt/mix/tt_001_mix.wav"
    mixture.unlink()
    mixture.symlink_to(tmp_path / "elsewhere.wav")
    with pytest.raises(DataPreparationError, match=f"{mixture}: broken symbolic link"):
        prepare_data(corpus, tmp_path / "save")
    prepare_data(corpus, tmp_path / "skip", skip_bad_files=True)
    assert f"{mixture}," in (tmp_path / "skip" / "skipped_files.csv").read_text()


def test_dangling_link_of_a_mixture_without_sources_is_named_as_the_broken_link(tmp_path):
    corpus = make_wsj0mix(tmp_path / "data", per_split=2)
    mixture = corpus / "wav8k/min/tr/mix/zz_mix.wav"
    mixture.symlink_to(tmp_path / "nonexistent.wav")
    with pytest.raises(DataPreparationError, match=f"^{mixture}: broken symbolic link"):
        prepare_data(corpus, tmp_path / "save")


def tree_with_a_10_sample_test_mixture(tmp_path):
    corpus = make_wsj0mix(tmp_path / "data", per_split=2)
    for folder in ("mix", "s1", "s2"):
        path = corpus / "wav8k/min/tt" / folder / "tt_000_mix.wav"
        sf.write(path, sf.read(path, dtype="float32")[0][:10], RATE, subtype="FLOAT")
    return corpus


def test_mixture_shorter_than_the_models_shortest_input_is_refused(tmp_path):
    corpus = tree_with_a_10_sample_test_mixture(tmp_path)
    with pytest.raises(DataPreparationError, match=r"tt_000_mix.wav is 10 samples long, shorter than .*\(32 samples\)"):
        prepare_data(corpus, tmp_path / "save", min_samples=32)


def run_train(tmp_path, corpus, *options):
    command = [sys.executable, "train.py", "hparams/convtasnet.yaml", f"--data_folder={corpus}", "--noprogressbar"]
    command += [f"--output_folder={tmp_path / 'run'}", *options]
    command += [f"--{key}={value}" for key, value in TINY_CONVTASNET.items()]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode != 0
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_train_refuses_a_test_mixture_shorter_than_its_models_shortest_input_before_training(tmp_path):
    corpus = tree_with_a_10_sample_test_mixture(tmp_path)
    mixture = corpus / "wav8k/min/tt/mix/tt_000_mix.wav"
    assert run_train(tmp_path, corpus) == (
        f"error: {mixture} is 10 samples long, shorter than the model's shortest input (32 samples)"
    )
    assert not list((tmp_path / "run" / "save").glob("CKPT+*"))


def test_tree_with_the_folders_of_two_layouts_is_refused_naming_both(tmp_path, caplog):
    corpus = make_wsj0mix(tmp_path / "data", per_split=1)
    assert detect_layout(corpus) == "wsj0mix"
    make_librimix(tmp_path / "libri", per_split=1)
    (tmp_path / "libri/Libri2Mix/wav8k/min").rename(corpus / "wav8k/max")
    with pytest.raises(DataPreparationError, match=r"2 layouts: .*librimix \(.*max\) and wsj0mix \(.*min\)"):
        prepare_data(corpus, tmp_path / "save")


def test_chosen_layout_is_logged(tmp_path, caplog):
    corpus = make_wsj0mix(tmp_path / "data", per_split=1)
    with caplog.at_level("INFO"):
        prepare_data(corpus, tmp_path / "save")
    assert f"{corpus} is a wsj0mix tree" in caplog.text


# ------------------------------------------------------------------ manifests given with skip_prep
def write_manifest(path, rows):
    path.write_text("ID,duration,mix_wav,s1_wav,s2_wav\n" + "".join(",".join(row) + "\n" for row in rows))
    return path


def row(example_id, name="tt_000_mix", split="tt"):
    return [example_id, "1.0"] + [f"$data_root/wav8k/min/{split}/{f}/{name}.wav" for f in ("mix", "s1", "s2")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_wsj0mix(tmp_path_factory.mktemp("manifests"), per_split=2)


AT_RATE = AudioRequirements(sample_rate=RATE)


def manifest_fails(corpus, manifest, match, requirements=AT_RATE, **options):
    with pytest.raises(ManifestError, match=match) as error:
        check_manifest_audio(manifest, str(corpus), 2, False, requirements, **options)
    assert "\n" not in str(error.value)


def test_manifest_at_another_rate_than_the_config_names_the_line(corpus, tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", [row("a")])
    manifest_fails(
        corpus,
        manifest,
        r"m.csv line 2 \(ID a\): .*mix.wav is sampled at 8000 Hz, the config says 16000",
        AudioRequirements(sample_rate=16000),
    )


def test_manifest_source_shorter_than_its_mixture_names_the_line(corpus, tmp_path):
    data = tmp_path / "data"
    for folder in ("mix", "s1", "s2"):
        signal = sf.read(corpus / "wav8k/min/tt" / folder / "tt_000_mix.wav", dtype="float32")[0]
        (data / "wav8k/min/tt" / folder).mkdir(parents=True)
        sf.write(data / "wav8k/min/tt" / folder / "x.wav", signal[:-5] if folder == "s2" else signal, RATE)
    manifest = write_manifest(tmp_path / "m.csv", [row("a", "x")])
    manifest_fails(data, manifest, r"line 2 \(ID a\): .*s2/x.wav has \d+ samples, its mixture")


def test_manifest_with_a_stereo_mixture_names_the_line(corpus, tmp_path):
    data = tmp_path / "data"
    for folder in ("mix", "s1", "s2"):
        signal = sf.read(corpus / "wav8k/min/tt" / folder / "tt_000_mix.wav", dtype="float32")[0]
        (data / "wav8k/min/tt" / folder).mkdir(parents=True)
        sf.write(
            data / "wav8k/min/tt" / folder / "x.wav", np.stack([signal] * 2, 1) if folder == "mix" else signal, RATE
        )
    manifest = write_manifest(tmp_path / "m.csv", [row("a", "x")])
    manifest_fails(data, manifest, r"line 2 \(ID a\): .*mix/x.wav has 2 channels, expected mono")


@pytest.mark.parametrize("example_id", ["a/b", "../x"])
def test_test_manifest_id_that_would_write_outside_the_audio_folder_is_refused(corpus, tmp_path, example_id):
    manifest = write_manifest(tmp_path / "m.csv", [row("a"), row(example_id, "tt_001_mix")])
    check_manifest_audio(manifest, str(corpus), 2, False, AT_RATE)  # IDs name nothing
    manifest_fails(corpus, manifest, rf"line 3 \(ID {example_id}\): ID .*path separator", ids_name_files=True)


# ------------------------------------------------------------------ separate.py's inputs
@pytest.fixture(scope="module")
def tiny_separator(tmp_path_factory):
    """A stand-in for SpeechBrain's separator around an untrained tiny Conv-TasNet (its mods and separate_batch)."""
    modules = tiny_hparams(tmp_path_factory.mktemp("model"), "convtasnet.yaml")["modules"]

    def separate_batch(mixture):
        with torch.no_grad():
            encoded = modules["encoder"](mixture)
            masks = modules["masknet"](encoded)
            estimates = torch.stack([modules["decoder"](encoded * mask) for mask in masks], dim=-1)
        return torch.nn.functional.pad(estimates, (0, 0, 0, mixture.shape[1] - estimates.shape[1]))

    hparams = SimpleNamespace(sample_rate=RATE, num_spks=2)
    mods = SimpleNamespace(encoder=modules["encoder"], masknet=modules["masknet"])
    return SimpleNamespace(separate_batch=separate_batch, hparams=hparams, mods=mods)


def run_separate(monkeypatch, separator, output_dir, *inputs) -> int:
    monkeypatch.setattr(separate, "load_separator", lambda *args, **kwargs: separator)
    arguments = ["--model", "stand-in", "--output-dir", str(output_dir), "--no-progress", "--keep-all-tracks"]
    return separate.main([*arguments, *map(str, inputs)])  # every track: the stand-in's are copies of one another


def error_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.getMessage().startswith("error:")]


def test_each_unusable_input_is_one_line_and_the_others_are_separated(tiny_separator, tmp_path, monkeypatch, caplog):
    good = tmp_path / "good.wav"
    sf.write(good, tone(RATE // 2), RATE)
    sf.write(tmp_path / "short.wav", tone(10), RATE)
    os.mkfifo(tmp_path / "pipe.wav")
    (tmp_path / "link.wav").symlink_to(tmp_path / "gone.wav")
    inputs = [tmp_path / "short.wav", tmp_path / "pipe.wav", tmp_path / "link.wav", good]
    assert run_separate(monkeypatch, tiny_separator, tmp_path / "out", *inputs) == 1
    errors = error_lines(caplog)
    assert (
        errors[0] == f"error: {tmp_path / 'pipe.wav'}: not a regular file (a FIFO, socket or device), so it is not read"
    )
    assert errors[1] == f"error: {tmp_path / 'link.wav'}: broken symbolic link (to {tmp_path / 'gone.wav'})"
    assert errors[2].startswith(f"error: {tmp_path / 'short.wav'}: 10 samples at the model's 8000 Hz, shorter than")
    assert len(errors) == 3
    assert (tmp_path / "out" / "good_s2.wav").is_file()


def test_one_file_given_under_two_spellings_is_separated_once(tiny_separator, tmp_path, monkeypatch, caplog):
    (tmp_path / "sub").mkdir()
    sf.write(tmp_path / "a.wav", tone(RATE // 2), RATE)
    inputs = [tmp_path / "a.wav", f"{tmp_path}/sub/../a.wav"]
    assert run_separate(monkeypatch, tiny_separator, tmp_path / "out", *inputs) == 0
    assert error_lines(caplog) == []


def test_an_input_that_fails_unexpectedly_is_one_line_and_the_others_go_on(
    tiny_separator, tmp_path, monkeypatch, caplog
):
    for name in ("a", "b"):
        sf.write(tmp_path / f"{name}.wav", tone(RATE // 2), RATE)
    calls = []

    def separate_batch(mixture):
        calls.append(mixture.shape)
        if len(calls) == 1:
            raise MemoryError("cannot allocate 5 GB")
        return tiny_separator.separate_batch(mixture)

    failing = SimpleNamespace(**{**vars(tiny_separator), "separate_batch": separate_batch})
    assert run_separate(monkeypatch, failing, tmp_path / "out", tmp_path / "a.wav", tmp_path / "b.wav") == 1
    assert error_lines(caplog) == [f"error: {tmp_path / 'a.wav'}: MemoryError: cannot allocate 5 GB"]
    assert (tmp_path / "out" / "b_s1.wav").is_file()


def test_flac_without_a_length_is_read_whole_for_separation(tmp_path):
    path = flac_without_length(tmp_path / "stream.flac", tone(RATE // 2))
    samples, sample_rate, channels = read_mixture(path)
    assert (len(samples), sample_rate, channels) == (RATE // 2, RATE, 1)


def test_input_whose_name_is_not_utf8_is_separated(tiny_separator, tmp_path, monkeypatch, caplog):
    name = os.path.join(os.fsencode(tmp_path), b"caf\xe9.wav").decode(errors="surrogateescape")
    sf.write(tmp_path / "plain.wav", tone(RATE // 2), RATE)
    os.rename(tmp_path / "plain.wav", name)
    code = run_separate(monkeypatch, tiny_separator, tmp_path / "out", name)
    assert error_lines(caplog) == [] and code == 0


def tree_with_a_name_that_is_not_utf8(tmp_path):
    corpus = make_wsj0mix(tmp_path / "data", per_split=2)
    for folder in ("mix", "s1", "s2"):
        base = os.fsencode(corpus / "wav8k/min/cv" / folder)
        os.rename(os.path.join(base, b"cv_000_mix.wav"), os.path.join(base, b"caf\xe9.wav"))
    return corpus


def test_tree_file_whose_name_is_not_utf8_is_one_line(tmp_path):
    corpus = tree_with_a_name_that_is_not_utf8(tmp_path)
    with pytest.raises(DataPreparationError, match="its name is not UTF-8"):
        prepare_data(corpus, tmp_path / "save")


def test_tree_file_whose_name_is_not_utf8_is_listed_with_skip_bad_files(tmp_path):
    corpus = tree_with_a_name_that_is_not_utf8(tmp_path)
    prepare_data(corpus, tmp_path / "save", skip_bad_files=True)
    assert "caf\\xe9.wav: its name is not UTF-8" in (tmp_path / "save" / "skipped_files.csv").read_text()


SPLITS = ("train", "valid", "test")


def manifest_hparams(corpus, tmp_path, **overrides):
    """What check_manifests reads of a run's config."""
    hparams = {"sample_rate": RATE, "dynamic_mixing": False, "data_folder": str(corpus), "num_spks": 2}
    hparams.update(use_wham_noise=False, skip_bad_files=False, save_folder=str(tmp_path / "save"))
    hparams.update({f"{split}_data": str(write_manifest(tmp_path / f"{split}.csv", [row("a")])) for split in SPLITS})
    return {**hparams, **overrides}


def test_skip_bad_files_leaves_bad_manifest_rows_out_and_lists_them(corpus, tmp_path):
    hparams = manifest_hparams(corpus, tmp_path, skip_bad_files=True)
    write_manifest(tmp_path / "test.csv", [row("a"), row("../x", "tt_001_mix")])
    check_manifests(hparams, test_only=False, min_samples=32)
    assert hparams["test_data"] == str(tmp_path / "save" / "test_data_usable.csv")
    assert [line.split(",")[0] for line in Path(hparams["test_data"]).read_text().splitlines()] == ["ID", "a"]
    assert "test_data,../x," in (tmp_path / "save" / "skipped_files.csv").read_text()
    assert hparams["train_data"] == str(tmp_path / "train.csv")  # nothing left out there


@pytest.mark.slow
def test_skip_prep_manifests_at_another_rate_than_the_config_stop_before_training(corpus, tmp_path):
    save = tmp_path / "run" / "save"
    prepare_data(corpus, save)
    mixture = corpus / "wav8k/min/tr/mix/tr_000_mix.wav"
    assert run_train(tmp_path, corpus, "--skip_prep=True", "--sample_rate=16000") == (
        f"error: {save / 'train.csv'} line 2 (ID tr_000_mix): {mixture} is sampled at 8000 Hz, the config says 16000 Hz"
    )
    assert not list(save.glob("CKPT+*"))
