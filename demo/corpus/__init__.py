"""The synthetic corpus of the demo and the tests: eSpeak NG speech and synthetic noise in the LibriMix layout."""
