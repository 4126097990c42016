"""Datasets, episodes, feature extraction, metrics and the runner."""
