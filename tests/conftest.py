"""Process-wide test setup: one BLAS/OpenMP thread per process (helpers live in tests/helpers.py)."""

import os

# Tests are tiny and the CI machine has two cores: one BLAS/OpenMP thread per process avoids
# oversubscription (mir_eval's solves ran 3-7x slower with two contending OpenBLAS threads). Set
# before numpy and torch are imported; an explicit value in the environment wins.
for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(variable, "1")
