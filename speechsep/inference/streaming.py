"""Separating a stream chunk by chunk with a causal model, as a live input would be separated.

`StreamSeparator` takes samples in chunks of any size (one sample, 10 ms, a second) and returns the separated
samples as soon as the model has computed them: the encoder's frames that the received samples complete, the
causal mask network's step on those frames (its past kept in a cache, `MaskNet.step`: nothing is computed
twice, memory does not grow with the stream), the decoder's overlap-add with the last frame's tail kept for the
next one. Concatenated, its outputs are what the same model computes offline on the whole input (encoder, mask
network and decoder on every frame, zeros after the last whole frame), to float rounding.

A sample leaves at most one encoder window minus one sample after it came in, once the frame that completes
it has all its samples (`latency_samples`: the window, the algorithmic latency as usually counted); a chunk adds
its own length, as it is handed over whole. In fp32, outputs equal the offline model's to float rounding.
Only causal models stream: a Conv-TasNet `MaskNet` built with `causal: True` (cLN norms, zero padding); every
other mask network needs frames after the current one and is refused with the reason.

`RunningLevel` brings the estimates to the mixture's level from the past alone (least-squares gains over an
exponentially weighted past), since a model trained with SI-SNR outputs each speaker at an arbitrary scale.
"""

import math

import torch
from speechbrain.lobes.models import dual_path

from speechsep.errors import RecipeError
from speechsep.inference.model_config import MODULE_NAMES
from speechsep.inference.separation import least_squares_gains
from speechsep.models.conv_tasnet import MaskNet
from speechsep.training.hardware import autocast


class StreamingError(RecipeError):
    """A model that cannot stream, or a stream used out of order."""


def streaming_refusal(modules: dict[str, torch.nn.Module]) -> str | None:
    """Why a model (encoder, masknet, decoder) cannot be separated as a stream, or None if it can."""
    encoder, masknet, decoder = (getattr(modules[name], "module", modules[name]) for name in MODULE_NAMES)
    if not isinstance(masknet, MaskNet) or not masknet.causal:
        kind = type(masknet).__name__
        detail = "a non-causal Conv-TasNet (its layer norms or convolutions read later frames)"
        if not isinstance(masknet, MaskNet):
            detail = f"a {kind}, whose output at each frame depends on later frames"
        return (
            f"its mask network is {detail}: only a causal Conv-TasNet streams (hparams/convtasnet-causal.yaml, "
            "hparams/demo-causal.yaml)"
        )
    if not isinstance(encoder, dual_path.Encoder) or encoder.in_channels != 1:
        return f"its encoder is a {type(encoder).__name__}: streaming needs a learned one-channel encoder"
    if not isinstance(decoder, dual_path.Decoder) or decoder.out_channels != 1 or decoder.bias is not None:
        return f"its decoder is a {type(decoder).__name__}: streaming needs a bias-free learned decoder"
    window, hop = encoder.conv1d.kernel_size[0], encoder.conv1d.stride[0]
    if (decoder.kernel_size[0], decoder.stride[0]) != (window, hop) or decoder.padding != (0,) or window % hop:
        return "its decoder's window and hop are not its encoder's (a whole number of hops)"
    return None


class StreamSeparator:
    """A causal separator's stream state: `push` chunks of mixture samples, `finish` once at the end.

    Outputs are [time, num_spks] float32 on the CPU, at the model's scale (see `RunningLevel`). `precision` is
    what the model computes in ("fp32", "bf16", "fp16": `speechsep.training.hardware.autocast`).
    """

    def __init__(self, modules: dict[str, torch.nn.Module], precision: str = "fp32", device: str = "cpu"):
        refusal = streaming_refusal(modules)
        if refusal:
            raise StreamingError(f"this model cannot stream: {refusal}")
        self.encoder, self.masknet, self.decoder = (
            getattr(modules[name], "module", modules[name]).eval() for name in MODULE_NAMES
        )
        self.num_spks = self.masknet.C
        self.window = int(self.encoder.conv1d.kernel_size[0])
        self.hop = int(self.encoder.conv1d.stride[0])
        self.precision, self.device = precision, device
        self._state = self.masknet.initial_state(1)
        self._pending = torch.zeros(0, device=device)  # received samples not yet in a whole frame's hop
        self._tail = torch.zeros(self.num_spks, self.window - self.hop, device=device)  # overlap-add carried over
        self.received = self.emitted = 0
        self.finished = False

    @property
    def latency_samples(self) -> int:
        """The algorithmic latency: the encoder's window (a sample waits at most one sample less for the frame
        that completes it)."""
        return self.window

    @torch.inference_mode()
    def push(self, chunk: torch.Tensor) -> torch.Tensor:
        """Mixture samples [time] (any number, 0 included) -> the separated samples they complete [time', num_spks]."""
        if self.finished:
            raise StreamingError("the stream is finished: start another StreamSeparator")
        if chunk.dim() != 1:
            raise StreamingError(f"a chunk is one channel of samples [time], got shape {list(chunk.shape)}")
        self.received += chunk.shape[0]
        self._pending = torch.cat([self._pending, chunk.to(self.device, torch.float32)])
        num_frames = (self._pending.shape[0] - self.window) // self.hop + 1
        if num_frames <= 0:
            return torch.zeros(0, self.num_spks)
        with autocast(self.precision, self.device):
            mixture_w = self.encoder(self._pending[: (num_frames - 1) * self.hop + self.window].unsqueeze(0))
            masks, self._state = self.masknet.step(mixture_w, self._state)  # [num_spks, 1, N, frames]
            signal = self.decoder((mixture_w * masks)[:, 0]).reshape(self.num_spks, -1).float()
        self._pending = self._pending[num_frames * self.hop :]
        signal[:, : self._tail.shape[1]] += self._tail
        done = num_frames * self.hop
        self._tail = signal[:, done:]
        self.emitted += done
        return signal[:, :done].T.cpu()

    @torch.inference_mode()
    def finish(self) -> torch.Tensor:
        """The rest of the stream: the last frame's tail, then zeros for the samples no whole frame covers (as
        the offline model leaves them); the outputs then hold as many samples as the inputs."""
        if self.finished:
            raise StreamingError("the stream is already finished")
        self.finished = True
        rest = torch.zeros(self.num_spks, self.received - self.emitted)
        tail = self._tail[:, : rest.shape[1]].cpu()  # zeros if no frame was whole
        rest[:, : tail.shape[1]] = tail
        self.emitted = self.received
        return rest.T


class RunningLevel:
    """Gains that bring each estimate to the mixture's level, from the past alone.

    The least-squares fit of the mixture by the estimates' weighted sum (`least_squares_gains`, as the offline
    `match_mixture_level`) over an exponentially weighted past of time constant `seconds`, refitted at the end of
    every block of `block_seconds`: over the next block the gains move linearly from the previous fit to this
    one, so they never jump, and they do not depend on how the stream is cut into chunks. The first block is
    silent (nothing tells the estimates' level yet: a model's raw output can be a thousand times the mixture's),
    and the second fades in.
    """

    def __init__(self, num_spks: int, sample_rate: int, seconds: float = 2.0, block_seconds: float = 0.01):
        self.block = max(1, round(block_seconds * sample_rate))
        self.decay_per_block = math.exp(-self.block / (seconds * sample_rate))
        self.gram = torch.zeros(num_spks, num_spks, dtype=torch.float64)
        self.target = torch.zeros(num_spks, dtype=torch.float64)
        self.gains = self.previous_gains = torch.zeros(num_spks, dtype=torch.float64)
        self._block_gram, self._block_target = torch.zeros_like(self.gram), torch.zeros_like(self.target)
        self._in_block = 0  # samples of the current block seen so far

    def __call__(self, est_sources: torch.Tensor, mixture: torch.Tensor) -> torch.Tensor:
        """est_sources [time, num_spks] and the mixture samples they separate [time] -> rescaled estimates."""
        estimates, mixture = est_sources.double(), mixture.double()
        pieces, start = [], 0
        while start < estimates.shape[0]:
            end = min(start + self.block - self._in_block, estimates.shape[0])
            piece = estimates[start:end]
            ramp = torch.arange(self._in_block + 1, self._in_block + 1 + end - start, dtype=torch.float64) / self.block
            gains = torch.lerp(self.previous_gains, self.gains, ramp.unsqueeze(1))  # [samples, num_spks]
            pieces.append(piece * gains)
            self._block_gram += piece.T @ piece
            self._block_target += piece.T @ mixture[start:end]
            self._in_block += end - start
            start = end
            if self._in_block == self.block:
                self._end_block()
        return torch.cat(pieces).float() if pieces else est_sources.float()

    def _end_block(self) -> None:
        self.gram = self.decay_per_block * self.gram + self._block_gram
        self.target = self.decay_per_block * self.target + self._block_target
        self._block_gram, self._block_target = torch.zeros_like(self.gram), torch.zeros_like(self.target)
        self._in_block = 0
        self.previous_gains = self.gains
        self.gains = least_squares_gains(self.gram.unsqueeze(0), self.target.unsqueeze(0))[0]
