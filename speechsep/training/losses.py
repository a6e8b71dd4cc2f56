"""Permutation-invariant SI-SNR that ignores zero padding.

SpeechBrain's `get_si_snr_with_pitwrapper` treats the padding of a batch as signal: a short example padded
to the longest one gets its mean and energy diluted. Here every example is measured on its own length, with
SpeechBrain's EPS conventions, so unpadded examples give exactly SpeechBrain's numbers. `threshold_by_loss` is
the training step's filter of the per-example losses.
"""

import itertools

import torch
from speechbrain.dataio.dataio import length_to_mask

EPS = 1e-8


def length_mask(
    lengths: torch.Tensor | None, batch: int, time: int, device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Mask [batch, time] of the samples within each example's true length (None = all valid).

    True length = round(relative length * time), SpeechBrain's convention.
    """
    if lengths is None:
        return torch.ones(batch, time, dtype=dtype, device=device)
    lengths = torch.as_tensor(lengths, device=device).double()
    if lengths.shape != (batch,):
        raise ValueError(f"lengths has shape {tuple(lengths.shape)}, expected ({batch},)")
    if (lengths <= 0).any() or (lengths > 1 + 1e-6).any():
        raise ValueError(f"relative lengths must lie in (0, 1], got {lengths.tolist()}")
    return length_to_mask(true_lengths(lengths, time), max_len=time, dtype=dtype, device=device)


def true_lengths(lengths: torch.Tensor, time: int) -> torch.Tensor:
    """Samples [batch] of each example: round(relative length * time), at least 1 (SpeechBrain's convention)."""
    return torch.round(torch.as_tensor(lengths).double() * time).clamp(min=1).long()


def pairwise_si_snr(
    est_sources: torch.Tensor,
    sources: torch.Tensor,
    lengths: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """SI-SNR in dB of every (estimate, reference) pair: [batch, num_est, num_ref], returned in `dtype`.

    est_sources, sources: [batch, time, num_spks]; lengths: relative lengths [batch]. The energies of
    SpeechBrain's `cal_si_snr` (projection on the reference, residual) are expanded into inner products, so
    that no [batch, time, num_est, num_ref] tensor is built: in a demo training step those tensors and their
    gradients cost more than the decoder. Computed in float64 whatever the autocast: the residual's energy is
    then a difference of large terms, which float32 rounds visibly at high SI-SNR and bf16/fp16 would cap
    (tests/test_losses.py).
    """
    with torch.autocast(device_type=sources.device.type, enabled=False):
        batch, time, _ = sources.shape
        mask = length_mask(lengths, batch, time, sources.device, torch.float64).unsqueeze(-1)  # [batch, time, 1]
        num_samples = mask.sum(dim=1, keepdim=True)  # [batch, 1, 1]

        def zero_mean(signals: torch.Tensor) -> torch.Tensor:
            signals = signals.double() * mask
            return (signals - signals.sum(dim=1, keepdim=True) / num_samples) * mask

        ests, refs = zero_mean(est_sources), zero_mean(sources)
        dot = torch.einsum("bti,btj->bij", ests, refs)  # [batch, num_est, num_ref]
        est_energy = ests.pow(2).sum(dim=1).unsqueeze(2)  # [batch, num_est, 1]
        ref_energy = refs.pow(2).sum(dim=1).unsqueeze(1)  # [batch, 1, num_ref]
        # proj = dot * ref / (ref_energy + EPS) and noise = est - proj, as in cal_si_snr.
        scale = dot / (ref_energy + EPS)
        proj_energy = scale.pow(2) * ref_energy
        noise_energy = (est_energy - 2 * scale * dot + proj_energy).clamp(min=0)
        return (10 * torch.log10(proj_energy / (noise_energy + EPS) + EPS)).to(dtype)


def best_permutation(pairwise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Best assignment of estimates to references from a [batch, num_est, num_ref] score matrix.

    Returns (mean score of the best permutation [batch], perm [batch, num_ref]) where estimate perm[b, j]
    goes with reference j.
    """
    num_spks = pairwise.shape[-1]
    perms = torch.tensor(list(itertools.permutations(range(num_spks))), device=pairwise.device)
    ref_index = torch.arange(num_spks, device=pairwise.device)
    # scores[b, p] = mean_j pairwise[b, perms[p, j], j]
    scores = pairwise[:, perms, ref_index].mean(dim=-1)
    best_score, best = scores.max(dim=1)
    return best_score, perms[best]


def pit_si_snr_loss(
    est_sources: torch.Tensor, sources: torch.Tensor, lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-example negative SI-SNR under the best permutation, shape [batch] (lower is better)."""
    best_score, _ = best_permutation(pairwise_si_snr(est_sources, sources, lengths))
    return -best_score


def threshold_by_loss(
    loss_per_example: torch.Tensor, threshold: float | None, upper_limit: float
) -> tuple[torch.Tensor | None, str | None, int]:
    """The mean loss of the examples worse than `threshold` dB (None: every example), or why to skip the batch;
    returns (mean loss or None, skip reason or None, number of examples dropped).

    Examples already separated better than the threshold carry no useful gradient. A non-finite loss anywhere
    skips the batch: dropping just that example would hide a broken input (and upstream's filter silently drops
    NaN but back-propagates -inf).
    """
    keep = loss_per_example > threshold if threshold is not None else torch.ones_like(loss_per_example, dtype=bool)
    dropped = int((~keep).sum())
    if not torch.isfinite(loss_per_example).all():
        return None, "non-finite loss", dropped
    if not keep.any():
        return None, f"every example below the threshold of {threshold} dB", dropped
    loss = loss_per_example[keep].mean()
    if loss >= upper_limit:
        return None, f"loss {loss.detach().item():.3g} >= loss_upper_lim {upper_limit}", dropped
    return loss, None, dropped
