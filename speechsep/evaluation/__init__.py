"""Evaluation: separation metrics (SDR, SI-SNR and their improvements), the test stage's files in a results folder,
report figures."""
