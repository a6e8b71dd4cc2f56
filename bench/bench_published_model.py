"""A SpeechBrain SepFormer folder in the published layout, full size, separating a long file with `separate.py`.

The folder is written exactly as SpeechBrain publishes `sepformer-wsj02mix` (capitalised module keys, a
`modules:` map, a pretrainer with loadables), with random weights: speed and memory do not depend on them.
Each input length runs in a fresh process (`bench_inference.measure`), so peak RSS is that of one
separation; memory is flat when the longer input's peak exceeds the shorter one's by about its buffers only.

    python bench/bench_published_model.py            # 30 s and 5 min inputs (the 5 min one takes ~12 min on CPU)
    python bench/bench_published_model.py --quick    # 10 s and 20 s inputs
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # also when run as `python bench/bench_published_model.py`
    sys.path.insert(0, str(REPO_ROOT))

from bench.bench_inference import RSS_LIMIT_MIB, SAMPLE_RATE, measure, write_recording  # noqa: E402
from bench.markdown import section  # noqa: E402
from tests.published_models import PRETRAINER  # noqa: E402  (the modules map and pretrainer of that layout)

# SpeechBrain's published speechbrain/sepformer-wsj02mix hyperparams.yaml, as that folder declares its model.
TRANSFORMER_BLOCK = """!new:speechbrain.lobes.models.dual_path.SBTransformerBlock
    num_layers: 8
    d_model: 256
    nhead: 8
    d_ffn: 1024
    dropout: 0
    use_positional_encoding: true
    norm_before: true"""
PUBLISHED_SEPFORMER = f"""\
sample_rate: 8000
num_spks: 2

Encoder: !new:speechbrain.lobes.models.dual_path.Encoder
    kernel_size: 16
    out_channels: 256

SBtfintra: {TRANSFORMER_BLOCK}

SBtfinter: {TRANSFORMER_BLOCK}

MaskNet: !new:speechbrain.lobes.models.dual_path.Dual_Path_Model
    num_spks: !ref <num_spks>
    in_channels: 256
    out_channels: 256
    num_layers: 2
    K: 250
    intra_model: !ref <SBtfintra>
    inter_model: !ref <SBtfinter>
    norm: ln
    linear_layer_after_inter_intra: false
    skip_around_intra: true

Decoder: !new:speechbrain.lobes.models.dual_path.Decoder
    in_channels: 256
    out_channels: 1
    kernel_size: 16
    stride: 8
    bias: false
{PRETRAINER}"""
MODEL = "SepFormer, published layout, full size (N=256, 2 x 8 + 8 layers, d_ffn 1024)"
CASES = (30.0, 300.0)  # input seconds
QUICK_CASES = (10.0, 20.0)


def write_published_sepformer(folder: Path, seed: int = 0) -> Path:
    """The folder, with random weights saved under the pretrainer's loadable names."""
    import torch
    from hyperpyyaml import load_hyperpyyaml

    torch.manual_seed(seed)
    hparams = load_hyperpyyaml(PUBLISHED_SEPFORMER)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hyperparams.yaml").write_text(PUBLISHED_SEPFORMER)
    for key, module in hparams["pretrainer"].loadables.items():
        torch.save(module.state_dict(), folder / f"{key}.ckpt")
    return folder


def run(quick: bool = False, device: str | None = None) -> str:
    """Separates each input length with the published-layout folder, each in a fresh process."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = write_published_sepformer(tmp / "sepformer-wsj02mix")
        for seconds in QUICK_CASES if quick else CASES:
            recording = write_recording(tmp / f"input_{seconds:g}s.wav", seconds)
            report = measure(model_dir, recording, tmp / "out", 1, device)
            if "error" in report:
                rows.append(f"| {seconds / 60:.3g} | failed: {report['error']} | | | | |")
                continue
            peak = report["peak_rss_mib"]
            rows.append(
                f"| {seconds / 60:.3g} | {report['elapsed'] / report['audio_seconds']:.2f} | {report['elapsed']:.0f} "
                f"| {report['rss_before_mib']:.0f} | {peak:.0f} | {'yes' if peak < RSS_LIMIT_MIB else '**no**'} |"
            )
    where = f"CPU ({len(os.sched_getaffinity(0))} threads)" if device == "cpu" else f"`{device}`"
    return section(
        "## A published SpeechBrain SepFormer folder through separate.py",
        f"{MODEL}: a folder in the layout SpeechBrain publishes (random weights), given to `separate.py --model` "
        f"as it is. One {SAMPLE_RATE} Hz two-speaker recording per row on {where}, default 8 s windows and 4 s "
        "hop, one window per forward pass, fused attention and matrix-product filterbank swapped in at load time. "
        'RTF = separation time / audio duration; RSS as in "Separating long recordings (separate.py)"'
        + (" (--quick: short inputs, a smoke test)." if quick else "."),
        f"input (min) | RTF | time (s) | RSS before (MiB) | peak RSS (MiB) | < {RSS_LIMIT_MIB} MiB",
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 s and 20 s inputs: a smoke test")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    args = parser.parse_args()
    print(run(quick=args.quick, device=args.device))


if __name__ == "__main__":
    main()
