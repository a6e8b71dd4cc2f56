"""Resampling between any two rates with a filter of bounded size.

torchaudio's polyphase resampler builds one filter per output phase: new/gcd filters of about orig/gcd taps. For
rates with a small common divisor (11127 Hz or 44101 Hz to 8000 Hz) that is gigabytes before the first
sample. Such ratios are replaced by the nearest fraction whose terms are at most `MAX_RATIO_TERM`: the rate
then differs from the exact one by a few parts per million (a pitch and tempo change far below hearing), and the
output is cut or padded to the exact length, `round(length * new / orig)`.
"""

from fractions import Fraction

import torch
import torchaudio

MAX_RATIO_TERM = 1000  # largest numerator or denominator of the rate ratio handed to torchaudio


def bounded_ratio(orig_freq: int, new_freq: int) -> Fraction:
    """new_freq / orig_freq, or the nearest fraction whose terms are at most `MAX_RATIO_TERM`."""
    ratio = Fraction(new_freq, orig_freq)
    if max(ratio.numerator, ratio.denominator) <= MAX_RATIO_TERM:
        return ratio
    if ratio < 1:
        return ratio.limit_denominator(MAX_RATIO_TERM)
    return 1 / (1 / ratio).limit_denominator(MAX_RATIO_TERM)


def resample(signal: torch.Tensor, orig_freq: int, new_freq: int) -> torch.Tensor:
    """`signal` [..., time] at `orig_freq` resampled to `new_freq`: [..., round(time * new_freq / orig_freq)]."""
    if orig_freq == new_freq:
        return signal
    ratio = bounded_ratio(orig_freq, new_freq)
    resampled = torchaudio.functional.resample(signal, ratio.denominator, ratio.numerator)
    length = round(signal.shape[-1] * new_freq / orig_freq)
    if resampled.shape[-1] >= length:
        return resampled[..., :length]
    return torch.nn.functional.pad(resampled, (0, length - resampled.shape[-1]))
