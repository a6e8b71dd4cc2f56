"""Training-time augmentation of separation batches (upstream SepFormer's speed perturbation and shifts).

Each source is perturbed on its own, then the mixture is rebuilt from the perturbed sources (plus the
noise, for noisy corpora), so the mixture always equals what the model is asked to separate.
"""

import torch


def perturb_sources(
    sources: torch.Tensor,
    lengths: torch.Tensor,
    speed_perturb: torch.nn.Module | None = None,
    max_shift: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Speed-perturb and circularly shift each source independently, crop all to the shortest.

    sources: [batch, time, num_spks]; lengths: relative lengths [batch]. Returns the new sources and the new
    relative lengths (an example's content now ends where its longest perturbed source ends).
    """
    perturbed, abs_lengths = [], []
    for k in range(sources.shape[-1]):
        source = sources[..., k]
        if speed_perturb is not None:
            source = speed_perturb(source)  # one random speed per call, the whole batch resampled alike
        # padding is resampled with the content, so relative lengths are unchanged for this source
        abs_lengths.append(lengths * source.shape[1])
        if max_shift > 0:
            shift = int(torch.randint(-max_shift, max_shift + 1, (1,)))
            source = torch.roll(source, shifts=shift, dims=1)
        perturbed.append(source)
    new_time = min(source.shape[1] for source in perturbed)
    sources = torch.stack([source[:, :new_time] for source in perturbed], dim=-1)
    new_lengths = (torch.stack(abs_lengths).max(dim=0).values / new_time).clamp(max=1.0)
    return sources, new_lengths


def fit_length(signal: torch.Tensor, time: int) -> torch.Tensor:
    """Crop or zero-pad `signal` [batch, time, ...] along dim 1 to `time` samples."""
    if signal.shape[1] >= time:
        return signal[:, :time]
    pad = torch.zeros(signal.shape[0], time - signal.shape[1], *signal.shape[2:], dtype=signal.dtype, device=signal.device)
    return torch.cat([signal, pad], dim=1)
