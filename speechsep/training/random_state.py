"""The training process's random number generators, checkpointed so that a resumed run draws what an uninterrupted
one would: speed perturbation, random shifts, wavedrop and dropout continue where they stopped.

Every process of a DDP job has its own generators (each seeds its device's differently as batches differ): each
saves and restores its own, in a file of its rank.

The DataLoaders' iterators would draw their workers' base seed from the global generator when each epoch's (and
each validation's) iterator is created, which a resumed run does at other points than an uninterrupted one;
`loader_generator` gives them a generator of their own instead. The workers themselves draw nothing at random:
crops and dynamic mixtures are functions of (seed, epoch, example).
"""

import random
from pathlib import Path

import numpy as np
import torch
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks

from speechsep.output_files import write_file
from speechsep.training.distributed import rank


def rank_file(path: str | Path, process_rank: int) -> Path:
    """The file of `process_rank` for the checkpoint file `path`: `path` itself for rank 0."""
    path = Path(path)
    return path if process_rank == 0 else path.with_name(f"{path.stem}.rank{process_rank}{path.suffix}")


def loader_generator(seed: int) -> torch.Generator:
    """A generator for a DataLoader's worker base seeds, apart from the global one that augmentation draws from."""
    return torch.Generator().manual_seed(seed)


class RandomState:
    """Saves and restores the states of torch's (CPU and the process's CUDA device, which SpeechBrain makes the
    current one), numpy's and Python's global generators in this process."""

    @staticmethod
    def capture() -> dict:
        name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
        numpy_state = (name, keys.tolist(), position, has_gauss, cached_gaussian)  # plain values: weights_only loads
        state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    @staticmethod
    def restore(state: dict) -> None:
        torch.set_rng_state(state["torch"])
        name, keys, position, has_gauss, cached_gaussian = state["numpy"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, cached_gaussian))
        random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])

    @mark_as_saver
    def save(self, path: str | Path) -> None:
        state = self.capture()
        write_file(rank_file(path, rank()), lambda temporary: torch.save(state, temporary), overwrite=True)

    @mark_as_loader
    def load(self, path: str | Path, end_of_epoch: bool = False) -> None:
        """Restore this rank's generators; a rank the checkpoint has no file of (a run with more processes than
        the one that saved it) keeps its seeded ones."""
        path = rank_file(path, rank())
        if path.is_file():
            self.restore(torch.load(path))


# Every process saves its own generators.
register_checkpoint_hooks(RandomState, save_on_main_only=False)
