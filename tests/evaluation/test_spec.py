"""The run spec's id follows everything that changes a number, and nothing else."""

import dataclasses

from gfss_bench.data import synthetic
from gfss_bench.evaluation.spec import RunSpec
from gfss_bench.models import zoo


def test_the_builtin_segmenters_recipe_is_part_of_the_run_id(monkeypatch):
    spec = RunSpec.create("diam", "synthetic5i", 0, "practical", 1)
    assert spec.builtin_config == zoo.config_hash("synthetic5i", 0, "practical")
    monkeypatch.setattr(synthetic, "VERSION", synthetic.VERSION + 1)  # other data, so other shipped weights
    retrained = RunSpec.create("diam", "synthetic5i", 0, "practical", 1)
    assert retrained.builtin_config != spec.builtin_config and retrained.run_id != spec.run_id


def test_other_segmenters_keep_the_ids_of_specs_without_the_field():
    """A checkpoint's id already follows its weights: its spec has no `builtin_config`, so its canonical JSON (and
    the id of a result stored before the field existed) is unchanged."""
    spec = RunSpec.create("diam", "synthetic5i", 0, "practical", 1, segmenter="checkpoint:0123456789abcdef")
    assert spec.builtin_config is None
    assert set(spec.to_dict()) == {f.name for f in dataclasses.fields(RunSpec)} - {"builtin_config"}
