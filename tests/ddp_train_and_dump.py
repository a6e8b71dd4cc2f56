"""Run train.main under torchrun, then save this rank's parameters (for tests/test_distributed.py).

torchrun --nproc_per_node=2 tests/ddp_train_and_dump.py hparams/X.yaml --distributed_backend=gloo ...
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import train  # noqa: E402

if __name__ == "__main__":
    separator = train.main(sys.argv[1:])
    rank = int(os.environ.get("RANK", 0))
    state = {name: p.detach().cpu() for name, p in separator.modules.state_dict().items()}  # checkpoint layout
    torch.save(state, Path(separator.hparams.output_folder) / f"params_rank{rank}.pt")
