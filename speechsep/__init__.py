"""Building blocks of the speech-separation recipe: one module per job.

`train.py` at the top of the repository wires them together into a SpeechBrain Brain.
"""
