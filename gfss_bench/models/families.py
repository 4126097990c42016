"""Segmenter families: how a base segmenter is built from a reference, for one benchmark fold and protocol.

`run --segmenter FAMILY:REF` names a family and a reference (usually a checkpoint file, or a folder with one
per fold). For each fold the family *resolves* the reference to a segmenter id, stored as the run spec's
`segmenter` and so part of the run id: it must change whenever the weights do (e.g. `family:<sha256 prefix of
the file>`). When the runner needs the segmenter, `SegmenterLoader` asks the family to *build* it: a
`Segmenter` (features + 1x1 classifier over background + base) in eval mode on the run's device.

The per-fold ids differ between the folds of a folder, so reports do not group by them: the family also *labels*
the user's choice (`pspnet:/abs/model_ckpt`), stored as the result's `segmenter_label`, one leaderboard row for
all the folds of that choice.

Built in: `builtin` (the small networks shipped for the synthetic benchmarks; spec id `builtin`), `pspnet`
(PSPNet-ResNet50 checkpoints of DIaM/BAM or `gfss-bench train` files; what `--checkpoint PATH` uses, spec id
`checkpoint:<sha>`), `torchvision` (torchvision's DeepLabV3/FCN models, `torchvision:ARCH=PATH`) and, for any
existing model (gfss_bench.models.generic): `hf` (Hugging Face `transformers` folders), `smp`
(segmentation_models_pytorch folders) and `module` (a model built by the user's own Python function).
Plugins add families through the `gfss_bench.segmenters` entry-point group (see gfss_bench.plugins).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from gfss_bench.errors import GFSSError
from gfss_bench.userfiles import quote
from gfss_bench.models.segmenter import LoadedSegmenter, Segmenter
from gfss_bench.protocols import Benchmark, get_benchmark
from gfss_bench.registry import Registry

BUILTIN = "builtin"  # RunSpec.segmenter of the built-in segmenters (and the default)


@dataclass(frozen=True)
class SegmenterContext:
    """What a family may use besides its reference: the benchmark, fold, protocol and device of the run."""

    benchmark: Benchmark
    fold: int
    protocol: str
    device: torch.device

    @property
    def num_outputs(self) -> int:
        """B + 1: the classifier outputs the fold needs (background + its base classes)."""
        return len(self.benchmark.base_classes(self.fold)) + 1

    def describe(self) -> str:
        return f"{self.benchmark.name} fold {self.fold} (background + {self.num_outputs - 1} base classes)"


class SegmenterFamily:
    """Base class of segmenter families; register an instance with `register_segmenter_family`."""

    name: str = ""
    description: str = ""

    def resolve(self, reference: str, context: SegmenterContext) -> tuple[str, str]:
        """(segmenter id for the run spec, the reference `build` gets) for the context's fold. The default treats
        the reference as a weights file or a folder with one per fold (`fold_weights`) and names the file by its
        contents (`family:<sha256 prefix>`)."""
        path = fold_weights(reference, context, self.name)
        return weights_id(self.name, path), str(path)

    def label(self, reference: str) -> str:
        """The name of the user's choice `family:reference` over all folds (results' `segmenter_label`, the
        row of a report). The default: the reference as an absolute path when it names an existing file or folder
        (so `ckpt`, `./ckpt` and its absolute path share a row, and two folders both called `ckpt` in different
        places do not), else as given."""
        return f"{self.name}:{absolute_reference(reference)}"

    def build(self, reference: str, context: SegmenterContext) -> Segmenter | LoadedSegmenter:
        """The segmenter (eval mode, on `context.device`) for a reference returned by `resolve`, or a
        `LoadedSegmenter` whose `source` (path, sha256, ...) results record as `provenance.segmenter_source`."""
        raise NotImplementedError


def fold_weights(reference: str, context: SegmenterContext, family: str) -> Path:
    """The weights file of the context's fold: `reference` itself, or in the folder `reference` the file
    `fold<F>.pth` or DIaM's `<dataset>/split<S>/.../*.pth` (see `find_fold_checkpoint`)."""
    from gfss_bench.models.checkpoints import find_fold_checkpoint

    if not reference:
        raise GFSSError(f"--segmenter {family}: needs a reference, e.g. --segmenter {family}:PATH (a weights file, "
                        "or a folder holding fold<F>.pth)")
    return find_fold_checkpoint(reference, context.fold, context.benchmark.dataset,
                                context.benchmark.official_split(context.fold), option=f"--segmenter {family}:")


def absolute_reference(reference: str) -> str:
    """`reference` as an absolute path (user home expanded, links resolved) when it names an existing file or
    folder, else unchanged."""
    path = Path(reference).expanduser()
    return str(path.resolve()) if reference and path.exists() else reference


def weights_id(family: str, path: Path) -> str:
    """`family:<first 16 hex digits of the file's sha256>`: a segmenter id that follows the file's contents."""
    from gfss_bench.models.checkpoints import file_sha256

    return f"{family}:{file_sha256(path)[:16]}"


def check_outputs(segmenter: Segmenter, context: SegmenterContext, what: str) -> None:
    """A GFSSError naming `what` when the segmenter's classifier does not have the fold's B+1 outputs."""
    if segmenter.num_outputs != context.num_outputs:
        raise GFSSError(f"{what} has {segmenter.num_outputs} classifier outputs (background + "
                        f"{segmenter.num_outputs - 1} base classes) but {context.describe()} needs "
                        f"{context.num_outputs}; use the weights trained for that benchmark and fold")


def as_loaded(built: Segmenter | LoadedSegmenter) -> LoadedSegmenter:
    """What a family's `build` (or a custom `segmenter_loader`) returned, as a record."""
    return built if isinstance(built, LoadedSegmenter) else LoadedSegmenter(built)


SEGMENTER_FAMILIES: Registry[SegmenterFamily] = Registry("segmenter family")


def register_segmenter_family(name: str):
    """Class decorator: register an instance of a SegmenterFamily subclass under `name`."""

    def decorator(cls: type[SegmenterFamily]) -> type[SegmenterFamily]:
        cls.name = name
        SEGMENTER_FAMILIES.add(name, cls())
        return cls

    return decorator


def parse_segmenter(text: str) -> tuple[str, str]:
    """`FAMILY:REF` (or a bare `FAMILY`) -> (family name, reference); the family must be registered."""
    family, _, reference = text.partition(":")
    try:
        SEGMENTER_FAMILIES.get(family)
    except GFSSError as error:
        raise GFSSError(f"--segmenter {quote(text)}: {error} (written FAMILY:REF)") from None
    return family, reference


class SegmenterLoader:
    """The `segmenter_loader` of runner.execute: builds each spec's segmenter through its family.

    `builtin` needs nothing; any other segmenter id must first be registered with `add`, which resolves a family
    reference for one fold (the CLI does it for --segmenter and --checkpoint).
    """

    def __init__(self) -> None:
        self.references: dict[str, tuple[str, str]] = {}
        self.labels: dict[str, str] = {BUILTIN: BUILTIN}

    def add(self, family: str, reference: str, context: SegmenterContext, chosen: Optional[str] = None) -> str:
        """Resolve `family:reference` for the context's fold; returns the segmenter id for the run spec. `chosen`
        is the reference the user gave when the caller already resolved it to the fold's file (default:
        `reference`); it names the segmenter in results (`SegmenterFamily.label`)."""
        family_object = SEGMENTER_FAMILIES.get(family)
        segmenter_id, resolved = family_object.resolve(reference, context)
        self.references.setdefault(segmenter_id, (family, resolved))
        self.labels.setdefault(segmenter_id, family_object.label(reference if chosen is None else chosen))
        return segmenter_id

    def __call__(self, spec, device: torch.device) -> LoadedSegmenter:
        context = SegmenterContext(get_benchmark(spec.benchmark), spec.fold, spec.protocol, torch.device(device))
        if spec.segmenter == BUILTIN:
            family, reference = BUILTIN, ""
        elif spec.segmenter in self.references:
            family, reference = self.references[spec.segmenter]
        else:
            raise GFSSError(f"segmenter {spec.segmenter!r} of this run spec is not available: pass the weights it "
                            "names with --segmenter FAMILY:REF (or --checkpoint)")
        built = as_loaded(SEGMENTER_FAMILIES.get(family).build(reference, context))
        return dataclasses.replace(built, label=self.labels[spec.segmenter])


@register_segmenter_family(BUILTIN)
class BuiltinFamily(SegmenterFamily):
    description = "the small networks shipped for the synthetic benchmarks (trained and cached when outdated)"

    def resolve(self, reference: str, context: SegmenterContext) -> tuple[str, str]:
        if reference:
            raise GFSSError(f"--segmenter builtin takes no reference, got {quote(reference)}")
        return BUILTIN, ""

    def label(self, reference: str) -> str:
        return BUILTIN

    def build(self, reference: str, context: SegmenterContext) -> Segmenter:
        from gfss_bench.models.zoo import builtin_segmenter

        return builtin_segmenter(context.benchmark.name, context.fold, context.protocol, device=context.device)


@register_segmenter_family("pspnet")
class PSPNetFamily(SegmenterFamily):
    description = ("PSPNet-ResNet50 checkpoints (DIaM's, BAM's or `gfss-bench train` files): PATH is a file or a "
                   "folder with fold<F>.pth or DIaM's model_ckpt layout; --checkpoint PATH is pspnet:PATH")

    def resolve(self, reference: str, context: SegmenterContext) -> tuple[str, str]:
        from gfss_bench.models.checkpoints import checkpoint_segmenter_id

        path = fold_weights(reference, context, self.name)
        return checkpoint_segmenter_id(path), str(path)  # `checkpoint:<sha>`, the ids of --checkpoint results

    def build(self, reference: str, context: SegmenterContext) -> Segmenter:
        from gfss_bench.models.checkpoints import load_fold_checkpoint

        return load_fold_checkpoint(Path(reference), context.benchmark, context.fold, context.device)


@register_segmenter_family("torchvision")
class TorchvisionFamily(SegmenterFamily):
    description = ("torchvision DeepLabV3/FCN weights (a state dict; built with weights=None): ARCH=PATH, ARCH one "
                   "of deeplabv3_resnet50, deeplabv3_resnet101, deeplabv3_mobilenet_v3_large, fcn_resnet50, "
                   "fcn_resnet101; features: the input of the head's last 1x1 conv")

    def resolve(self, reference: str, context: SegmenterContext) -> tuple[str, str]:
        from gfss_bench.models.torchvision_segmenters import check_architecture

        architecture, _, path = reference.partition("=")
        check_architecture(architecture, f"--segmenter torchvision:{reference}")
        weights = fold_weights(path, context, self.name)
        return weights_id(f"{self.name}:{architecture}", weights), f"{architecture}={weights}"

    def label(self, reference: str) -> str:
        architecture, _, path = reference.partition("=")
        return f"{self.name}:{architecture}={absolute_reference(path)}"

    def build(self, reference: str, context: SegmenterContext) -> Segmenter:
        from gfss_bench.models.checkpoints import file_sha256
        from gfss_bench.models.torchvision_segmenters import load_torchvision_segmenter

        architecture, _, path = reference.partition("=")
        segmenter = load_torchvision_segmenter(architecture, Path(path), device=context.device)
        check_outputs(segmenter, context, f"torchvision weights {path}")
        return LoadedSegmenter(segmenter, {"family": self.name, "architecture": architecture,
                                           "path": str(Path(path).resolve()), "sha256": file_sha256(Path(path))})



def split_head(reference: str) -> tuple[str, str]:
    """`DIR#head=NAME` -> (DIR, NAME); (reference, '') without `#head=`."""
    folder, separator, head = reference.partition("#head=")
    return folder, head if separator else ""


def folder_segmenter_id(family: str, reference: str, context: SegmenterContext) -> tuple[str, str]:
    """(`family:<sha256 prefix of the fold folder's config and weight files>[#head=NAME]`, `folder[#head=NAME]`)."""
    from gfss_bench.models.model_folders import fold_folder, folder_sha256

    reference, head = split_head(reference)
    folder = fold_folder(reference, context.fold, f"--segmenter {family}:")
    suffix = f"#head={head}" if head else ""
    return f"{family}:{folder_sha256(folder)[:16]}{suffix}", f"{folder}{suffix}"


def folder_source(family: str, folder: str, head: str) -> dict:
    from gfss_bench.models.model_folders import folder_sha256

    return {"family": family, "path": str(Path(folder).resolve()), "sha256": folder_sha256(Path(folder)),
            "head": head}


@register_segmenter_family("hf")
class HuggingFaceFamily(SegmenterFamily):
    description = ("Hugging Face transformers semantic-segmentation folders written by save_pretrained (SegFormer, "
                   "UperNet, ...): DIR or DIR with fold<F>/ subfolders, optionally #head=NAME (default "
                   "decode_head.classifier); needs gfss-bench's `hf` extra")

    def resolve(self, reference: str, context: SegmenterContext) -> tuple[str, str]:
        return folder_segmenter_id(self.name, reference, context)

    def label(self, reference: str) -> str:
        folder, head = split_head(reference)
        return f"{self.name}:{absolute_reference(folder)}" + (f"#head={head}" if head else "")

    def build(self, reference: str, context: SegmenterContext) -> LoadedSegmenter:
        from gfss_bench.models.hf_segmenters import load_hf_segmenter

        folder, head = split_head(reference)
        segmenter = load_hf_segmenter(Path(folder), head, device=context.device)
        check_outputs(segmenter, context, f"{segmenter.name} (head {segmenter.head_name})")
        return LoadedSegmenter(segmenter, folder_source(self.name, folder, segmenter.head_name))


@register_segmenter_family("smp")
class SMPFamily(SegmenterFamily):
    description = ("segmentation_models_pytorch folders written by smp's save_pretrained (DeepLabV3+, FPN, U-Net, "
                   "...): DIR or DIR with fold<F>/ subfolders; classifier: the last conv of segmentation_head; "
                   "needs gfss-bench's `smp` extra")

    def resolve(self, reference: str, context: SegmenterContext) -> tuple[str, str]:
        if "#head=" in reference:
            raise GFSSError("--segmenter smp: takes no #head= (the classifier is segmentation_head's last conv)")
        return folder_segmenter_id(self.name, reference, context)

    def build(self, reference: str, context: SegmenterContext) -> LoadedSegmenter:
        from gfss_bench.models.smp_segmenters import load_smp_segmenter

        segmenter = load_smp_segmenter(Path(reference), device=context.device)
        check_outputs(segmenter, context, f"{segmenter.name} (head {segmenter.head_name})")
        return LoadedSegmenter(segmenter, folder_source(self.name, reference, segmenter.head_name))


@register_segmenter_family("module")
class ModuleFamily(SegmenterFamily):
    description = ("a model built by your own code: FILE.py:FUNCTION[=WEIGHTS]#HEAD, FUNCTION(num_outputs) returns "
                   "the nn.Module, WEIGHTS a state dict, HEAD the dotted name of its last classifier")

    def resolve(self, reference: str, context: SegmenterContext) -> tuple[str, str]:
        from gfss_bench.models.checkpoints import file_sha256
        from gfss_bench.models.module_segmenters import ModuleReference

        parsed = ModuleReference.parse(reference)
        files = [parsed.file] + ([parsed.weights] if parsed.weights else [])
        for path in files:
            if not path.is_file():
                raise GFSSError(f"--segmenter module: {path} does not exist")
        parts = [file_sha256(path) for path in files] + [parsed.function, parsed.head]
        return f"{self.name}:{hashlib.sha256(' '.join(parts).encode()).hexdigest()[:16]}", parsed.text()

    def label(self, reference: str) -> str:
        from gfss_bench.models.module_segmenters import ModuleReference

        try:
            return f"{self.name}:{ModuleReference.parse(reference).text()}"
        except GFSSError:
            return f"{self.name}:{reference}"

    def build(self, reference: str, context: SegmenterContext) -> LoadedSegmenter:
        from gfss_bench.models.checkpoints import file_sha256
        from gfss_bench.models.module_segmenters import ModuleReference, load_module_segmenter

        parsed = ModuleReference.parse(reference)
        segmenter = load_module_segmenter(parsed, context.num_outputs, device=context.device)
        check_outputs(segmenter, context, f"{segmenter.name} (head {parsed.head})")
        source = {"family": self.name, "file": str(parsed.file.resolve()), "file_sha256": file_sha256(parsed.file),
                  "function": parsed.function, "head": parsed.head}
        if parsed.weights:
            source.update(weights=str(parsed.weights.resolve()), sha256=file_sha256(parsed.weights))
        return LoadedSegmenter(segmenter, source)


def build_segmenter(reference: str, benchmark: str, fold: int, device="cpu", protocol: str = "standard") -> Segmenter:
    """The segmenter `--segmenter reference` gives for one benchmark fold (eval mode, on `device`), e.g.
    `build_segmenter("hf:DIR", benchmark="synthetic5i", fold=0)`."""
    family, rest = parse_segmenter(reference)
    context = SegmenterContext(get_benchmark(benchmark), fold, protocol, torch.device(device))
    family_object = SEGMENTER_FAMILIES.get(family)
    _, resolved = family_object.resolve(rest, context)
    return as_loaded(family_object.build(resolved, context)).segmenter
