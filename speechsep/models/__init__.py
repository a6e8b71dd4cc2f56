"""Models: SpeechBrain's separation modules computed faster (SepFormer and RE-SepFormer blocks, Conv-TasNet mask
network, encoder/decoder), same arguments, parameters and checkpoints; the configs name them, and
`speechbrain_classes` maps them to SpeechBrain's classes and back."""
