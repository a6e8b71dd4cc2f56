"""Process-wide test setup: one BLAS/OpenMP thread per process (helpers live in tests/helpers.py)."""

import os

import pytest

# Tests are tiny and the CI machine has two cores: one BLAS/OpenMP thread per process avoids
# oversubscription (mir_eval's solves ran 3-7x slower with two contending OpenBLAS threads). Set
# before numpy and torch are imported; an explicit value in the environment wins.
for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(variable, "1")


@pytest.fixture(scope="module")
def sepformer_run(tmp_path_factory):
    """A tiny SepFormer run folder (hyperparams.yaml, save/CKPT+*), untrained: built, not trained."""
    from tests.helpers import save_tiny_sepformer_run  # after the thread settings above

    return save_tiny_sepformer_run(tmp_path_factory.mktemp("sepformer") / "run")
