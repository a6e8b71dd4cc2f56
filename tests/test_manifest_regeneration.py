"""When prepare_data.py reuses its manifests, when it regenerates them, and a failed rewrite keeping the last."""

import os
import subprocess
import sys

import soundfile as sf

from prepare_data import prepare_data
from tests.corpus_trees import make_wsj0mix
from tests.helpers import REPO, limit_file_size, read_csv


def test_rerun_with_same_options_reuses_manifests_and_new_options_regenerate(tmp_path):
    data = make_wsj0mix(tmp_path, per_split=2)
    paths = prepare_data(data, tmp_path / "save")
    paths["train"].write_text("marker\n")
    prepare_data(data, tmp_path / "save")
    assert paths["train"].read_text() == "marker\n"
    prepare_data(data, tmp_path / "save", mode="min", skip_bad_files=True)
    assert read_csv(paths["train"])[0]["ID"] == "tr_000_mix"


def copy_example(split_folder, name, new_name, folders=("mix", "s1", "s2")):
    """Add an example to a WSJ0Mix split by copying an existing one under a new name."""
    for folder in folders:
        (split_folder / folder / f"{new_name}.wav").write_bytes((split_folder / folder / f"{name}.wav").read_bytes())


def test_test_mixture_added_after_preparation_is_in_the_regenerated_manifest(tmp_path, caplog):
    data = make_wsj0mix(tmp_path, per_split=2)
    paths = prepare_data(data, tmp_path / "save")
    copy_example(data / "wav8k/min/tt", "tt_000_mix", "tt_new_mix")
    with caplog.at_level("INFO", logger="prepare_data"):
        prepare_data(data, tmp_path / "save")
    assert "tt_new_mix" in [r["ID"] for r in read_csv(paths["test"])]
    assert "files in the data tree changed" in caplog.text


def test_test_mixture_removed_after_preparation_is_left_out_of_the_regenerated_manifest(tmp_path, caplog):
    data = make_wsj0mix(tmp_path, per_split=2)
    paths = prepare_data(data, tmp_path / "save")
    for folder in ("mix", "s1", "s2"):
        (data / "wav8k/min/tt" / folder / "tt_001_mix.wav").unlink()
    with caplog.at_level("INFO", logger="prepare_data"):
        prepare_data(data, tmp_path / "save")
    assert [r["ID"] for r in read_csv(paths["test"])] == ["tt_000_mix"]
    assert "files in the data tree changed" in caplog.text


def test_rewritten_source_after_preparation_regenerates_the_manifests(tmp_path):
    data = make_wsj0mix(tmp_path, per_split=2)
    paths = prepare_data(data, tmp_path / "save")
    paths["test"].write_text("marker\n")
    source = data / "wav8k/min/tr/s1/tr_000_mix.wav"
    signal, rate = sf.read(source)
    sf.write(source, 0.5 * signal, rate, subtype="PCM_16")  # same length, another size and mtime
    prepare_data(data, tmp_path / "save")
    assert read_csv(paths["test"])[0]["ID"] == "tt_000_mix"


def test_manifest_write_failure_is_one_line_and_keeps_the_previous_manifests_with_their_options(tmp_path):
    data = make_wsj0mix(tmp_path, per_split=2)
    save = tmp_path / "save"
    prepare_data(data, save)
    before = {path.name: path.read_bytes() for path in save.iterdir()}
    os.utime(data / "wav8k/min/tt/mix/tt_000_mix.wav", ns=(0, 0))  # the tree changed: prepare again
    result = subprocess.run(
        [sys.executable, "prepare_data.py", str(data), str(save)],
        cwd=REPO,
        capture_output=True,
        text=True,
        preexec_fn=limit_file_size(100),
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines()[-1].startswith(f"error: cannot write {save / 'train.csv'}: ")
    assert {path.name: path.read_bytes() for path in save.iterdir()} == before
