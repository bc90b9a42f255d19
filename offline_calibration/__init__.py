"""Offline calibration: datasets, anomalies, training and detector calibration (Lightning layer)."""
