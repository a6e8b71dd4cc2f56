"""Training runtime: PIT SI-SNR loss, schedulers, checkpoints, distributed helpers, config loading and
checks, which run folder a command writes (run_folders) and the output-folder lock."""
