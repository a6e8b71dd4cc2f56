"""The files a test stage writes into a run's `results_folder`, and how an earlier test's files wait beside them.

A test stage writes `test_results.csv` with its summary, the config of a --test_only evaluation and audio examples.
Before it starts, an earlier test's files are set aside in `previous_test/` and removed only once the new results
are written whole: a test stage that fails or is stopped neither destroys them nor leaves them beside a newer
checkpoint as if they scored it.
"""

import functools
import logging
import math
import re
import shutil
import tempfile
from pathlib import Path

import torch

from speechsep.data.audio import PEAK_LIMIT, write_pcm16
from speechsep.errors import RecipeError
from speechsep.evaluation import metrics
from speechsep.inference.model_folder import HPARAMS_FILE
from speechsep.output_files import write_file, write_text
from speechsep.training.distributed import evaluation_position
from speechsep.training.losses import true_lengths

logger = logging.getLogger(__name__)

TEST_RESULTS = "test_results.csv"  # in results_folder, with test_results_summary.json and audio/
TEST_RECORD = "test_" + HPARAMS_FILE  # the config of a --test_only evaluation, beside its results
PREVIOUS_TEST = "previous_test"  # in results_folder: the earlier test results, until a test stage's own are written
AUDIO_EXAMPLE = re.compile(r".+_(mix|source\d+|source\d+hat)\.wav")  # results_folder/audio/, see write_audio_example


class TestStageError(RecipeError):
    """A test stage failed; the message says where the earlier test results wait."""


def write_audio_example(
    audio_dir: Path,
    snt_id: str,
    mixture: torch.Tensor,
    sources: torch.Tensor,
    est_sources: torch.Tensor,
    perm: list[int],
    sample_rate: int,
) -> None:
    """Write one test example as `<snt_id>_mix.wav`, `<snt_id>_source<k>.wav` and the estimate matched to that
    source, `<snt_id>_source<k>hat.wav`; each scaled to the same peak, since estimates have an arbitrary scale
    (silent signals are written as silence).

    mixture: [time]; sources, est_sources: [time, num_spks]; perm: the estimate of each source.
    """
    signals = {"mix": mixture}
    for k in range(sources.shape[-1]):
        signals[f"source{k + 1}"] = sources[:, k]
        signals[f"source{k + 1}hat"] = est_sources[:, perm[k]]
    for name, waveform in signals.items():
        waveform = waveform.float().cpu()
        peak = waveform.abs().max()
        if peak > 0:
            waveform = waveform / peak * PEAK_LIMIT
        write = functools.partial(write_pcm16, signal=waveform, sample_rate=sample_rate)
        write_file(audio_dir / f"{snt_id}_{name}.wav", write, overwrite=True)


class AudioExamples:
    """Writes the first `limit` examples (None: all) of a test set of `set_size` into `results_folder/audio/`.

    Under DDP each process writes those of its share: together the same examples as a single process, each
    written once (the sampler's repeats, past the end of the set, are not).
    """

    def __init__(
        self, results_folder: str | Path, sample_rate: int, limit: int | None, set_size: int | float = math.inf
    ):
        self.audio_dir, self.sample_rate = Path(results_folder) / "audio", sample_rate
        self.limit = min(math.inf if limit is None else limit, set_size)
        self.tested, self.saved = 0, 0  # by this process

    def write(self, snt_ids, mixture, sources, est_sources, lengths, perms) -> None:
        """Write the batch's examples that are among the first ones: mixture [batch, time], sources and the plain
        pass's est_sources [batch, time, num_spks], relative lengths [batch], perms: the estimate of each source."""
        self.audio_dir.mkdir(parents=True, exist_ok=True)
        for b, (snt_id, length) in enumerate(zip(snt_ids, true_lengths(lengths, mixture.shape[1]).tolist())):
            position = evaluation_position(self.tested)
            self.tested += 1
            if position < self.limit:
                signals = mixture[b, :length], sources[b, :length], est_sources[b, :length]
                write_audio_example(self.audio_dir, snt_id, *signals, perms[b], self.sample_rate)
                self.saved += 1


def scored_checkpoint(checkpoint, current_epoch: int) -> dict:
    """What test results say they score: the checkpoint's name and the epoch it ended, from its meta (the epoch
    counter is at the last epoch after a budget stop)."""
    if checkpoint is None:
        return {"epoch": current_epoch, "checkpoint": None}
    return {"epoch": checkpoint.meta.get("epoch") or current_epoch, "checkpoint": checkpoint.path.name}


def outputs_of_test_stage(results_folder: Path) -> list[Path]:
    """What a test stage has written into `results_folder`: results, their config and audio examples (by the
    names `write_audio_example` gives them; other files are the user's)."""
    files = [results_folder / name for name in (TEST_RESULTS, metrics.summary_name(TEST_RESULTS), TEST_RECORD)]
    files += [path for path in (results_folder / "audio").glob("*.wav") if AUDIO_EXAMPLE.fullmatch(path.name)]
    return [path for path in files if path.is_file()]


def set_aside_test_results(results_folder: Path) -> None:
    """Move an earlier test stage's results into `results_folder/previous_test/` (replacing older ones there) until
    the new ones are written whole (`remove_previous_test_results`). Files of a test stage that did not finish
    (audio without `test_results.csv`) are removed: they are no results."""
    files = outputs_of_test_stage(results_folder)
    if results_folder / TEST_RESULTS not in files:
        for path in files:
            path.unlink()
        return
    previous = results_folder / PREVIOUS_TEST
    staging = Path(tempfile.mkdtemp(prefix=f".{PREVIOUS_TEST}.", dir=results_folder))  # filled, then renamed whole
    for path in files:
        moved = staging / path.relative_to(results_folder)
        moved.parent.mkdir(exist_ok=True)
        path.replace(moved)
    if previous.is_dir():
        logger.info(f"Replacing the older test results in {previous}")
        shutil.rmtree(previous)
    staging.replace(previous)
    logger.info(f"Earlier test results moved to {previous}; removed once this test stage's results are written")


def write_test_results(results_folder: Path, rows: list[dict], scored: dict, test_record: str | None) -> None:
    """The test stage's results (`metrics.write_test_results`) with what was `scored`, the config of a --test_only
    evaluation (`test_record`; a training run's record stays as it was), then the earlier results are removed."""
    metrics.write_test_results(rows, results_folder / TEST_RESULTS, scored=scored)
    if test_record is not None:
        write_text(results_folder / TEST_RECORD, test_record, overwrite=True)
    remove_previous_test_results(results_folder)


def remove_previous_test_results(results_folder: Path) -> None:
    """The new results are written whole: the earlier ones set aside are no longer needed."""
    previous = results_folder / PREVIOUS_TEST
    if previous.is_dir():
        shutil.rmtree(previous)
        logger.info(f"Removed the earlier test results in {previous}")
