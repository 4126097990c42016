"""Data and benchmarks: datasets in the VOC layout, the official preprocessing, episodes, synthetic data,
preparing and verifying real datasets."""
