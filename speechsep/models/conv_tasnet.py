"""Conv-TasNet's mask network (Luo & Mesgarani, 2019) on [batch, channels, frames] tensors.

SpeechBrain's `conv_tasnet.MaskNet` keeps time before channels, so every convolution transposes its input and
output, and it builds each global layer norm from many element-wise operations. Here each step is one kernel:
`nn.Conv1d`, and `GroupNorm(1, C)` for gLN (statistics over channels and frames, a scale and shift per channel).

- `FastMaskNet` is SpeechBrain's MaskNet: same constructor, same function, same checkpoints (SpeechBrain's
  state_dict keys and shapes). The Conv-TasNet configs name it.
- `MaskNet` is the same network with choices SpeechBrain lacks, for CPU training (hparams/demo.yaml): ReLU instead
  of PReLU (whose backward is slow in PyTorch), zero padding (which lets `depthwise_conv` run the dilated
  convolutions as shifted multiply-adds), and softmax masks normalised over the speakers. Its checkpoints are its
  own; SpeechBrain cannot load them.

`MaskNet` also has a causal form (`causal=True`, `norm_type="cLN"`, zero padding): each dilated convolution reads
the current and past frames only, each norm one frame, so frame t of the masks depends on frames up to t alone, and
`MaskNet.step` computes the masks of new frames from a cache of the past (`speechsep.inference.streaming`).
SpeechBrain's causal MaskNet is another function (its causal convolutions skip the current frame), not covered here.
"""

import re

import torch
import torch.nn.functional as F
from torch import nn

from speechsep.errors import RecipeError

ACTIVATIONS = {"prelu": nn.PReLU, "relu": nn.ReLU}
PADDINGS = ("zeros", "reflect")
NORM_TYPES = ("gLN", "cLN")
EPS = 1e-8  # SpeechBrain's layer-norm epsilon


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()


class ChannelNorm(nn.Module):
    """cLN: each frame normalised over its channels, on [batch, channels, frames]. The output is made contiguous
    again: the convolutions after it would otherwise run on a transposed layout, slower in both passes."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2).contiguous()


def _shifted_taps(x: torch.Tensor, weight: torch.Tensor, dilation: int, center: int) -> torch.Tensor:
    """sum_k weight[:, k] * x[..., t + (k - center) * dilation], zero outside [0, frames); weight is [C, P].
    `center` P // 2: the centred ("same") convolution; P - 1: the causal one."""
    frames = x.shape[-1]
    y = x * weight[:, center, None]
    for k in range(weight.shape[1]):
        offset = (k - center) * dilation
        if k == center or abs(offset) >= frames:
            continue
        if offset > 0:
            y[..., : frames - offset].addcmul_(x[..., offset:], weight[:, k, None])
        else:
            y[..., -offset:].addcmul_(x[..., : frames + offset], weight[:, k, None])
    return y


class _DepthwiseConv(torch.autograd.Function):
    """The backward of the shifted taps, written out: the input's gradient is the same taps mirrored, each
    weight's gradient one dot product over frames summed over the batch. Autograd through the slices would allocate
    and fill a zero tensor per tap."""

    @staticmethod
    def forward(ctx, x, weight, dilation, center):
        ctx.save_for_backward(x, weight)
        ctx.dilation, ctx.center = dilation, center
        return _shifted_taps(x, weight, dilation, center)

    @staticmethod
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        dilation, frames, center = ctx.dilation, x.shape[-1], ctx.center
        mirrored = weight.shape[1] - 1 - center
        grad_x = _shifted_taps(grad_y, weight.flip(1), dilation, mirrored) if ctx.needs_input_grad[0] else None
        grad_weight = None
        if ctx.needs_input_grad[1]:
            taps = []
            for k in range(weight.shape[1]):
                offset = (k - center) * dilation
                if abs(offset) >= frames:
                    taps.append(weight.new_zeros(weight.shape[0]))
                elif offset > 0:
                    taps.append(torch.linalg.vecdot(grad_y[..., : frames - offset], x[..., offset:]).sum(0))
                else:
                    taps.append(torch.linalg.vecdot(grad_y[..., -offset:], x[..., : frames + offset]).sum(0))
            grad_weight = torch.stack(taps, 1)
        return grad_x, grad_weight, None, None


def depthwise_conv(x: torch.Tensor, conv: nn.Conv1d, causal: bool = False) -> torch.Tensor:
    """The zero-padded convolution of a bias-free depthwise nn.Conv1d, frames in = frames out: centred ("same",
    `conv(x)` with its padding) or `causal` (`conv` unpadded after dilation * (P - 1) zeros on the left). On a CPU
    computed as shifted multiply-adds, which beat oneDNN's depthwise kernels there (docs/experiments.md)."""
    kernel_size, dilation = conv.kernel_size[0], conv.dilation[0]
    if x.device.type != "cpu":
        return conv(F.pad(x, (dilation * (kernel_size - 1), 0))) if causal else conv(x)
    weight = conv.weight[:, 0]
    if torch.is_autocast_enabled("cpu"):  # in autocast's precision, as it runs the conv
        dtype = torch.get_autocast_dtype("cpu")
        x, weight = x.to(dtype), weight.to(dtype)
    return _DepthwiseConv.apply(x, weight, dilation, kernel_size - 1 if causal else kernel_size // 2)


def _norm(norm_type: str, channels: int) -> nn.Module:
    """gLN: statistics over channels and frames (the whole input); cLN: over each frame's channels."""
    if norm_type not in NORM_TYPES:
        raise ValueError(f"norm_type must be one of {NORM_TYPES}, got {norm_type!r}")
    return nn.GroupNorm(1, channels, eps=EPS) if norm_type == "gLN" else ChannelNorm(channels)


class TemporalBlock(nn.Module):
    """1x1 conv B->H, activation, norm, dilated depthwise conv, activation, norm, 1x1 conv H->B, residual."""

    def __init__(
        self,
        B: int,
        H: int,
        P: int,
        dilation: int,
        activation: str,
        padding: str,
        norm_type: str = "gLN",
        causal: bool = False,
    ):
        super().__init__()
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        self.causal = causal
        self.past_frames = dilation * (P - 1)  # what the causal convolution reads before the current frame
        self.pad = dilation * (P - 1) // 2
        self.reflect = padding == "reflect"
        self.conv_in = nn.Conv1d(B, H, 1, bias=False)
        self.act_in = _activation(activation)
        self.norm_in = _norm(norm_type, H)
        self.depthwise = nn.Conv1d(
            H, H, P, dilation=dilation, groups=H, bias=False, padding=0 if self.reflect or causal else self.pad
        )
        self.act_depthwise = _activation(activation)
        self.norm_depthwise = _norm(norm_type, H)
        self.conv_out = nn.Conv1d(H, B, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm_in(self.act_in(self.conv_in(x)))
        if self.reflect:
            y = self.depthwise(F.pad(y, (self.pad, self.pad), mode="reflect"))
        else:
            y = depthwise_conv(y, self.depthwise, self.causal)
        return x + self._after_depthwise(y)

    def _after_depthwise(self, y: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.norm_depthwise(self.act_depthwise(y)))

    def step(self, x: torch.Tensor, past: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The causal block on new frames, channels last: x [batch, frames, B] given `past` [batch, past_frames, H],
        the depthwise convolution's last input frames (zeros before the stream's start) -> (output, the new past).

        The same function as `forward`, written for a few frames at a time: matrix products and per-frame norms
        on [frames, channels] rows, and the dilated taps as slices of the past, so that a chunk of a stream costs
        a few dozen small operations."""
        y = _frames_last(self.norm_in, _frames_last(self.act_in, F.linear(x, self.conv_in.weight[:, :, 0])))
        y = torch.cat([past, y], dim=1)
        frames, dilation = x.shape[1], self.depthwise.dilation[0]
        taps = self.depthwise.weight[:, 0, :]  # [H, P]; tap k reads (P - 1 - k) * dilation frames back
        out = y[:, :frames] * taps[:, 0]
        for k in range(1, taps.shape[1]):
            out = out.addcmul(y[:, k * dilation : k * dilation + frames], taps[:, k])
        out = _frames_last(self.norm_depthwise, _frames_last(self.act_depthwise, out))
        return x + F.linear(out, self.conv_out.weight[:, :, 0]), y[:, y.shape[1] - self.past_frames :]


def _frames_last(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A block's activation or cLN on channels-last x [batch, frames, channels]."""
    if isinstance(module, ChannelNorm):
        return module.norm(x)
    if isinstance(module, nn.PReLU):  # one slope, or one per channel (the last dimension here)
        return torch.where(x >= 0, x, x * module.weight)
    return module(x)  # elementwise


class MaskNet(nn.Module):
    """Temporal convolutional network estimating one mask per speaker from the encoder's output.

    Arguments follow the paper and SpeechBrain: N encoder channels, B bottleneck channels, H channels inside a
    block, P kernel size, X blocks per repeat (dilations 1 ... 2^(X-1)), R repeats, C speakers, the blocks'
    norm_type (gLN or cLN) and whether their convolutions are causal (which needs cLN: gLN reads the whole input).
    Input [batch, N, frames]; output [C, batch, N, frames], as SpeechBrain's MaskNet.
    """

    SOFTMAX_DIM = 0  # softmax masks sum to one over the speakers

    def __init__(
        self,
        N: int,
        B: int,
        H: int,
        P: int,
        X: int,
        R: int,
        C: int,
        activation: str = "prelu",
        padding: str = "reflect",
        mask_nonlinear: str = "relu",
        norm_type: str = "gLN",
        causal: bool = False,
    ):
        super().__init__()
        if mask_nonlinear not in ("relu", "softmax"):
            raise ValueError(f"mask_nonlinear must be relu or softmax, got {mask_nonlinear!r}")
        if P % 2 == 0 and not causal:
            raise ValueError(f"the kernel size P must be odd to keep the number of frames, got {P}")
        if causal and (norm_type != "cLN" or padding != "zeros"):
            raise ValueError(
                f"a causal MaskNet needs norm_type cLN and padding zeros (got {norm_type!r}, {padding!r}): gLN and "
                "reflection read frames after the current one"
            )
        self.C = C
        self.mask_nonlinear = mask_nonlinear
        self.causal = causal
        self.layer_norm = ChannelNorm(N)
        self.bottleneck = nn.Conv1d(N, B, 1, bias=False)
        self.blocks = nn.Sequential(
            *[TemporalBlock(B, H, P, 2**x, activation, padding, norm_type, causal) for _ in range(R) for x in range(X)]
        )
        self.mask_conv = nn.Conv1d(B, C * N, 1, bias=False)

    def forward(self, mixture_w: torch.Tensor) -> torch.Tensor:
        return self._masks(self.blocks(self.bottleneck(self.layer_norm(mixture_w))), mixture_w.shape)

    def _masks(self, y: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        batch, channels, frames = shape
        return self._nonlinear(self.mask_conv(y).view(batch, self.C, channels, frames).transpose(0, 1))

    def _nonlinear(self, score: torch.Tensor) -> torch.Tensor:
        return F.softmax(score, dim=self.SOFTMAX_DIM) if self.mask_nonlinear == "softmax" else F.relu(score)

    @property
    def receptive_field(self) -> int:
        """How many frames frame t of the masks depends on, t included: the past ones for a causal network; for
        a non-causal one, as many spread around t."""
        return 1 + sum(block.past_frames for block in self.blocks)

    def initial_state(self, batch: int = 1) -> list[torch.Tensor]:
        """The causal network's memory before a stream's first frame: zeros, one tensor per block (what the
        causal convolutions pad with)."""
        if not self.causal:
            raise ValueError("only a causal MaskNet computes frame by frame")
        weight = self.bottleneck.weight
        return [weight.new_zeros(batch, block.past_frames, block.depthwise.in_channels) for block in self.blocks]

    def step(self, mixture_w: torch.Tensor, state: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The masks of new frames [batch, N, frames] of a stream whose past is `state` (`initial_state`, then
        what the previous step returned): (masks [C, batch, N, frames], the new state). Steps over a stream's
        frames in pieces of any size compute `forward` of the whole, to float rounding (in fp32)."""
        if not self.causal:
            raise ValueError("only a causal MaskNet computes frame by frame")
        batch, channels, frames = mixture_w.shape
        y = F.linear(self.layer_norm.norm(mixture_w.transpose(1, 2)), self.bottleneck.weight[:, :, 0])
        new_state = []
        for block, past in zip(self.blocks, state):
            y, past = block.step(y, past)
            new_state.append(past)
        score = F.linear(y, self.mask_conv.weight[:, :, 0]).view(batch, frames, self.C, channels).permute(2, 0, 3, 1)
        return self._nonlinear(score), new_state


# SpeechBrain's parameter names -> ours: the layers outside the blocks, then the parts of each block.
_SPEECHBRAIN_NAMES = {
    "layer_norm.gamma": "layer_norm.norm.weight",
    "layer_norm.beta": "layer_norm.norm.bias",
    "bottleneck_conv1x1.conv.weight": "bottleneck.weight",
    "mask_conv1x1.conv.weight": "mask_conv.weight",
}
_SPEECHBRAIN_BLOCK_PARTS = {
    "conv.conv.weight": "conv_in.weight",
    "act.weight": "act_in.weight",
    "norm.gamma": "norm_in.weight",
    "norm.beta": "norm_in.bias",
    "DSconv.conv_0.conv.weight": "depthwise.weight",
    "DSconv.act.weight": "act_depthwise.weight",
    "DSconv.act_0.gamma": "norm_depthwise.weight",  # SpeechBrain names the norm after the activation
    "DSconv.act_0.beta": "norm_depthwise.bias",
    "DSconv.conv_1.conv.weight": "conv_out.weight",
}
_SPEECHBRAIN_BLOCK = re.compile(r"temporal_conv_net\.temporalblock_(\d+)_(\d+)\.layers\.(.+)")


def from_speechbrain(state_dict: dict, X: int) -> dict:
    """A state_dict of SpeechBrain's `conv_tasnet.MaskNet` (X blocks per repeat) renamed for `MaskNet`; loaded
    into a MaskNet built with activation="prelu", padding="reflect" it is the same network. Only for the
    non-causal gLN MaskNet: its cLN variant has the same parameter names and shapes, so nothing here can tell.
    """
    converted = {}
    for name, value in state_dict.items():
        block = _SPEECHBRAIN_BLOCK.fullmatch(name)
        if block and block[3] in _SPEECHBRAIN_BLOCK_PARTS:
            new_name = f"blocks.{int(block[1]) * X + int(block[2])}.{_SPEECHBRAIN_BLOCK_PARTS[block[3]]}"
        elif name in _SPEECHBRAIN_NAMES:
            new_name = _SPEECHBRAIN_NAMES[name]
        else:
            raise KeyError(f"{name!r} is not a parameter of a non-causal gLN SpeechBrain MaskNet")
        # SpeechBrain's layer norms keep their scale and shift as [1, 1, C]; ours as [C].
        converted[new_name] = value.reshape(-1) if "norm" in new_name else value
    return converted


def to_speechbrain(state_dict: dict, X: int) -> dict:
    """The inverse of `from_speechbrain`: a `MaskNet` state_dict with SpeechBrain's names and shapes."""
    names = {ours: theirs for theirs, ours in _SPEECHBRAIN_NAMES.items()}
    parts = {ours: theirs for theirs, ours in _SPEECHBRAIN_BLOCK_PARTS.items()}
    converted = {}
    for name, value in state_dict.items():
        block = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
        if block and block[2] in parts:
            index = int(block[1])
            new_name = f"temporal_conv_net.temporalblock_{index // X}_{index % X}.layers.{parts[block[2]]}"
        elif name in names:
            new_name = names[name]
        else:
            raise KeyError(f"{name!r} has no counterpart in SpeechBrain's MaskNet")
        converted[new_name] = value.reshape(1, 1, -1) if "norm" in name else value
    return converted


class FastMaskNet(MaskNet):
    """SpeechBrain's Conv-TasNet `MaskNet`, computed channels-first: same arguments, outputs and checkpoints.

    Its state_dict has SpeechBrain's keys and shapes, so checkpoints load in either class. It covers the variant
    the configs use, gLN and non-causal; the others are refused (SpeechBrain's class computes them).
    """

    SOFTMAX_DIM = 2  # SpeechBrain normalises softmax masks over the encoder's channels

    def __init__(
        self,
        N: int,
        B: int,
        H: int,
        P: int,
        X: int,
        R: int,
        C: int,
        norm_type: str = "gLN",
        causal: bool = False,
        mask_nonlinear: str = "relu",
    ):
        if norm_type != "gLN" or causal:
            raise RecipeError(
                f"FastMaskNet computes SpeechBrain's gLN, non-causal MaskNet only (got norm_type {norm_type!r}, "
                f"causal {causal!r}): name speechbrain.lobes.models.conv_tasnet.MaskNet in the config for that variant"
            )
        super().__init__(N, B, H, P, X, R, C, activation="prelu", padding="reflect", mask_nonlinear=mask_nonlinear)
        self.X = X
        self.register_state_dict_post_hook(_save_as_speechbrain)
        self.register_load_state_dict_pre_hook(_load_from_speechbrain)


def _save_as_speechbrain(module, state_dict, prefix, local_metadata) -> None:
    ours = {key[len(prefix) :]: state_dict.pop(key) for key in [k for k in state_dict if k.startswith(prefix)]}
    state_dict.update({prefix + key: value for key, value in to_speechbrain(ours, module.X).items()})


def _load_from_speechbrain(module, state_dict, prefix, *args) -> None:
    own = [key for key in state_dict if key.startswith(prefix)]
    theirs = [
        key
        for key in own
        if key[len(prefix) :].startswith("temporal_conv_net.") or key[len(prefix) :] in _SPEECHBRAIN_NAMES
    ]
    converted = from_speechbrain({key[len(prefix) :]: state_dict.pop(key) for key in theirs}, module.X)
    state_dict.update({prefix + key: value for key, value in converted.items()})
