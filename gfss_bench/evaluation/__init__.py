"""Evaluation: run specs and the spec builder, feature extraction, the runner, metrics and several processes."""
