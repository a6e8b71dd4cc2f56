"""Chunked separation and shift averaging, with oracle separators whose only error can be the chunking's."""

import math

import numpy as np
import pytest
import torch

from speechsep.evaluation.metrics import pit_si_snr
from speechsep.inference.files import SeparationOptions
from speechsep.inference.separation import (
    match_mixture_level,
    mixture_consistency,
    separate_long,
    separate_shifted,
    with_mixture_consistency,
)
from tests.helpers import (
    SAMPLE_RATE,
    OracleSeparator,
    two_speaker_recording,
)


def segment_permutations(est_sources: torch.Tensor, sources: torch.Tensor, segment: int) -> list[list[int]]:
    """The best speaker order of the estimates on each `segment`-sample stretch where both speakers talk."""
    orders = []
    for start in range(0, sources.shape[0] - segment + 1, segment):
        piece = sources[start : start + segment]
        if (piece.abs().amax(dim=0) > 0.05).all():
            _, perm = pit_si_snr(est_sources[None, start : start + segment], piece[None])
            orders.append(perm[0].tolist())
    return orders


def test_chunked_separation_keeps_each_speaker_on_one_track():
    mixture, sources = two_speaker_recording(30.0)
    window, hop = 2 * SAMPLE_RATE, SAMPLE_RATE
    oracle = OracleSeparator(mixture, sources)
    est_sources = separate_long(oracle.separate_batch, mixture, window, hop, batch_size=3)

    orders = segment_permutations(est_sources, sources, segment=SAMPLE_RATE // 2)
    assert len(orders) > 20
    assert all(order == orders[0] for order in orders)


def test_chunked_separation_restores_each_speaker_at_the_mixture_level():
    mixture, sources = two_speaker_recording(20.0, seed=1)
    hop = SAMPLE_RATE
    oracle = OracleSeparator(mixture, sources)
    est_sources = separate_long(oracle.separate_batch, mixture, 2 * hop, hop)

    _, perm = pit_si_snr(est_sources[None], sources[None])
    assert (est_sources[:, perm[0]] - sources).abs().max() < 1e-3


def test_model_sees_at_most_a_batch_of_windows():
    mixture, sources = two_speaker_recording(10.0)
    oracle = OracleSeparator(mixture, sources)
    separate_long(oracle.separate_batch, mixture, window=1500, hop=1000, batch_size=4)
    assert max(shape[0] for shape in oracle.input_shapes) == 4
    assert len({shape[1] for shape in oracle.input_shapes}) == 1 and oracle.input_shapes[0][1] <= 1500


@pytest.mark.parametrize("num_samples", [1501, 2000, 2499, 2500, 2501, 10_001, 80_000])
def test_windows_are_spread_evenly_so_the_model_separates_little_more_than_the_input(num_samples):
    window, hop = 1500, 1000
    mixture, sources = two_speaker_recording(num_samples / SAMPLE_RATE)
    oracle = OracleSeparator(mixture, sources)
    separate_long(oracle.separate_batch, mixture, window=window, hop=hop, batch_size=1)
    lengths = {shape[1] for shape in oracle.input_shapes}
    fewest = math.ceil((num_samples - (window - hop)) / hop)
    assert len(lengths) == 1 and max(lengths) <= window and len(oracle.input_shapes) == fewest
    separated = sum(shape[1] for shape in oracle.input_shapes)
    assert separated < num_samples + (fewest - 1) * (window - hop) + fewest  # the overlaps and rounding only


def test_input_shorter_than_a_window_is_separated_in_one_pass():
    mixture, sources = two_speaker_recording(3.0)
    oracle = OracleSeparator(mixture, sources)
    est_sources = separate_long(oracle.separate_batch, mixture, window=4 * SAMPLE_RATE, hop=SAMPLE_RATE)
    assert oracle.input_shapes == [(1, mixture.shape[0])]
    assert est_sources.shape == (mixture.shape[0], 2)


# (window, hop, length) in samples: hop from just under the window to window / 8 and 1 sample; lengths that
# hops do not divide (a last, partial window), a length just over one window, and windows of odd length.
OVERLAP_CASES = [
    (64, 63, 1000),
    (64, 48, 1000),
    (64, 32, 1000),
    (64, 21, 1000),
    (64, 16, 1001),
    (64, 8, 1003),
    (64, 5, 333),
    (64, 1, 200),
    (8, 2, 37),
    (8, 7, 9),
    (33, 4, 100),
]


def identity_separator(chunks: torch.Tensor) -> torch.Tensor:
    """Returns each window as it is, as the one source."""
    return chunks.unsqueeze(-1)


def sign_separator(seed: int = 0):
    """Splits each window into its positive and its negative samples, in a random order per window.

    The two tracks sum to the window and are the same signal in every window, so the right output is known
    (up to one order for the whole file); the random order makes the windows' speaker alignment matter.
    """
    rng = np.random.default_rng(seed)

    def separate_batch(chunks: torch.Tensor) -> torch.Tensor:
        tracks = torch.stack([chunks.clamp(min=0), chunks.clamp(max=0)], dim=-1)
        return torch.stack([window[:, rng.permutation(2)] for window in tracks])

    return separate_batch


@pytest.mark.parametrize("window, hop, length", OVERLAP_CASES)
def test_overlap_add_of_an_identity_separator_gives_back_the_input(window, hop, length):
    mixture = torch.randn(length, generator=torch.Generator().manual_seed(length))
    est_sources = separate_long(identity_separator, mixture, window, hop, batch_size=3)
    assert est_sources.shape == (length, 1)
    assert torch.allclose(est_sources[:, 0], mixture, atol=1e-5)


@pytest.mark.parametrize("window, hop, length", OVERLAP_CASES)
def test_overlap_add_keeps_each_track_on_one_output_whatever_the_overlap(window, hop, length):
    mixture = torch.randn(length, generator=torch.Generator().manual_seed(length))
    est_sources = separate_long(sign_separator(), mixture, window, hop, batch_size=2)
    expected = torch.stack([mixture.clamp(min=0), mixture.clamp(max=0)], dim=-1)
    if est_sources[:, 0].sum() < 0:  # the file's one speaker order is free
        expected = expected.flip(-1)
    assert torch.allclose(est_sources, expected, atol=1e-5)


def test_hop_must_be_shorter_than_the_window():
    with pytest.raises(ValueError, match="shorter than the window"):
        SeparationOptions(window=4.0, hop=4.0)


def test_evenly_spread_windows_are_never_shorter_than_the_models_shortest_input():
    mixture, sources = two_speaker_recording(1.0)
    oracle = OracleSeparator(mixture, sources)
    window, hop, shortest = 5000, 4000, 4500  # an input just over one window would get two of ~3000 samples
    separate_long(oracle.separate_batch, mixture[:5001], window, hop, min_window=shortest)
    assert {shape[1] for shape in oracle.input_shapes} == {shortest}


def delayed_oracle(sources, swap_offsets=()):
    """A 'separator' that returns the true sources, delayed like its input, in swapped order at `swap_offsets`."""

    def separate_batch(mixture):
        offset = mixture.shape[1] - sources.shape[1]
        est = torch.nn.functional.pad(sources, (0, 0, offset, 0))
        return est.flip(-1) if offset in swap_offsets else est

    return separate_batch


def test_shift_averaging_undoes_the_delays_and_aligns_the_speakers():
    torch.manual_seed(0)
    sources = torch.randn(2, 800, 2)  # [batch, time, num_spks]
    mixture = sources.sum(-1)
    # Offsets 0, 2, 4, 6 for 4 shifts over a hop of 8; the views at 2 and 6 come out with the speakers swapped.
    averaged = separate_shifted(delayed_oracle(sources, swap_offsets=(2, 6)), mixture, shifts=4, hop=8)
    assert averaged.shape == sources.shape
    assert torch.allclose(averaged, sources, atol=1e-5)


def test_shift_averaging_averages_the_views_at_the_mixture_level():
    torch.manual_seed(0)
    sources = torch.randn(1, 600, 2)
    mixture = sources.sum(-1)
    errors = {0: 0.1 * torch.randn(1, 600, 2), 2: 0.1 * torch.randn(1, 600, 2)}  # per offset (2 shifts, hop 4)

    def separate_batch(delayed):
        offset = delayed.shape[1] - 600
        return torch.nn.functional.pad(sources + errors[offset], (0, 0, offset, 0))

    expected = sum(match_mixture_level(sources + error, mixture) for error in errors.values()) / 2
    assert torch.allclose(separate_shifted(separate_batch, mixture, shifts=2, hop=4), expected, atol=1e-5)


def test_mixture_consistency_shares_what_the_estimates_leave_out_equally():
    torch.manual_seed(0)
    sources = torch.randn(2, 500, 2)
    mixture = sources.sum(-1)
    error = 0.3 * torch.randn(2, 500)
    # The first estimate misses `error`: each estimate gets half of it back.
    est_sources = torch.stack([sources[..., 0] - error, sources[..., 1]], dim=-1)
    consistent = mixture_consistency(est_sources, mixture)
    assert torch.allclose(consistent.sum(-1), mixture, atol=1e-5)
    level_matched = match_mixture_level(est_sources, mixture)
    expected = level_matched + (mixture - level_matched.sum(-1)).unsqueeze(-1) / 2
    assert torch.allclose(consistent, expected, atol=1e-6)
    # Estimates at an arbitrary scale are brought to the mixture's level first, so the oracle stays itself.
    assert torch.allclose(mixture_consistency(sources * torch.tensor([0.2, 5.0]), mixture), sources, atol=1e-4)
    separate_batch = with_mixture_consistency(lambda x: est_sources)
    assert torch.allclose(separate_batch(mixture), consistent)


def test_one_shift_is_the_separator_itself_and_bad_shift_counts_are_refused():
    mixture = torch.randn(1, 100)
    assert separate_shifted(lambda x: x.unsqueeze(-1) * 3, mixture, shifts=1, hop=8).equal(mixture.unsqueeze(-1) * 3)
    for shifts in (0, 9):
        with pytest.raises(ValueError, match="shifts"):
            separate_shifted(lambda x: x.unsqueeze(-1), mixture, shifts=shifts, hop=8)
