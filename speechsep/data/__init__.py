"""Data: manifests and audio files, augmentation, dynamic mixing (with simulated rooms), loudness, test mixtures of
recorded talkers. Knows nothing of models or training."""
