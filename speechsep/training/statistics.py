"""The training statistics of the current epoch, checkpointed with the model so an intra-epoch resume keeps them."""

import dataclasses
from pathlib import Path

import yaml
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks

from speechsep.training.distributed import rank, sum_over_ranks


@dataclasses.dataclass
class EpochStatistics:
    """Sums over this epoch's training batches: the mean SI-SNR and the share of filtered examples come from them.

    Under DDP each process sums its own batches, and the epoch's figures are the sums over the processes. A
    checkpoint holds those sums over the processes (every process takes part in the save); a resume gives them
    to rank 0 and zeros to the others, so each batch trained before the checkpoint is counted once, whatever the
    number of processes of the resumed run.
    """

    loss_sum: float = 0.0  # sum of the batch losses that were back-propagated
    batches: int = 0  # batches that were back-propagated
    batches_skipped: int = 0  # batches not back-propagated (see Separation.filter_loss)
    examples_seen: int = 0
    examples_filtered: int = 0  # dropped by threshold-by-loss

    def reset(self) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, field.default)

    def over_ranks(self) -> "EpochStatistics":
        """These statistics summed over every process (collective: call it on every process)."""
        fields = dataclasses.fields(self)
        totals = sum_over_ranks(*(getattr(self, field.name) for field in fields))
        return EpochStatistics(**{field.name: type(field.default)(total) for field, total in zip(fields, totals)})

    def logged(self) -> dict:
        """The epoch's train statistics as logged: SI-SNR in dB, skipped batches, the share of filtered examples."""
        return {
            "si-snr": -self.loss_sum / max(self.batches, 1),
            "skipped_batches": int(self.batches_skipped),
            "filtered_examples": round(self.examples_filtered / max(self.examples_seen, 1), 4),
        }

    @mark_as_saver
    def save(self, path: str | Path) -> None:
        totals = self.over_ranks()
        if rank() == 0:
            Path(path).write_text(yaml.safe_dump(dataclasses.asdict(totals)))

    @mark_as_loader
    def load(self, path: str | Path, end_of_epoch: bool = False) -> None:
        self.reset()
        if rank() == 0:
            for key, value in yaml.safe_load(Path(path).read_text()).items():
                setattr(self, key, value)


# The save hook runs on every process, as its sums over the processes need them all.
register_checkpoint_hooks(EpochStatistics, save_on_main_only=False)
