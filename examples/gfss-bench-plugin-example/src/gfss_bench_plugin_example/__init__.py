"""Example gfss-bench plugin: the `nearest-prototype` method and the `pooled` segmenter family."""
