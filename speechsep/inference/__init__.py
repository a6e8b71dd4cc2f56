"""Inference: model folders (runs, exports, published SpeechBrain models) and their export with a model card,
windowed separation of any length with test-time shifts, audio files, streams, and which output tracks hold a
talker (counting)."""
