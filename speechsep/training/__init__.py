"""Training runtime: PIT SI-SNR loss, schedulers, checkpoints, distributed helpers, config loading (config), every
check a run's input passes before anything is built (preflight), the run around the Brain (experiment), which run
folder a command writes (run_folders) and the output-folder lock."""
