"""Data: manifests and audio files, augmentation, dynamic mixing, loudness. Knows nothing of models or training."""
