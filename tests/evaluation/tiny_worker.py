"""Subprocess entry point for the resume/concurrency tests: a sweep with the tiny random segmenter.

    python -m tests.evaluation.tiny_worker CONFIG.yaml RESULTS_DIR
"""

import sys

from gfss_bench.evaluation.sweep import load_config, run_sweep
from tests.evaluation.test_runner import CountingLoader

if __name__ == "__main__":
    config_path, results_dir = sys.argv[1:3]
    run_sweep(load_config(config_path), results_dir, segmenter_loader=CountingLoader(), batch_size=64,
              log=lambda message: print(message, file=sys.stderr, flush=True))
