"""Run under torchrun (gloo, 2 CPU processes): keep-only saves, a damaged newest checkpoint, a recovery.

    torchrun --nproc_per_node=2 tests/ddp_checkpoint_worker.py CHECKPOINTS_DIR OUTPUT_DIR

Saves epochs 1-3 keeping 2, truncates epoch 3's model file, recovers on every rank and writes the epoch it
recovered to OUTPUT_DIR/recovered_epoch_rank<rank>.txt (for tests/test_checkpoints.py).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from speechbrain.utils.epoch_loop import EpochCounter  # noqa: E402

from speechsep.training.checkpoints import RobustCheckpointer  # noqa: E402


def main(checkpoints_dir: str, output_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    counter = EpochCounter(limit=10)
    checkpointer = RobustCheckpointer(checkpoints_dir, {"model": torch.nn.Linear(4, 3), "counter": counter})
    for epoch in (1, 2, 3):
        counter.current = epoch
        checkpointer.save_and_keep_only(meta={"epoch": epoch}, num_to_keep=2)

    if dist.get_rank() == 0:
        model_file = checkpointer.find_checkpoint().paramfiles["model"]
        model_file.write_bytes(model_file.read_bytes()[:100])
    dist.barrier()
    counter.current = 0
    checkpointer.recover_if_possible()
    Path(output_dir, f"recovered_epoch_rank{dist.get_rank()}.txt").write_text(str(counter.current))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
