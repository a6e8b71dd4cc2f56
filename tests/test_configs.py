"""The recipe configs: stock HyperPyYAML, upstream defaults, overrides, and the config loader's rules."""

import logging

import pytest
import ruamel.yaml
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.lobes.models.dual_path import SBTransformerBlock
from speechbrain.lobes.models.transformer.Transformer import TransformerEncoderLayer
from speechbrain.nnet.attention import MultiheadAttention

from speechsep.models import filterbank
from speechsep.models.conv_tasnet import FastMaskNet, MaskNet
from speechsep.models.filterbank import encoder_hop
from speechsep.models.speechbrain_classes import OUR_CLASSES, with_speechbrain_classes
from speechsep.models.transformer import FastSBTransformerBlock, SDPAMultiheadAttention
from speechsep.training.config import ConfigError, load_hparams, record_yaml, resolved_values, resolved_yaml
from speechsep.training.preflight import check_config, check_same_experiment
from tests.corpus_trees import make_wsj0mix
from tests.helpers import REPO, TINY_CONVTASNET, TINY_SEPFORMER

MODEL_CONFIGS = ["dprnn.yaml", "dptnet.yaml", "skim.yaml", "resepformer.yaml", "sepformer-conformerintra.yaml"]
CORPUS_CONFIGS = ["sepformer-wham.yaml", "convtasnet-wham.yaml", "sepformer-whamr.yaml", "convtasnet-whamr.yaml"]
CORPUS_CONFIGS += ["sepformer-aishell1mix.yaml", "sepformer-wham-enhancement.yaml"]
CONFIGS = [
    "sepformer.yaml",
    "convtasnet.yaml",
    "sepformer-libri2mix.yaml",
    "convtasnet-libri2mix.yaml",
    *MODEL_CONFIGS,
    *CORPUS_CONFIGS,
]


def load(config, **overrides):
    return load_hparams(REPO / "hparams" / config, {"data_folder": "/data", **overrides})


@pytest.mark.parametrize("config", CONFIGS)
def test_every_config_has_upstream_training_defaults(config):
    hp = load(config)
    assert (hp["batch_size"], hp["clip_grad_norm"], hp["threshold"], hp["loss_upper_lim"]) == (1, 5, -30, 999999)
    assert hp["threshold_byloss"] and hp["lr"] == pytest.approx(1.5e-4)
    assert hp["speed_perturb"].speeds == [95, 100, 105]
    assert (hp["lr_scheduler"].factor, hp["lr_scheduler"].patience) == (0.5, 2)
    assert set(hp["modules"]) == {"encoder", "masknet", "decoder"}


ALL_CONFIGS = sorted(path.name for path in (REPO / "hparams").glob("*.yaml"))


def stock_overrides(config: str, tmp_path) -> dict:
    """The paths a config leaves to the command line (hparams/recordings.yaml: its recordings folder)."""
    overrides = {"data_folder": str(tmp_path / "data"), "output_folder": str(tmp_path / "out")}
    if config == "recordings.yaml":
        overrides["source_folder"] = str(tmp_path / "recordings")
    if config == "convtasnet-talkers.yaml":
        overrides.update({f"{split}source_folder": str(tmp_path / split) for split in ("", "valid_", "test_")})
    return overrides


@pytest.mark.parametrize("config", ALL_CONFIGS)
def test_every_config_loads_with_stock_hyperpyyaml_and_builds_its_modules(config, tmp_path):
    with open(REPO / "hparams" / config) as stream:
        hp = load_hyperpyyaml(stream, stock_overrides(config, tmp_path))
    assert set(hp["modules"]) == {"encoder", "masknet", "decoder"}
    assert all(isinstance(module, torch.nn.Module) for module in hp["modules"].values())
    mixture = torch.randn(1, 800)
    with torch.no_grad():
        masks = hp["modules"]["masknet"](hp["modules"]["encoder"](mixture))
    assert masks.shape[:2] == (hp["num_spks"], 1)


def class_name(module: torch.nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


@pytest.mark.parametrize("config", ALL_CONFIGS)
def test_every_config_builds_the_projects_classes_where_it_has_them(config, tmp_path):
    """What stock HyperPyYAML builds is what trains: no SpeechBrain class that the project computes faster is
    left to be replaced after loading, and no SpeechBrain attention layer that ours would fuse."""
    with open(REPO / "hparams" / config) as stream:
        hp = load_hyperpyyaml(stream, stock_overrides(config, tmp_path))
    assert type(hp["modules"]["encoder"]) is filterbank.Encoder and type(hp["modules"]["decoder"]) is filterbank.Decoder
    modules = [module for top in hp["modules"].values() for module in top.modules()]
    assert not [class_name(module) for module in modules if class_name(module) in OUR_CLASSES]
    assert not [
        module
        for module in modules
        if isinstance(module, TransformerEncoderLayer) and isinstance(module.self_att, MultiheadAttention)
    ]
    if "convtasnet" in config and "causal" not in config and "talkers" not in config:  # those: the demo's MaskNet
        assert type(hp["modules"]["masknet"]) is FastMaskNet


@pytest.mark.parametrize("config", ["sepformer.yaml", "convtasnet.yaml"])
@pytest.mark.parametrize("classes", ["ours", "speechbrain"])
def test_train_py_trains_the_classes_and_objects_the_config_builds(tmp_path, monkeypatch, config, classes):
    """train.py swaps nothing after loading: a config naming SpeechBrain's classes trains SpeechBrain's, and the
    checkpointer saves the very modules the config built."""
    import train
    from speechsep.training import experiment

    text = (REPO / "hparams" / config).read_text()
    (tmp_path / config).write_text(with_speechbrain_classes(text) if classes == "speechbrain" else text)
    corpus = make_wsj0mix(tmp_path / "data", per_split=1)
    monkeypatch.setattr(experiment, "create_experiment_directory", lambda folder, script: None)
    sizes = TINY_SEPFORMER if config.startswith("sepformer") else TINY_CONVTASNET
    argv = [str(tmp_path / config), f"--data_folder={corpus}", f"--output_folder={tmp_path / 'run'}"]
    hparams = train.prepare_experiment([*argv, *(f"--{key}={value}" for key, value in sizes.items())])[0]

    expected = load_hparams(tmp_path / config, {"data_folder": str(corpus), **sizes})
    for name, module in hparams["modules"].items():
        assert [class_name(m) for m in module.modules()] == [class_name(m) for m in expected["modules"][name].modules()]
        assert hparams["checkpointer"].recoverables[name] is module
    masknet_classes = {class_name(module) for module in hparams["modules"]["masknet"].modules()}
    assert bool(masknet_classes & set(OUR_CLASSES)) == (classes == "speechbrain")


@pytest.mark.parametrize("test_only", [False, True])
def test_a_run_recorded_with_speechbrains_classes_resumes_or_tests_with_ours(tmp_path, test_only):
    """Ours and SpeechBrain's classes hold the same weights: the one-experiment-per-folder check lets a run
    recorded with either continue with the other (records from before the configs named ours had a
    `fast_attention` key), and still refuses another model size."""
    config = REPO / "hparams" / "sepformer.yaml"
    recorded_config = tmp_path / "sepformer.yaml"
    recorded_config.write_text(with_speechbrain_classes(config.read_text()) + "fast_attention: True\n")
    options = {"data_folder": "/data", "output_folder": str(tmp_path / "run")}
    (tmp_path / "run" / "save" / "CKPT+1").mkdir(parents=True)
    (tmp_path / "run" / "hyperparams.yaml").write_text(record_yaml(recorded_config, options))

    record = record_yaml(config, options)
    check_same_experiment(resolved_values(record), record, test_only)
    record = record_yaml(config, {**options, "num_layers": 4})
    with pytest.raises(ConfigError, match=r"holds a run with another model or data \(num_layers: 8 -> 4\)"):
        check_same_experiment(resolved_values(record), record, test_only)


# Keys a config may set differently from sepformer.yaml; every other key is the same in all configs, so that
# fixing the recipe in one file and not in the others fails here.
CONVTASNET_KEYS = {"MaskNet", "B", "H", "P", "X", "R"}  # a Conv-TasNet config's mask network
OWN_KEYS = {
    "sepformer.yaml": set(),
    "sepformer-libri2mix.yaml": {"experiment_name", "dm_level_scheme"},
    "convtasnet.yaml": {"experiment_name", *CONVTASNET_KEYS},
    "convtasnet-libri2mix.yaml": {"experiment_name", "dm_level_scheme", *CONVTASNET_KEYS},
    "dprnn.yaml": {"experiment_name", "MaskNet", "hidden_channels"},
    "dptnet.yaml": {"experiment_name", "MaskNet", "kernel_size", "training_signal_len"},
    "skim.yaml": {"experiment_name", "MaskNet", "N_encoder_out", "hidden_size"},
    "resepformer.yaml": {"experiment_name", "MaskNet", "N_encoder_out", "out_channels", "chunk_size"},
    "sepformer-conformerintra.yaml": {"experiment_name", "MaskNet"},
    "sepformer-wham.yaml": {"experiment_name", "use_wham_noise"},
    "convtasnet-wham.yaml": {"experiment_name", "use_wham_noise", *CONVTASNET_KEYS},
    "sepformer-whamr.yaml": {"experiment_name", "use_wham_noise", "use_speedperturb", "dm_rooms"},
    "sepformer-aishell1mix.yaml": {"experiment_name", "dm_level_scheme"},
    "sepformer-wham-enhancement.yaml": {"experiment_name", "num_spks", "use_wham_noise", "task"},
    "convtasnet-whamr.yaml": {"experiment_name", "use_wham_noise", "use_speedperturb", "dm_rooms", *CONVTASNET_KEYS},
    "demo.yaml": {
        "experiment_name",
        "output_folder",
        "dm_level_scheme",
        *CONVTASNET_KEYS,
        "kernel_size",
        "N_epochs",
        "batch_size",
        "lr",
        "training_signal_len",
        "num_workers",
        "use_speedperturb",
        "precision",
        "test_shifts",
        "test_mixture_consistency",
        "dynamic_mixing",
        "base_folder_dm",
        "dm_epoch_len",
        "lr_scheduler",
        "train_budget_minutes",
    },
}
OWN_KEYS["demo-causal.yaml"] = OWN_KEYS["demo.yaml"]
OWN_KEYS["convtasnet-causal.yaml"] = OWN_KEYS["convtasnet.yaml"]
RECORDINGS_KEYS = {"source_folder", "speaker_regex", "valid_source_folder", "test_source_folder", "corpus_folder"}
RECORDINGS_KEYS |= {"valid_speakers", "test_speakers", "valid_mixtures", "test_mixtures", "min_speaker_seconds"}
OWN_KEYS["recordings.yaml"] = (OWN_KEYS["demo.yaml"] - {"dm_level_scheme", "N_epochs", "test_shifts"}) | {
    *RECORDINGS_KEYS,
    "corpus_seed",
    "data_folder",
    "use_speedperturb",
}
TALKER_COUNT_KEYS = {"num_spks", "talker_counts", "talker_count_weights", "talker_loss", "MaskNet"}
TALKER_COUNT_KEYS |= {"talker_count_warmup_weights", "talker_count_warmup_share"}
OWN_KEYS["demo-talkers.yaml"] = OWN_KEYS["recordings.yaml"] | TALKER_COUNT_KEYS | {"dm_level_scheme", "N_epochs"}
OWN_KEYS["convtasnet-talkers.yaml"] = OWN_KEYS["demo-talkers.yaml"] | {"N_encoder_out", "dm_epoch_len", "N_epochs"}
SEPFORMER_ONLY = {"out_channels", "num_layers", "nhead", "d_ffn", "num_blocks", "chunk_size"}


@pytest.mark.parametrize("config", sorted(OWN_KEYS))
def test_configs_share_every_recipe_key_but_their_own(config):
    assert set(OWN_KEYS) == set(ALL_CONFIGS)
    sepformer, other = (as_text(name) for name in ("sepformer.yaml", config))
    shared = (set(sepformer) | set(other)) - OWN_KEYS[config] - (SEPFORMER_ONLY if "sepformer" not in config else set())
    assert {key for key in shared if sepformer.get(key) != other.get(key)} == set()


def as_text(config: str) -> dict[str, str]:
    """Each top-level key of a config with its value as YAML text (tags included, comments not)."""
    yaml = ruamel.yaml.YAML()
    document = yaml.load((REPO / "hparams" / config).read_text())
    texts = {}
    for key, value in document.items():
        stream = ruamel.yaml.compat.StringIO()
        yaml.dump({key: value}, stream)
        texts[key] = "\n".join(
            line.split(" #")[0].rstrip()
            for line in stream.getvalue().splitlines()
            if line.strip() and not line.strip().startswith("#")
        )
    return texts


def test_sepformer_has_the_paper_sizes_and_trains_with_the_fused_attention():
    hp = load("sepformer.yaml")
    masknet = hp["MaskNet"]
    assert len(masknet.dual_mdl) == 2 and masknet.K == 250
    intra = masknet.dual_mdl[0].intra_mdl
    assert type(intra) is FastSBTransformerBlock and len(intra.mdl.layers) == 8  # the config names ours
    layer = intra.mdl.layers[0]
    assert layer.pos_ffn.ffn[0].out_features == 1024 and layer.self_att.att.num_heads == 8
    assert type(layer.self_att) is SDPAMultiheadAttention


def test_naming_speechbrains_block_keeps_speechbrains_attention(tmp_path):
    config = tmp_path / "sepformer-libri2mix.yaml"
    block = "speechsep.models.transformer.FastSBTransformerBlock"
    config.write_text(with_speechbrain_classes((REPO / "hparams" / config.name).read_text(), (block,)))
    hp = load_hparams(config, {"data_folder": "/data"})
    blocks = [hp["MaskNet"].dual_mdl[0].intra_mdl, hp["MaskNet"].dual_mdl[0].inter_mdl]
    assert [type(block) for block in blocks] == [SBTransformerBlock, SBTransformerBlock]
    layers = [layer for block in blocks for layer in block.mdl.layers]
    assert not any(isinstance(layer.self_att, SDPAMultiheadAttention) for layer in layers)
    assert type(hp["Encoder"]) is filterbank.Encoder  # only the block was renamed


def test_convtasnet_has_the_paper_sizes():
    masknet = load("convtasnet.yaml")["MaskNet"]
    assert type(masknet) is FastMaskNet and masknet.C == 2 and masknet.mask_nonlinear == "relu"
    assert masknet.bottleneck.out_channels == 256  # B
    blocks = masknet.blocks
    assert len(blocks) == 4 * 6  # R x X
    assert blocks[0].conv_in.out_channels == 512  # H
    assert blocks[0].depthwise.kernel_size == (3,)  # P
    assert isinstance(blocks[0].norm_in, torch.nn.GroupNorm) and blocks[0].norm_in.num_groups == 1  # gLN
    assert isinstance(blocks[0].act_in, torch.nn.PReLU) and blocks[0].reflect  # SpeechBrain's network


# Mask network class, its parameter count at the config's sizes (a fingerprint of every size key), the encoder hop.
PUBLISHED_SIZES = {
    "dprnn.yaml": ("Dual_Path_Model", "SBRNNBlock", 14_608_897, 8),
    "dptnet.yaml": ("Dual_Path_Model", "DPTNetBlock", 2_835_457, 1),  # 2-sample window: hop 1
    "skim.yaml": ("ResourceEfficientSeparator", "SegLSTM", 14_502_657, 8),
    "resepformer.yaml": ("ResourceEfficientSeparator", "SBTransformerBlock_wnormandskip", 7_951_105, 8),
    "sepformer-conformerintra.yaml": ("Dual_Path_Model", "SBConformerEncoderBlock", 38_446_593, 8),
}


@pytest.mark.parametrize("config", MODEL_CONFIGS)
def test_new_mask_networks_have_the_published_sizes_and_a_decoder_on_the_encoders_hop(config):
    hp = load(config)
    masknet = hp["MaskNet"]
    inner = masknet.dual_mdl[0].intra_mdl if hasattr(masknet, "dual_mdl") else masknet.model.seg_model[0]
    num_parameters = sum(parameter.numel() for parameter in masknet.parameters())
    hop = encoder_hop(hp["Encoder"])
    assert (type(masknet).__name__, type(inner).__name__, num_parameters, hop) == PUBLISHED_SIZES[config]
    assert hp["Decoder"].stride == (hop,) and hp["Decoder"].kernel_size == hp["Encoder"].conv1d.kernel_size


def test_model_sizes_and_speaker_count_are_overridable():
    hp = load("convtasnet-libri2mix.yaml", B=32, H=64, X=2, R=1, num_spks=3, N_encoder_out=64)
    assert hp["MaskNet"].C == 3 and len(hp["MaskNet"].blocks) == 2
    assert hp["Encoder"].conv1d.out_channels == 64
    assert hp["dm_level_scheme"] == "librimix" and hp["experiment_name"] == "convtasnet-libri2mix"


def test_unknown_key_is_an_error_with_a_suggestion():
    with pytest.raises(ConfigError, match="unknown hyperparameter 'num_spk' .*did you mean 'num_spks'"):
        load("sepformer.yaml", num_spk=3)


def test_a_tagged_override_replaces_the_object():
    hp = load_hparams(
        REPO / "hparams" / "convtasnet.yaml", "data_folder: /d\noptimizer: !name:torch.optim.SGD {lr: 0.5}"
    )
    assert hp["optimizer"].func.__name__ == "SGD"


def test_resolved_config_is_self_contained(tmp_path):
    text = resolved_yaml(REPO / "hparams" / "sepformer-libri2mix.yaml", {"data_folder": "/data"})
    assert "\nbase_config:" not in text and "!PLACEHOLDER" not in text
    saved = tmp_path / "hyperparams.yaml"
    saved.write_text(text)
    assert load_hparams(saved)["num_layers"] == 8


@pytest.mark.parametrize("kernel_size", [16, 64, 256])
def test_decoder_hop_always_matches_the_encoder(kernel_size):
    """SpeechBrain's encoder hops by half its window; a decoder with another hop would scramble the output."""
    hp = load("convtasnet.yaml", kernel_size=kernel_size)
    assert hp["Decoder"].stride == hp["Encoder"].conv1d.stride == (kernel_size // 2,)


def test_demo_config_trains_on_the_embedded_corpus_pool():
    hp = load("demo.yaml", data_folder="/data/MiniLibri2Mix")
    assert hp["dynamic_mixing"] and hp["base_folder_dm"] == "/data/MiniLibri2Mix/sources/train"
    assert hp["dm_level_scheme"] == "librimix" and hp["output_folder"] == "results/demo"


def test_demo_masknet_is_the_channels_first_one_with_the_demo_sizes():
    hp = load("demo.yaml", data_folder="/data/MiniLibri2Mix", X=3)
    masknet = hp["MaskNet"]
    assert isinstance(masknet, MaskNet) and masknet is hp["modules"]["masknet"]
    assert len(masknet.blocks) == 3 * hp["R"] and masknet.bottleneck.out_channels == hp["B"]
    assert isinstance(masknet.blocks[0].act_in, torch.nn.ReLU) and not masknet.blocks[0].reflect


@pytest.mark.parametrize(
    "config, activation, blocks", [("demo-causal.yaml", "relu", 14), ("convtasnet-causal.yaml", "prelu", 24)]
)
def test_causal_configs_build_the_causal_network_at_the_demo_and_the_recipe_size(config, activation, blocks):
    """Same sizes as their non-causal counterparts (demo.yaml, convtasnet.yaml), causal convolutions and cLN."""
    masknet = load(config, data_folder="/data/MiniLibri2Mix")["MaskNet"]
    counterpart = load(config.replace("-causal", ""), data_folder="/data/MiniLibri2Mix")["MaskNet"]
    assert type(masknet) is MaskNet and masknet.causal and len(masknet.blocks) == blocks
    assert sum(p.numel() for p in masknet.parameters()) == sum(p.numel() for p in counterpart.parameters())
    assert isinstance(masknet.blocks[0].act_in, torch.nn.ReLU if activation == "relu" else torch.nn.PReLU)
    assert type(masknet.blocks[0].norm_in).__name__ == "ChannelNorm"


@pytest.mark.parametrize(
    "config, differing",
    [
        (
            "demo-causal.yaml",
            {"experiment_name", "output_folder", "test_shifts", "test_mixture_consistency", "MaskNet"},
        ),
        ("convtasnet-causal.yaml", {"experiment_name", "MaskNet"}),
    ],
)
def test_causal_configs_are_their_counterparts_but_for_the_mask_network(config, differing):
    causal, counterpart = as_text(config), as_text(config.replace("-causal", ""))
    assert set(causal) == set(counterpart)
    assert {key for key in causal if causal[key] != counterpart[key]} == differing


@pytest.mark.parametrize(
    "avx512_bf16, amx, expected", [(True, False, "bf16"), (False, True, "bf16"), (False, False, "fp32")]
)
def test_demo_trains_in_bf16_only_where_the_cpu_computes_it_natively(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert load("demo.yaml", data_folder="/data/MiniLibri2Mix")["precision"] == expected


def test_a_record_with_the_former_fast_attention_key_is_run_with_a_warning_that_the_classes_decide(tmp_path, caplog):
    """Such a record names SpeechBrain's blocks: they run as named, and the user learns how to get the fused ones."""
    config = tmp_path / "hyperparams.yaml"
    config.write_text(
        with_speechbrain_classes((REPO / "hparams" / "sepformer.yaml").read_text()) + "fast_attention: True\n"
    )
    (tmp_path / "data").mkdir()
    overrides = f"data_folder: {tmp_path / 'data'}\noutput_folder: {tmp_path / 'run'}\n"
    with caplog.at_level(logging.WARNING, logger="speechsep.training.preflight"):
        check_config(str(config), overrides, test_only=False)
    assert "fast_attention is no longer read" in caplog.text and "FastSBTransformerBlock" in caplog.text
