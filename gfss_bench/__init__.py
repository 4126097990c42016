"""gfss-bench: benchmark suite and leaderboard harness for generalized few-shot semantic segmentation."""

__version__ = "0.1.0"
