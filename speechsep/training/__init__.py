"""Training runtime: PIT SI-SNR loss, schedulers, checkpoints, distributed helpers, config loading and
checks, the output-folder lock."""
