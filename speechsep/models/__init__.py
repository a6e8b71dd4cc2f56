"""Models: SpeechBrain's separation modules computed faster (SepFormer block, Conv-TasNet mask network,
encoder/decoder), same parameters and checkpoints."""
