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


def active_references(sources: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Which references hold a talker: [batch, num_spks] bool. A reference that is zero over the whole example is
    no talker (dynamic mixing's and the manifests' convention for mixtures of fewer talkers than outputs)."""
    batch, time, _ = sources.shape
    mask = length_mask(lengths, batch, time, sources.device, sources.dtype).unsqueeze(-1)
    return (sources * mask).abs().amax(dim=1) > 0


def relative_level_db(
    est_sources: torch.Tensor, mixture: torch.Tensor, lengths: torch.Tensor | None = None, floor_db: float | None = None
) -> torch.Tensor:
    """Energy of each estimate relative to the mixture's, in dB: [batch, num_spks]. With `floor_db` (positive), no
    lower than -floor_db, and flat there: an output already that far below the mixture earns nothing more, and gets no
    gradient (a vanishing one would still be followed at full step by Adam, until the output is silent for every
    input: docs/talker-counting.md)."""
    with torch.autocast(device_type=est_sources.device.type, enabled=False):
        batch, time, _ = est_sources.shape
        mask = length_mask(lengths, batch, time, est_sources.device, torch.float64)
        est_energy = (est_sources.double() * mask.unsqueeze(-1)).pow(2).sum(dim=1)  # [batch, num_spks]
        mixture_energy = (mixture.double() * mask).pow(2).sum(dim=1, keepdim=True) + EPS  # [batch, 1]
        ratio = est_energy / mixture_energy
        floor = 10 ** (-floor_db / 10) if floor_db is not None else EPS
        return (10 * torch.log10(ratio.clamp(min=floor))).to(torch.promote_types(est_sources.dtype, torch.float32))


def mixture_gain(est_sources: torch.Tensor, mixture: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """The one gain per example [batch, 1] that brings the sum of the estimates closest to the mixture (least squares):
    the estimates' common scale, which a decoder is free to get wrong, while their levels relative to one another count."""
    with torch.autocast(device_type=est_sources.device.type, enabled=False):
        batch, time, _ = est_sources.shape
        mask = length_mask(lengths, batch, time, est_sources.device, torch.float64)
        total = est_sources.double().sum(dim=-1) * mask  # [batch, time]
        gain = (total * mixture.double()).sum(dim=1, keepdim=True) / (total.pow(2).sum(dim=1, keepdim=True) + EPS)
        return gain.to(torch.promote_types(est_sources.dtype, torch.float32))


def talker_loss(
    est_sources: torch.Tensor,
    sources: torch.Tensor,
    mixture: torch.Tensor,
    lengths: torch.Tensor | None = None,
    si_snr_max_db: float = 30.0,
    silence_floor_db: float = 40.0,
    silence_weight: float = 1.0,
) -> torch.Tensor:
    """Per-example loss [batch] for mixtures of fewer talkers than outputs (lower is better), under the best
    permutation: each talker's output scored by its SI-SNR, at most `si_snr_max_db`; each output left without a talker
    by its level relative to the mixture, down to `silence_floor_db` (`relative_level_db`), weighted by
    `silence_weight`; averaged over the outputs. References that are zero hold no talker (`active_references`).

    The levels are taken once the estimates are brought to the mixture's scale together (`mixture_gain`: one gain for
    all, which a decoder is free to get wrong). Both bounds are flat: past them nothing is earned and no gradient
    flows, so that Adam does not drive an output to silence for every input (what the variants measured in
    docs/talker-counting.md did).
    """
    est_sources = est_sources * mixture_gain(est_sources, mixture, lengths).unsqueeze(-1)
    pairwise = pairwise_si_snr(est_sources, sources, lengths).clamp(max=si_snr_max_db)
    silence = -relative_level_db(est_sources, mixture, lengths, silence_floor_db)  # [batch, num_est]
    active = active_references(sources, lengths).unsqueeze(1)  # [batch, 1, num_ref]
    silence = silence_weight * silence.unsqueeze(-1).to(pairwise.dtype)
    best_score, _ = best_permutation(torch.where(active, pairwise, silence))
    return -best_score


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
