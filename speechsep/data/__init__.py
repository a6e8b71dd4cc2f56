"""Data: corpus layouts, manifests and audio files, augmentation, dynamic mixing (with simulated rooms), loudness.
Knows nothing of models or training."""
