"""The training statistics of the current epoch, checkpointed with the model so an intra-epoch resume keeps them."""

import dataclasses
from pathlib import Path

import yaml
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks


@register_checkpoint_hooks
@dataclasses.dataclass
class EpochStatistics:
    """Sums over this epoch's training batches: the mean SI-SNR and the share of filtered examples come from them."""

    loss_sum: float = 0.0  # sum of the batch losses that were back-propagated
    batches: int = 0  # batches that were back-propagated
    examples_seen: int = 0
    examples_filtered: int = 0  # dropped by threshold-by-loss

    def reset(self) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, field.default)

    @mark_as_saver
    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(dataclasses.asdict(self)))

    @mark_as_loader
    def load(self, path: str | Path, end_of_epoch: bool = False) -> None:
        for key, value in yaml.safe_load(Path(path).read_text()).items():
            setattr(self, key, value)
