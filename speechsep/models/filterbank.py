"""SpeechBrain's learned encoder and decoder (`dual_path.Encoder` / `Decoder`), computed as matrix products.

Subclasses with the same constructor, parameters and outputs; only the forward differs. On a CPU, PyTorch runs
a one-input-channel strided Conv1d and, much worse, a ConvTranspose1d through generic convolution kernels, and
the decoder runs once per speaker in every step. Framing the waveform and multiplying by the filters (encoder),
or multiplying by the filters and overlap-adding the frames (decoder), gives the same numbers, faster
(bench/RESULTS.md, "Encoder / decoder"). The configs name these classes; checkpoints are interchangeable with
SpeechBrain's, and exports name SpeechBrain's classes (`speechsep.models.speechbrain_classes`).
"""

import torch
import torch.nn.functional as F
from speechbrain.lobes.models import dual_path


class Encoder(dual_path.Encoder):
    """[batch, time] -> ReLU(filters x frames) [batch, N, frames]; frames of `kernel_size`, hop half of it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv1d
        if self.in_channels != 1 or x.dim() != 2:
            return super().forward(x)
        frames = x.unfold(-1, conv.kernel_size[0], conv.stride[0])  # [batch, frames, kernel]
        return F.relu(frames @ conv.weight[:, 0, :].t()).transpose(1, 2)


class Decoder(dual_path.Decoder):
    """[batch, N, frames] -> [batch, time]: each frame's coefficients times the filters, overlap-added.

    Falls back to ConvTranspose1d for the settings it does not cover (several output channels, bias, padding,
    a kernel that is not a whole number of hops).
    """

    def _is_plain_overlap_add(self) -> bool:
        kernel, hop = self.kernel_size[0], self.stride[0]
        return (
            self.out_channels == 1
            and self.bias is None
            and self.groups == 1
            and self.padding == (0,)
            and self.output_padding == (0,)
            and self.dilation == (1,)
            and kernel % hop == 0
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or not self._is_plain_overlap_add():
            return super().forward(x)
        hop = self.stride[0]
        pieces = self.kernel_size[0] // hop
        frames = x.transpose(1, 2) @ self.weight[:, 0, :]  # [batch, frames, kernel]
        batch, num_frames, _ = frames.shape
        # Piece j of every frame (samples j*hop .. (j+1)*hop) lands j hops after the frame's start.
        signal = 0
        for j in range(pieces):
            piece = frames[..., j * hop : (j + 1) * hop].reshape(batch, num_frames * hop)
            signal = signal + F.pad(piece, (j * hop, (pieces - 1 - j) * hop))
        return signal  # [batch, time], as SpeechBrain's Decoder returns for a [batch, N, frames] input


def encoder_hop(encoder: torch.nn.Module) -> int:
    """Samples between the frames of a learned encoder (SpeechBrain's: its Conv1d's stride, half a window)."""
    encoder = getattr(encoder, "module", encoder)  # under DDP, the wrapped module
    return int(encoder.conv1d.stride[0])


def shortest_input(encoder: torch.nn.Module, masknet: torch.nn.Module, longest: int = 1 << 20) -> int:
    """The fewest samples the model separates: the encoder's window at least, more where the mask network needs
    several frames (Conv-TasNet's dilated convolutions pad by up to their dilation, and reflection padding
    needs more frames than that). Found by trying zero inputs, doubling from the window then bisecting, with
    the modules in eval mode; `longest` if nothing up to it passes (the model fails for another reason)."""
    encoder, masknet = getattr(encoder, "module", encoder), getattr(masknet, "module", masknet)
    modes = [(module, module.training) for module in (encoder, masknet)]

    def accepts(num_samples: int) -> bool:
        parameter = next(encoder.parameters())
        try:
            masknet(encoder(torch.zeros(1, num_samples, device=parameter.device, dtype=parameter.dtype)))
        except (RuntimeError, ValueError, IndexError):  # what too few frames raise in torch's layers
            return False
        return True

    try:
        encoder.eval(), masknet.eval()
        with torch.inference_mode():
            low = int(encoder.conv1d.kernel_size[0]) - 1  # refused: not a single frame
            high = low + 1
            while not accepts(high):
                if high >= longest:
                    return longest
                low, high = high, min(2 * high, longest)
            while high - low > 1:  # low refused, high accepted
                middle = (low + high) // 2
                low, high = (low, middle) if accepts(middle) else (middle, high)
            return high
    finally:
        for module, training in modes:
            module.train(training)
