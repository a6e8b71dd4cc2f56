"""The embedded synthetic corpus (eSpeak NG speech in the LibriMix layout) and the demo built on it."""
