import pytest

from gfss_bench.errors import GFSSError
from gfss_bench.registry import Registry


def test_register_get_duplicate_and_suggestion():
    registry = Registry("widget")

    @registry.register("alpha")
    class Alpha:
        pass

    assert registry.get("alpha") is Alpha
    with pytest.raises(ValueError, match="already registered"):
        registry.add("alpha", object())
    with pytest.raises(GFSSError, match=r"unknown widget 'alpah' \(did you mean 'alpha'\?\); choose from: alpha"):
        registry.get("alpah")
