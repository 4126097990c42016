"""Any PyTorch segmenter built by the user's own code (the `module` segmenter family), e.g. a DINOv2 backbone with
a linear head.

Reference: `FILE.py:FUNCTION[=WEIGHTS]#HEAD`. FUNCTION(num_outputs) in FILE.py returns the `nn.Module`; WEIGHTS, if
given, is a state dict file read with `weights_only=True` and loaded strictly; HEAD is the dotted name of the last
classifier (see gfss_bench.models.generic). The model may state its input contract with the attributes
`gfss_mean` and `gfss_std` (3 numbers each; default ImageNet's) and `gfss_size_multiple` (default 1: any side).

FILE.py is run as Python: pass only code you trust, as for any script you run.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from torch import nn

from gfss_bench.errors import GFSSError
from gfss_bench.models.checkpoints import read_weights, state_dict_in, strip_module_prefix
from gfss_bench.models.generic import HeadSegmenter
from gfss_bench.models.model_folders import load_strictly
from gfss_bench.models.segmenter import IMAGENET_CONTRACT, InputContract
from gfss_bench.userfiles import quote

FORM = "module:FILE.py:FUNCTION[=WEIGHTS]#HEAD"


@dataclass(frozen=True)
class ModuleReference:
    file: Path
    function: str
    weights: Optional[Path]
    head: str

    @classmethod
    def parse(cls, reference: str) -> "ModuleReference":
        body, _, head = reference.rpartition("#")
        file, separator, rest = body.rpartition(".py:")
        function, _, weights = rest.partition("=")
        if not (separator and file and function.isidentifier() and head):
            raise GFSSError(f"--segmenter module:{quote(reference)} must be written {FORM}")
        return cls(Path(file + ".py").expanduser(), function, Path(weights).expanduser() if weights else None, head)

    def text(self) -> str:
        """The reference with absolute paths."""
        weights = f"={self.weights.resolve()}" if self.weights else ""
        return f"{self.file.resolve()}:{self.function}{weights}#{self.head}"


def build_module_model(reference: ModuleReference, num_outputs: int) -> nn.Module:
    """FUNCTION(num_outputs) from FILE.py, with WEIGHTS loaded strictly when given."""
    if not reference.file.is_file():
        raise GFSSError(f"--segmenter module: {reference.file} does not exist ({FORM})")
    spec = importlib.util.spec_from_file_location(f"gfss_user_segmenter_{reference.file.stem}", reference.file)
    module = importlib.util.module_from_spec(spec)
    where = f"--segmenter module: {reference.file}:{reference.function}"
    try:
        spec.loader.exec_module(module)
        builder = getattr(module, reference.function, None)
        model = builder(num_outputs) if callable(builder) else None
    except Exception as error:  # noqa: BLE001 - the user's code may raise anything
        raise GFSSError(f"{where} failed ({type(error).__name__}: {str(error)[:200]})") from None
    if not callable(builder):
        raise GFSSError(f"--segmenter module: {reference.file} defines no function {reference.function!r}")
    if not isinstance(model, nn.Module):
        raise GFSSError(f"{where} returned a {type(model).__name__}, not a torch.nn.Module")
    if reference.weights is not None:
        state = strip_module_prefix(state_dict_in(read_weights(reference.weights), reference.weights))
        load_strictly(model, state, f"weights {reference.weights}")
    return model.float().eval()


def input_contract(model: nn.Module) -> InputContract:
    mean = tuple(float(v) for v in getattr(model, "gfss_mean", IMAGENET_CONTRACT.mean))
    std = tuple(float(v) for v in getattr(model, "gfss_std", IMAGENET_CONTRACT.std))
    step = int(getattr(model, "gfss_size_multiple", 1))
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0 or step < 1:
        raise GFSSError("--segmenter module: gfss_mean and gfss_std must hold 3 numbers (std > 0) and "
                        "gfss_size_multiple must be >= 1")
    return InputContract(mean, std, size_step=step)


def load_module_segmenter(reference: ModuleReference, num_outputs: int, device="cpu") -> HeadSegmenter:
    """A HeadSegmenter (eval mode, on `device`) over the user's model."""
    model = build_module_model(reference, num_outputs)
    name = f"module {reference.file}:{reference.function}"
    return HeadSegmenter(model, reference.head, name, input_contract(model)).eval().to(device)
