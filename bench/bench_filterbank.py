"""Speed of SpeechBrain's learned encoder/decoder (Conv1d / ConvTranspose1d) vs speechsep.models.filterbank's
(the same modules computed as matrix products), alone and inside the demo's training step.

    python -m bench.bench_filterbank            # prints a markdown section for bench/RESULTS.md
    python -m bench.bench_filterbank --quick    # one repeat, smaller inputs: a smoke test
"""

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from speechbrain.lobes.models import dual_path

from bench.markdown import section
from bench.separators import demo_config
from speechsep.models import filterbank
from speechsep.training.config import load_hparams
from speechsep.training.losses import pit_si_snr_loss

SAMPLE_RATE = 8000
NUM_SPKS = 2
# (name, encoder channels, kernel): the recipes' filterbank on one 4 s mixture; the demo's (from its config) on its
# training batch.
RECIPES_FILTERBANK = ("recipes (N=256, 2 ms windows)", 256, 16)
IMPLEMENTATIONS = {
    "SpeechBrain": (dual_path.Encoder, dual_path.Decoder),
    "speechsep.models.filterbank": (filterbank.Encoder, filterbank.Decoder),
}


def median_ms(step: Callable[[], None], warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def filterbank_step(
    implementation: str, channels: int, kernel: int, batch: int, seconds: float, decoder_only: bool = False
) -> Callable:
    """Encoder, one decoder call per speaker (as train.py does), backward; or one decoder call and its backward."""
    encoder_class, decoder_class = IMPLEMENTATIONS[implementation]
    torch.manual_seed(0)
    encoder = encoder_class(kernel_size=kernel, out_channels=channels)
    decoder = decoder_class(in_channels=channels, out_channels=1, kernel_size=kernel, stride=kernel // 2, bias=False)
    mixture = torch.randn(batch, int(seconds * SAMPLE_RATE))
    encoded = encoder(mixture).detach().requires_grad_()

    def step():
        if decoder_only:
            decoder(encoded).square().mean().backward()
            return
        mixture_w = encoder(mixture)
        masks = torch.rand(NUM_SPKS, *mixture_w.shape)
        est_sources = torch.stack([decoder(mixture_w * mask) for mask in masks], dim=-1)
        est_sources.square().mean().backward()

    return step


def demo_training_step(implementation: str, quick: bool) -> Callable:
    """The demo model's forward, PIT SI-SNR loss, backward and Adam step on one training batch of its config."""
    hparams = load_hparams("hparams/demo.yaml", {"data_folder": "unused"})
    encoder_class, decoder_class = IMPLEMENTATIONS[implementation]
    modules = hparams["modules"]
    modules["encoder"].__class__, modules["decoder"].__class__ = encoder_class, decoder_class
    model = torch.nn.ModuleDict(modules)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    torch.manual_seed(0)
    batch, samples = (2, 4000) if quick else (hparams["batch_size"], hparams["training_signal_len"])
    sources = torch.randn(batch, samples, NUM_SPKS)
    mixture = sources.sum(-1)

    def step():
        mixture_w = model["encoder"](mixture)
        est_masks = model["masknet"](mixture_w)
        est_sources = torch.stack([model["decoder"](mixture_w * mask) for mask in est_masks], dim=-1)
        pit_si_snr_loss(est_sources[:, :samples], sources).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def run(quick: bool = False) -> str:
    warmup, repeats = (1, 1) if quick else (5, 30)
    demo = demo_config()
    channels, kernel = demo.sizes.encoder_channels, demo.sizes.kernel_size
    demo_filterbank = (f"demo (N={channels}, {kernel * 1000 / SAMPLE_RATE:g} ms windows)", channels, kernel)
    sizes = [(*RECIPES_FILTERBANK, 1, 4.0), (*demo_filterbank, demo.batch, demo.seconds)]
    steps = [
        (
            f"{part}, {name}, batch {batch} x {seconds:g} s",
            {
                impl: filterbank_step(
                    impl,
                    channels,
                    kernel,
                    1 if quick else batch,
                    0.5 if quick else seconds,
                    decoder_only=part.startswith("decoder"),
                )
                for impl in IMPLEMENTATIONS
            },
        )
        for name, channels, kernel, batch, seconds in sizes
        for part in ("decoder alone (1 call)", "filterbank")
    ]
    demo_step = f"demo step (batch {demo.batch} x {demo.seconds:g} s)"
    steps.append((demo_step, {impl: demo_training_step(impl, quick) for impl in IMPLEMENTATIONS}))
    rows = []
    for label, step in steps:
        reference, ours = (median_ms(step[impl], warmup, repeats) for impl in IMPLEMENTATIONS)
        rows.append(f"| {label} | {reference:.1f} | {ours:.1f} | {reference / ours:.2f}x |")
    return section(
        "## Encoder / decoder: SpeechBrain's vs speechsep.models.filterbank",
        f"CPU, {torch.get_num_threads()} threads, fp32, median of {repeats} repeats after {warmup} warm-up. "
        "*Decoder alone* = one decoder call and its backward; "
        "*filterbank* = encoder, one decoder call per speaker (2) and their backward, with random masks; "
        "*demo step* = the whole training step of `hparams/demo.yaml` (forward, PIT SI-SNR, backward, Adam).",
        "what | SpeechBrain (ms) | speechsep.models.filterbank (ms) | speed-up",
        rows,
        right_aligned=3,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat, smaller inputs: a smoke test")
    print(run(quick=parser.parse_args().quick))


if __name__ == "__main__":
    main()
