"""SpeechBrain's published model folders: separated, evaluated, fine-tuned and exported by this recipe."""

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import soundfile as sf
import torch
from speechbrain.inference.separation import SepformerSeparation
from speechbrain.lobes.models.conv_tasnet import MaskNet as SpeechBrainMaskNet

import export
import separate
from speechsep.inference.files import FileSeparator, SeparationOptions
from speechsep.inference.model_folder import ModelFolderError, build_model, find_model, load_separator
from speechsep.inference.separation import match_mixture_level
from speechsep.models import conv_tasnet, filterbank, transformer
from tests.corpus_trees import make_wsj0mix
from tests.helpers import REPO, TINY_SEPFORMER, tiny_hparams
from tests.published_models import KINDS, write_published_folder

SAMPLE_RATE = 8000


def speechbrain_estimates(folder: Path, mixture: torch.Tensor, savedir: Path) -> torch.Tensor:
    """What SpeechBrain's own inference class gives for a folder: the reference every check compares with."""
    model = SepformerSeparation.from_hparams(source=str(folder), savedir=str(savedir))
    with torch.no_grad():
        return model.separate_batch(mixture)


def short_mixture(seed: int = 0, num_samples: int = 4000) -> torch.Tensor:
    return 0.1 * torch.randn(1, num_samples, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", KINDS)
def test_published_folder_separates_as_speechbrain_does(tmp_path, kind):
    folder = write_published_folder(tmp_path / kind, kind)
    mixture = short_mixture()
    expected = match_mixture_level(speechbrain_estimates(folder, mixture, tmp_path / "savedir"), mixture)[0]

    separator = load_separator(folder)
    separated = FileSeparator(separator, SeparationOptions(precision="fp32")).separate(mixture[0])  # separate.py's path
    by_default = FileSeparator(separator).separate(mixture[0])  # bf16 where this CPU computes it natively

    assert separated.shape == (mixture.shape[1], 2)
    assert (separated - expected).abs().max() < 1e-4
    error = (by_default - expected).pow(2).sum() / expected.pow(2).sum()
    assert 10 * torch.log10(error) < -25


def test_published_folders_are_built_with_the_projects_classes_where_they_cover_them(tmp_path):
    sepformer = build_model(find_model(write_published_folder(tmp_path / "sepformer", "sepformer")))
    conformer = build_model(find_model(write_published_folder(tmp_path / "conformer", "sepformer-conformerintra")))
    convtasnet = build_model(find_model(write_published_folder(tmp_path / "convtasnet", "convtasnet")))
    resepformer = build_model(find_model(write_published_folder(tmp_path / "resepformer", "resepformer")))

    assert type(sepformer.modules["encoder"]) is filterbank.Encoder
    assert type(sepformer.modules["decoder"]) is filterbank.Decoder
    sdpa = [m for m in sepformer.modules["masknet"].modules() if isinstance(m, transformer.SDPAMultiheadAttention)]
    assert len(sdpa) == 2  # one layer in the intra and one in the inter block
    intra = conformer.modules["masknet"].dual_mdl[0].intra_mdl  # Conformer: relative-position attention, kept
    assert not [m for m in intra.modules() if isinstance(m, transformer.SDPAMultiheadAttention)]
    assert type(conformer.modules["masknet"].dual_mdl[0].inter_mdl) is transformer.FastSBTransformerBlock
    assert type(convtasnet.modules["masknet"]) is conv_tasnet.FastMaskNet
    seg_model = resepformer.modules["masknet"].model.seg_model[0]
    assert type(seg_model) is transformer.SBTransformerBlock_wnormandskip

    as_written = build_model(find_model(tmp_path / "convtasnet"), fast=False)  # the classes the folder names
    assert type(as_written.modules["masknet"]) is SpeechBrainMaskNet


def test_a_published_variant_the_project_does_not_cover_keeps_speechbrains_class(tmp_path):
    folder = write_published_folder(tmp_path / "convtasnet", "convtasnet")
    config = (folder / "hyperparams.yaml").read_text()
    (folder / "hyperparams.yaml").write_text(config.replace("norm_type: gLN", "norm_type: cLN"))
    model = build_model(find_model(folder))
    assert type(model.modules["masknet"]) is SpeechBrainMaskNet
    assert type(model.modules["encoder"]) is filterbank.Encoder


def test_separate_py_writes_speechbrains_estimates_from_a_published_folder(tmp_path):
    folder = write_published_folder(tmp_path / "model")
    mixture = short_mixture()
    sf.write(tmp_path / "talk.wav", mixture[0].numpy(), SAMPLE_RATE, subtype="FLOAT")
    expected = match_mixture_level(speechbrain_estimates(folder, mixture, tmp_path / "savedir"), mixture)[0]

    arguments = ["--model", str(folder), "--output-dir", str(tmp_path / "out"), str(tmp_path / "talk.wav")]
    status = separate.main([*arguments, "--precision", "fp32", "--keep-all-tracks"])  # all of SpeechBrain's estimates

    assert status == 0
    for k in range(2):
        track, rate = sf.read(tmp_path / "out" / f"talk_s{k + 1}.wav", dtype="float32")
        assert rate == SAMPLE_RATE
        assert (torch.from_numpy(track) - expected[:, k]).abs().max() < 1e-4  # 16-bit output: 3e-5 steps


def test_pretrainer_paths_are_looked_up_in_the_folder_offline(tmp_path):
    folder = write_published_folder(tmp_path / "model")
    (folder / "masknet.ckpt").rename(folder / "mask_weights.ckpt")
    config = (folder / "hyperparams.yaml").read_text()
    config = config.replace(
        "        decoder: !ref <Decoder>\n",
        "        decoder: !ref <Decoder>\n    paths:\n"
        "        encoder: speechbrain/sepformer-wsj02mix/encoder.ckpt\n"
        "        masknet: mask_weights.ckpt\n",
        1,
    )
    (folder / "hyperparams.yaml").write_text(config)
    reference = write_published_folder(tmp_path / "reference")
    mixture = short_mixture()

    with torch.no_grad():
        estimates = load_separator(folder).separate_batch(mixture)
        expected = load_separator(reference).separate_batch(mixture)

    assert torch.equal(estimates, expected)


def test_folder_lacking_a_weight_file_fails_with_one_line_naming_it(tmp_path):
    folder = write_published_folder(tmp_path / "model")
    (folder / "decoder.ckpt").unlink()
    with pytest.raises(ModelFolderError, match=r"no weights for the decoder: .*decoder\.ckpt not found"):
        load_separator(folder)


@pytest.mark.parametrize("model_id", ["speechbrain/sepformer-wsj02mix", "https://huggingface.co/speechbrain/x"])
def test_a_hub_id_says_to_download_it_first(tmp_path, model_id, caplog):
    status = separate.main(["--model", model_id, "--output-dir", str(tmp_path), "x.wav"])
    assert status == 2
    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 1
    assert "never downloads" in errors[0] and "huggingface-cli download speechbrain/" in errors[0]


def test_a_model_file_instead_of_its_folder_names_the_folder(tmp_path, monkeypatch, caplog):
    folder = write_published_folder(tmp_path / "pretrained")
    monkeypatch.chdir(tmp_path)  # "pretrained/hyperparams.yaml" also has the shape of a hub id
    status = separate.main(["--model", "pretrained/hyperparams.yaml", "--output-dir", "out", "x.wav"])
    assert status == 2
    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 1 and "is a file" in errors[0] and str(folder.name) in errors[0]
    assert "never downloads" not in errors[0]


# ---------------------------------------------------------------- fine-tuning and evaluation through train.py
def test_fine_tuning_starts_from_the_folders_model(tmp_path):
    from speechsep.training.experiment import starting_model
    from train import Separation

    folder = write_published_folder(tmp_path / "model")
    hparams = tiny_hparams(tmp_path, "sepformer.yaml", pretrained_separator=str(folder))
    mixture = short_mixture()

    modules, checkpointer = starting_model(hparams, test_only=False)
    brain = Separation(modules=modules, hparams=hparams, run_opts={"device": "cpu"}, checkpointer=checkpointer)
    brain.modules.eval()
    with torch.no_grad():
        first_forward = brain.separate(mixture)

    assert (first_forward - speechbrain_estimates(folder, mixture, tmp_path / "savedir")).abs().max() < 1e-5


def test_fine_tuning_a_different_architecture_names_the_first_mismatch(tmp_path):
    from speechsep.training.experiment import starting_model

    folder = write_published_folder(tmp_path / "model")
    hparams = tiny_hparams(tmp_path, "sepformer.yaml", pretrained_separator=str(folder), d_ffn=64)
    with pytest.raises(
        ModelFolderError,
        match=r"does not match the config's architecture: masknet '.*' has shape "
        r"\[32, 16\] in the folder, \[64, 16\] in the config",
    ):
        starting_model(hparams, test_only=False)


def test_fine_tuning_from_a_variant_with_the_same_weight_shapes_is_refused(tmp_path):
    """A cLN Conv-TasNet's weights have the gLN one's names and shapes, not its function."""
    from speechsep.training.experiment import starting_model

    folder = write_published_folder(tmp_path / "model", kind="convtasnet")
    sizes = dict(N_encoder_out=16, kernel_size=16, B=8, H=16, P=3, X=2, R=1)
    hparams = tiny_hparams(tmp_path, "convtasnet.yaml", pretrained_separator=str(folder), **sizes)
    starting_model(hparams, test_only=False)  # the folder's gLN network: the config's
    config = folder / "hyperparams.yaml"
    config.write_text(config.read_text().replace("norm_type: gLN", "norm_type: cLN"))
    hparams = tiny_hparams(tmp_path, "convtasnet.yaml", pretrained_separator=str(folder), **sizes)
    with pytest.raises(ModelFolderError, match="with the same weights its mask network computes other masks"):
        starting_model(hparams, test_only=False)


def test_fine_tuning_needs_the_folders_speaker_count(tmp_path):
    from speechsep.training.experiment import starting_model

    folder = write_published_folder(tmp_path / "model")
    hparams = tiny_hparams(tmp_path, "sepformer.yaml", pretrained_separator=str(folder), num_spks=3)
    with pytest.raises(
        ModelFolderError,
        match="separates 2 speakers at 8000 Hz; the config says num_spks 3 at sample_rate 8000: pass --num_spks=2",
    ):
        starting_model(hparams, test_only=False)


def run_train(*arguments: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "train.py", "hparams/sepformer.yaml", "--noprogressbar", *arguments]
    return subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)


def tiny_options(**values) -> list[str]:
    options = {**TINY_SEPFORMER, "batch_size": 2, "save_audio": False, **values}
    return [f"--{key}={value}" for key, value in options.items()]


@pytest.fixture(scope="module")
def tiny_tree(tmp_path_factory) -> Path:
    return make_wsj0mix(tmp_path_factory.mktemp("data") / "wsj0mix", per_split=3)


@pytest.mark.slow
def test_fine_tuning_run_resumes_from_its_own_checkpoint_not_the_folder(tmp_path, tiny_tree):
    folder = write_published_folder(tmp_path / "model")
    run = tmp_path / "run"
    arguments = [f"--data_folder={tiny_tree}", f"--output_folder={run}", f"--pretrained_separator={folder}"]

    first = run_train(*arguments, *tiny_options(N_epochs=1))
    assert first.returncode == 0, first.stdout[-2000:]
    assert "Initialised the encoder, masknet and decoder from" in first.stdout

    second = run_train(*arguments, *tiny_options(N_epochs=2))
    assert second.returncode == 0, second.stdout[-2000:]
    assert "Resuming from this run's own checkpoint" in second.stdout
    assert "Initialised the encoder" not in second.stdout


@pytest.mark.slow
def test_test_only_evaluates_a_published_folder_without_training(tmp_path, tiny_tree):
    folder = write_published_folder(tmp_path / "model", "convtasnet")  # any architecture: the folder's own
    run = tmp_path / "eval"
    result = run_train(
        f"--data_folder={tiny_tree}",
        f"--output_folder={run}",
        f"--pretrained_separator={folder}",
        "--test_only",
        *tiny_options(save_audio=True, n_audio_to_save=1),
    )
    assert result.returncode == 0, result.stdout[-2000:]
    results = pd.read_csv(run / "test_results.csv")
    assert len(results) == len(list((tiny_tree / "wav8k" / "min" / "tt" / "mix").glob("*.wav")))
    assert json.loads((run / "test_results_summary.json").read_text())["si-snr_i"]["count"] == len(results)
    assert list((run / "audio").glob("*_source1hat.wav"))
    assert not (run / "save").exists() or not list((run / "save").glob("CKPT+*"))  # nothing was trained
    assert not (run / "hyperparams.yaml").exists()  # not a training run: the config is test_hyperparams.yaml
    assert (run / "test_hyperparams.yaml").is_file()


@pytest.mark.slow
def test_test_only_with_a_folder_of_another_speaker_count_fails_with_one_line(tmp_path, tiny_tree):
    folder = write_published_folder(tmp_path / "model")
    result = run_train(
        f"--data_folder={tiny_tree}",
        f"--output_folder={tmp_path / 'eval'}",
        f"--pretrained_separator={folder}",
        "--test_only",
        "--num_spks=3",
        *tiny_options(),
    )
    assert result.returncode == 1
    assert result.stdout.strip().splitlines()[-1].startswith("error: ")
    assert "separates 2 speakers at 8000 Hz; the config says num_spks 3" in result.stdout


# ---------------------------------------------------------------- export
def test_published_folder_exports_to_a_folder_speechbrain_loads(tmp_path):
    folder = write_published_folder(tmp_path / "model", "resepformer")
    mixture = short_mixture()

    assert export.main([str(folder), str(tmp_path / "export")]) == 0

    exported = speechbrain_estimates(tmp_path / "export", mixture, tmp_path / "savedir_export")
    assert torch.equal(exported, speechbrain_estimates(folder, mixture, tmp_path / "savedir_folder"))
    card = (tmp_path / "export" / "README.md").read_text()
    assert "ResourceEfficientSeparator" in card and "not a training run" in card


def test_export_never_replaces_files_it_did_not_write(tmp_path):
    folder = write_published_folder(tmp_path / "model")
    target = tmp_path / "target"
    target.mkdir()
    (target / "hyperparams.yaml").write_text("mine")

    assert export.main([str(folder), str(target)]) == 2
    assert (target / "hyperparams.yaml").read_text() == "mine"
    assert export.main([str(folder), str(folder)]) == 2


def test_export_overwrite_replaces_only_an_earlier_export(tmp_path, caplog):
    folder = write_published_folder(tmp_path / "model")
    users_folder = tmp_path / "docs"
    users_folder.mkdir()
    (users_folder / "README.md").write_text("my notes")

    assert export.main([str(folder), str(users_folder), "--overwrite"]) == 2
    assert [path.name for path in users_folder.iterdir()] == ["README.md"]
    assert "--overwrite replaces only an earlier export" in caplog.text
    assert export.main([str(folder), str(tmp_path / "export")]) == 0
    (tmp_path / "export" / "README.md").write_text("an old card")
    assert export.main([str(folder), str(tmp_path / "export"), "--overwrite"]) == 0
    assert (tmp_path / "export" / "README.md").read_text().startswith("# Speech separation model")


def test_export_to_a_dangling_link_says_it_points_to_nothing(tmp_path, caplog):
    folder = write_published_folder(tmp_path / "model")
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    assert export.main([str(folder), str(tmp_path / "link")]) == 2
    errors = [record.getMessage() for record in caplog.records if record.getMessage().startswith("error:")]
    assert errors == [
        f"error: {tmp_path / 'link'} is a symbolic link to nothing ({tmp_path / 'gone'}); remove it first"
    ]
    assert not (tmp_path / "gone").exists()


def test_export_of_an_export_keeps_the_weights(tmp_path):
    folder = write_published_folder(tmp_path / "model", "dprnn")
    assert export.main([str(folder), str(tmp_path / "first")]) == 0
    shutil.rmtree(folder)
    assert export.main([str(tmp_path / "first"), str(tmp_path / "second")]) == 0
    for name in ("encoder", "masknet", "decoder"):
        first = torch.load(tmp_path / "first" / f"{name}.ckpt", weights_only=True)
        second = torch.load(tmp_path / "second" / f"{name}.ckpt", weights_only=True)
        assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_dptnet_models_separate_one_window_at_a_time_whatever_the_batch_size(tmp_path, caplog):
    """SpeechBrain's DPTNet blocks attend across the batch: windows batched together would change each other."""
    separator = load_separator(write_published_folder(tmp_path / "dptnet", "dptnet"))
    mixture = short_mixture(num_samples=8 * SAMPLE_RATE)[0]
    options = dict(window=1.0, hop=0.5, precision="fp32", progress=False)
    with caplog.at_level(logging.INFO, logger="speechsep.inference.files"):
        batched = FileSeparator(separator, SeparationOptions(batch_size=4, **options))
    assert batched.batch_size == 1 and "let the items of a batch affect each other" in caplog.text
    one_by_one = FileSeparator(separator, SeparationOptions(batch_size=1, **options))
    torch.testing.assert_close(batched.separate(mixture), one_by_one.separate(mixture), rtol=0, atol=0)
    sepformer = load_separator(write_published_folder(tmp_path / "sepformer", "sepformer"))
    assert FileSeparator(sepformer, SeparationOptions(batch_size=4, **options)).batch_size == 4
