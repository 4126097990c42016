"""GFSS methods: the Task/Method contract and a registry with one module per method."""

from gfss_bench.methods.contract import (
    METHODS, Fitted, Method, Task, build_method, check_option_name, register_method)
from gfss_bench.methods import base, bcm, classtrans, diam, finetune, imprint  # noqa: F401  (registers the methods)

__all__ = ["METHODS", "Fitted", "Method", "Task", "build_method", "check_option_name", "register_method"]
