"""gfss-bench: benchmark suite and leaderboard harness for generalized few-shot semantic segmentation.

The package is layered; a module imports only modules of its own layer and of the layers listed before it
(`tests/test_layering.py` enforces it; two layers of the same rank never import each other):

0. core (top-level modules): errors, registry, paths, progress, metrics (confusion-matrix arithmetic, no torch),
   scoring (counting predictions into a confusion matrix) and userfiles (bounded reading of user files);
1. protocols: the benchmark catalog (classes, folds, official evaluation settings) and the two protocols;
2. data: datasets, the synthetic benchmark, the official preprocessing, episodes, dataset preparation;
3. models (segmenters, their families, feature extraction, base training) and methods (GFSS methods), side by side;
4. plugins (loads third-party methods, segmenter families and benchmarks) and results (the result store, tables
   and their renderers: JSON in, text and figures out; no model code), side by side;
5. evaluation: the run spec, the spec builder, the runner, sweeps and torchrun workers (writes through the store);
6. cli: one module per command group.

The protocol gfss-bench implements, with every known difference from the official code, is docs/protocol.md.
"""

__version__ = "0.1.0"

# The layers above, lowest rank first: {layer: dotted-name prefixes of its modules}. The package itself is core.
LAYERS: list[dict[str, tuple[str, ...]]] = [
    {"core": ("gfss_bench.errors", "gfss_bench.registry", "gfss_bench.paths", "gfss_bench.progress",
              "gfss_bench.metrics", "gfss_bench.scoring", "gfss_bench.userfiles")},
    {"protocols": ("gfss_bench.protocols",)},
    {"data": ("gfss_bench.data",)},
    {"models": ("gfss_bench.models",), "methods": ("gfss_bench.methods",)},
    {"plugins": ("gfss_bench.plugins",), "results": ("gfss_bench.results",)},
    {"evaluation": ("gfss_bench.evaluation",)},
    {"cli": ("gfss_bench.cli", "gfss_bench.__main__")},
]
