"""Separating a mixture of any length with a separator: windows, overlap-add, test-time shifts, consistency.

A separator is never run on a whole long file, whose memory would grow with its length: the mixture is cut
into overlapping windows, a batch of windows goes through the model at a time, each window's estimates are
rescaled to the mixture's level, their speaker order is aligned to the previous window on the samples both
share (best permutation by correlation), and they are overlap-added with Hann tapers divided by the sum of
the tapers at each sample, so that the weights sum to one for any hop shorter than the window (two or more
windows overlapping). Peak memory is then the input and output buffers plus one batch of windows, whatever
the file's length. `train.py`'s test stage separates each utterance alone (`separate_each`), with the shifts
and the mixture consistency.
"""

import math
from collections.abc import Callable

import torch
from tqdm import tqdm

from speechsep.training.hardware import autocast
from speechsep.training.losses import best_permutation, true_lengths

SeparateBatch = Callable[[torch.Tensor], torch.Tensor]  # mixture [batch, time] -> est_sources [batch, time, num_spks]


def match_mixture_level(est_sources: torch.Tensor, mixture: torch.Tensor, ridge: float = 1e-6) -> torch.Tensor:
    """Rescale each estimate so that their sum fits the mixture in the least-squares sense.

    Separators trained with SI-SNR output each source at an arbitrary scale, different in every window; the
    gains g [batch, num_spks] minimising ||mixture - sum_k g_k est_k||^2 give the estimates the mixture's level
    (in a clean mixture, the sources' own level) and make consecutive windows agree. A gain can only amplify
    an estimate as far as the mixture needs it. Diagonal loading (`ridge` times each estimate's energy, plus a
    floor) keeps the system solvable when estimates are alike or silent: identical estimates share the
    mixture equally, a silent window gives silence.

    est_sources: [batch, time, num_spks]; mixture: [batch, time] -> [batch, time, num_spks].
    """
    estimates = est_sources.double()
    gram = estimates.transpose(1, 2) @ estimates  # [batch, num_spks, num_spks]
    target = (estimates.transpose(1, 2) @ mixture.double().unsqueeze(-1)).squeeze(-1)  # [batch, num_spks]
    gains = least_squares_gains(gram, target, ridge)  # [batch, num_spks]
    return (estimates * gains.unsqueeze(1)).to(est_sources.dtype)


def least_squares_gains(gram: torch.Tensor, target: torch.Tensor, ridge: float = 1e-6) -> torch.Tensor:
    """The gains g solving (gram + loading) g = target: gram [batch, num_spks, num_spks] of the estimates' inner
    products, target [batch, num_spks] of their inner products with the mixture, loading as `match_mixture_level`
    says. -> [batch, num_spks]"""
    energy = gram.diagonal(dim1=-2, dim2=-1)  # [batch, num_spks]
    loading = ridge * energy + 1e-9 * energy.mean(dim=-1, keepdim=True) + 1e-30
    return torch.linalg.solve(gram + torch.diag_embed(loading), target)


def align_to_previous(previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """The speaker order of `current` that best matches `previous` on the samples they share.

    previous, current: [overlap, num_spks] -> index tensor [num_spks]; `current[:, order]` follows `previous`.
    Scores are normalised correlations; silent overlaps (all scores 0) keep the order as it is.
    """
    previous = previous.double() / (previous.double().norm(dim=0, keepdim=True) + 1e-8)
    current = current.double() / (current.double().norm(dim=0, keepdim=True) + 1e-8)
    correlation = current.T @ previous  # [num_spks (current: estimates), num_spks (previous: references)]
    return best_permutation(correlation.unsqueeze(0))[1][0]


def separate_shifted(
    separate_batch: SeparateBatch,
    mixture: torch.Tensor,
    shifts: int,
    hop: int,
    first_view: torch.Tensor | None = None,
) -> torch.Tensor:
    """The mean of the estimates of `shifts` copies of the mixture, delayed by offsets spread over one `hop`.

    A learned encoder reads the mixture in frames `hop` samples apart, so a delay of a fraction of a hop gives
    the model another view of the same signal and slightly different errors; averaging the views is a cheap
    ensemble (test-time augmentation, like Demucs' --shifts). Each view's estimates are brought to the
    mixture's level (`match_mixture_level`) and into the speaker order of the first view before averaging.
    With shifts=1 this is `separate_batch(mixture)` itself. `first_view`, if given, is `separate_batch(mixture)`
    already computed (the undelayed view), so that a caller that also wants it plain separates once less.

    mixture: [batch, time] -> est_sources [batch, time, num_spks].
    """
    if shifts < 1 or shifts > hop:
        raise ValueError(f"shifts must lie in [1, hop={hop}], got {shifts}")
    if shifts == 1:
        return separate_batch(mixture) if first_view is None else first_view
    num_samples = mixture.shape[1]
    total = first = None
    for k in range(shifts):
        offset = k * hop // shifts
        if k == 0 and first_view is not None:
            view = first_view
        else:
            view = separate_batch(torch.nn.functional.pad(mixture, (offset, 0)))[:, offset : offset + num_samples]
        estimates = match_mixture_level(view, mixture)
        if first is None:
            first, total = estimates, estimates.clone()
        else:
            for b in range(mixture.shape[0]):
                total[b] += estimates[b][:, align_to_previous(first[b], estimates[b])]
    return total / shifts


def in_precision(separate_batch: SeparateBatch, precision: str, device: str) -> SeparateBatch:
    """`separate_batch` run under autocast in `precision` ("fp32", "bf16" or "fp16") on `device`, its
    estimates returned in float32 whatever the model computed in."""
    if precision == "fp32":
        return separate_batch

    def separate(mixture: torch.Tensor) -> torch.Tensor:
        with autocast(precision, device):
            est_sources = separate_batch(mixture)
        return est_sources.float()

    return separate


def mixture_consistency(est_sources: torch.Tensor, mixture: torch.Tensor) -> torch.Tensor:
    """Estimates that sum to the mixture: what they leave out is shared equally between them.

    The unweighted mixture-consistency projection of Wisdom et al. (ICASSP 2019), applied at test time after
    `match_mixture_level` (estimates at an arbitrary scale would get the whole mixture added). Only for
    mixtures that are the sum of the sources: on noisy ones the noise would be shared out too.

    est_sources: [batch, time, num_spks]; mixture: [batch, time] -> [batch, time, num_spks].
    """
    estimates = match_mixture_level(est_sources, mixture)
    residual = mixture.to(estimates.dtype) - estimates.sum(dim=-1)
    return estimates + residual.unsqueeze(-1) / estimates.shape[-1]


def with_mixture_consistency(separate_batch: SeparateBatch) -> SeparateBatch:
    """`separate_batch` followed by `mixture_consistency`."""

    def separate(mixture: torch.Tensor) -> torch.Tensor:
        return mixture_consistency(separate_batch(mixture), mixture)

    return separate


def hann_taper(window: int) -> torch.Tensor:
    """A Hann window of `window` samples taken between sample edges, so that no weight is zero: [window] float64."""
    return torch.sin(math.pi * (torch.arange(window, dtype=torch.float64) + 0.5) / window) ** 2


def taper_by_block(window: int, hop: int) -> torch.Tensor:
    """The taper cut into `hop`-long blocks: row m holds what a window weighs on its (m+1)-th block of samples.

    -> [ceil(window / hop), hop] float64, zero past the window's end. The windows that cover an output block
    started 0, 1, ... blocks earlier, so the sum of their tapers there is a sum of rows.
    """
    num_rows = math.ceil(window / hop)
    return torch.nn.functional.pad(hann_taper(window), (0, num_rows * hop - window)).view(num_rows, hop)


def even_windows(num_samples: int, window: int, hop: int, min_window: int = 1) -> tuple[int, int]:
    """The window and hop that cover `num_samples` with the fewest windows of at most `window` samples that
    overlap by `window - hop`, all of one length, the last one ending at the input's end (to a few samples),
    and none shorter than `min_window` (a model's shortest input; then the last one is padded).

    Windows of the longest length would leave the last one mostly padding: a file one second longer than the
    window would cost two whole windows. Spread evenly, the model separates the input plus the overlaps only.
    -> (window, hop) in samples, with the same overlap; `num_samples` must exceed `window`.
    """
    overlap = window - hop
    num_windows = math.ceil((num_samples - overlap) / hop)
    even = max(math.ceil((num_samples + (num_windows - 1) * overlap) / num_windows), min(min_window, window))
    return even, even - overlap


def separate_long(
    separate_batch: SeparateBatch,
    mixture: torch.Tensor,
    window: int,
    hop: int,
    batch_size: int = 1,
    progress: bool | None = False,
    description: str | None = None,
    min_window: int = 1,
) -> torch.Tensor:
    """Separate a mixture of any length by overlap-add of windows, keeping each speaker on one track.

    mixture: [time] -> est_sources [time, num_spks], each window's estimates at the mixture's level
    (`match_mixture_level`). A mixture of at most `window` samples is separated in one pass. Otherwise windows
    of at most `window` samples (at least `min_window`) overlapping by `window - hop` are spread evenly over it
    (`even_windows`), go through `separate_batch` `batch_size` at a time, are put in the speaker order of the
    previous window on the samples they share, and are overlap-added with weights that sum to one at every
    sample (`normalise_overlap_add`). `progress`: a tqdm bar (None: only on a terminal).
    """
    if not 0 < hop < window:
        raise ValueError(f"hop ({hop} samples) must be positive and shorter than the window ({window}) so they overlap")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    num_samples = mixture.shape[0]
    if num_samples <= window:
        return match_mixture_level(separate_batch(mixture.unsqueeze(0)).cpu(), mixture.unsqueeze(0))[0]

    window, hop = even_windows(num_samples, window, hop, min_window)
    overlap = window - hop
    num_windows = math.ceil((num_samples - overlap) / hop)  # the last one reaches the end, no other one does
    taper = hann_taper(window).float()
    est_sources = None  # [time, num_spks], allocated once the number of speakers is known
    previous_tail = None  # the last window's estimates on the samples it shares with the next one
    disable = None if progress is None else not progress  # tqdm: None disables the bar off a terminal
    with tqdm(total=num_windows, unit="window", desc=description, disable=disable, leave=False) as bar:
        for first in range(0, num_windows, batch_size):
            starts = [k * hop for k in range(first, min(first + batch_size, num_windows))]
            chunks = torch.zeros(len(starts), window, dtype=mixture.dtype)  # [batch, window]
            for row, start in enumerate(starts):
                piece = mixture[start : start + window]
                chunks[row, : piece.shape[0]] = piece
            estimates = match_mixture_level(separate_batch(chunks).cpu().float(), chunks)  # [batch, window, num_spks]
            if est_sources is None:
                est_sources = torch.zeros(num_samples, estimates.shape[-1])
            for start, estimate in zip(starts, estimates):
                if previous_tail is not None:
                    estimate = estimate[:, align_to_previous(previous_tail, estimate[:overlap])]
                previous_tail = estimate[hop:]
                end = min(start + window, num_samples)
                est_sources[start:end] += (estimate * taper.unsqueeze(-1))[: end - start]
            bar.update(len(starts))
    normalise_overlap_add(est_sources, window, hop, num_windows)
    return est_sources


def normalise_overlap_add(est_sources: torch.Tensor, window: int, hop: int, num_windows: int) -> None:
    """Divide an overlap-add of Hann-tapered windows (starting every `hop` samples) by the sum of the tapers at
    each sample, in place, so that the windows' weights sum to one however many of them overlap there.

    Done one `hop`-long block at a time: a block is covered by the windows that started up to
    `ceil(window / hop) - 1` blocks before it; inside the file all of them exist and every block has the same
    sum, near its start and end fewer do. No full-length weight tensor is made. est_sources: [time, num_spks].
    """
    rows = taper_by_block(window, hop)  # [num_rows, hop]
    num_rows = rows.shape[0]
    full_cover = 1 / rows.sum(dim=0)
    for block in range(math.ceil(est_sources.shape[0] / hop)):
        if num_rows - 1 <= block < num_windows:
            scale = full_cover
        else:  # windows 0 ... num_windows - 1 only: the first of those covering this block, and the last
            scale = 1 / rows[max(0, block - num_windows + 1) : min(block, num_rows - 1) + 1].sum(dim=0)
        samples = est_sources[block * hop : (block + 1) * hop]
        samples *= scale[: samples.shape[0]].float().unsqueeze(-1)


def separate_each(
    separate_batch: SeparateBatch,
    mixture: torch.Tensor,
    lengths: torch.Tensor,
    shifts: int = 1,
    hop: int = 1,
    consistent: bool = False,
    with_options: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`separate_batch` on each utterance of a padded batch alone, on its true length, re-padded with zeros.

    The global layer norms of Conv-TasNet and SepFormer (and SepFormer's attention) would otherwise take the
    padding into account, and test scores would depend on the batch size. Returns the plain estimates and,
    `with_options`, those averaged over `shifts` sub-hop delays (`separate_shifted`) and, if `consistent`, made
    to sum to the mixture (`mixture_consistency`), else None. The plain pass is the undelayed view of the shifted
    ones: each utterance is separated once less.

    mixture: [batch, time]; lengths: relative, [batch] -> two est_sources [batch, time, num_spks] (or None).
    """
    plain, with_test_options = [], []
    for b, num_samples in enumerate(true_lengths(lengths, mixture.shape[1]).tolist()):
        utterance = mixture[b : b + 1, :num_samples]
        plain.append(separate_batch(utterance))
        if with_options:
            est = separate_shifted(separate_batch, utterance, shifts, hop, first_view=plain[-1])
            with_test_options.append(mixture_consistency(est, utterance) if consistent else est)
    return _padded(plain, mixture), (_padded(with_test_options, mixture) if with_options else None)


def _padded(est_sources: list, mixture: torch.Tensor) -> torch.Tensor:
    """Per-utterance estimates [1, length, num_spks] zero-padded into one [batch, time, num_spks] tensor."""
    padded = est_sources[0].new_zeros(*mixture.shape, est_sources[0].shape[-1])
    for b, est in enumerate(est_sources):
        padded[b, : est.shape[1]] = est[0]
    return padded
