"""Evaluation: separation metrics (SDR, SI-SNR and their improvements), results files, report figures."""
