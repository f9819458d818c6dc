"""The official MSA²Net and SA2-Net networks, built from a checkout of their repositories, for parity checks.

This module holds no official code. It imports the official modules, unmodified, from a folder the user extracted
from the official repository (``docs/fidelity.md`` §1 and ``docs/fidelity_sa2net.md`` §2 give the commands), builds
the network on CPU without pretrained weights and returns it. Nothing in the bundle's runtime imports it; the
parity command (``scripts/model/parity_official.py``) and the side-by-side benchmark do.

* MSA²Net: ``Msa2Net`` of ``networks/msa2net.py`` in github.com/xmindflow/MSA-2Net (verified at commit ``209ca72``).
  The file defines ``MyDecoderLayerDAEFormer.__init__``/``forward`` twice and Python keeps the second pair:
  ``variant="released"`` is the class as Python builds it; ``variant="paper"`` compiles the *first* pair (DAE-Former
  blocks and a MASAG call at 14²) from the official file with :mod:`ast` (``dae_v1`` in ``docs/official_code.md`` §1).
  Run-time adjustments, none of which changes a number: the vendored timm-0.6 dataclasses get ``unsafe_hash=True``
  while they are imported (Python ≥ 3.11 rejects their defaults otherwise); ``fvcore``, imported by
  ``networks/masag.py`` and never used, is an empty stub if it is missing; the encoder is built with
  ``pretrain=False`` (the official default loads a local ImageNet file). ``einops`` is needed.
* SA2-Net: ``MyNet`` of ``MoNuSeg_GLaS/nets/sasanet.py`` in github.com/mustansarfiaz/SA2-Net (verified at commit
  ``043edc9``; the copy under ``SegPC2021_ISIC2018/models/mynet/`` is the same file). It imports torch only.

Both builders seed ``torch.manual_seed(seed)`` just before construction, so a seed gives the same weights as in the
recorded parity runs. :func:`git_blob` identifies the official file that was imported (``git hash-object``).
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import hashlib
import importlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Dict, Iterator

import torch

__all__ = ["NotAnOfficialCheckout", "MSA2NET_FILE", "SA2NET_FILE", "git_blob", "official_msa2net", "official_sa2net"]

MSA2NET_FILE = "networks/msa2net.py"
SA2NET_FILE = "MoNuSeg_GLaS/nets/sasanet.py"
_MSA2NET_REPO = "github.com/xmindflow/MSA-2Net"
_SA2NET_REPO = "github.com/mustansarfiaz/SA2-Net"
_loaded: Dict[str, types.ModuleType] = {}  # resolved checkout -> its imported networks.msa2net


class NotAnOfficialCheckout(ValueError):
    """The folder given is not an extracted checkout of the official repository."""


def git_blob(path: Path) -> str:
    """The git blob id of a file (what ``git hash-object`` prints)."""
    data = Path(path).read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _official_file(src: str, relpath: str, repo: str, doc: str) -> Path:
    path = Path(src).expanduser().resolve() / relpath
    if not path.is_file():
        raise NotAnOfficialCheckout(
            f"{src!r} is not a checkout of {repo} (no {relpath}): extract one as {doc} shows and pass its root folder."
        )
    return path


# ----------------------------------------------------------------------------------------------- MSA²Net
@contextlib.contextmanager
def _official_import_context(root: Path) -> Iterator[None]:
    """While the official package is imported: its folder on ``sys.path``, hashable dataclasses, an fvcore stub."""
    original = dataclasses.dataclass

    def hashable(cls=None, /, **kwargs):
        def apply(c):
            if c.__module__.startswith("networks.") and "__hash__" not in c.__dict__:
                return original(c, **{"unsafe_hash": True, **kwargs})
            return original(c, **kwargs)

        return apply if cls is None else apply(cls)

    stubs = []
    if importlib.util.find_spec("fvcore") is None:
        stubs = ["fvcore", "fvcore.nn"]
        for name in stubs:
            sys.modules[name] = types.ModuleType(name)
        sys.modules["fvcore.nn"].FlopCountAnalysis = None  # imported by networks/masag.py, never used
    sys.path.insert(0, str(root))
    dataclasses.dataclass = hashable
    try:
        yield
    finally:
        dataclasses.dataclass = original
        sys.path.remove(str(root))
        for name in stubs:
            sys.modules.pop(name, None)


def _import_msa2net(src: str) -> types.ModuleType:
    path = _official_file(src, MSA2NET_FILE, _MSA2NET_REPO, "docs/fidelity.md §1")
    root = path.parents[1]
    if str(root) in _loaded:
        return _loaded[str(root)]
    if _loaded or "networks" in sys.modules:
        raise RuntimeError("a top-level package 'networks' is already imported: one official checkout per process.")
    with _official_import_context(root):
        module = importlib.import_module("networks.msa2net")
    if Path(module.__file__).resolve() != path:
        raise RuntimeError(f"networks.msa2net came from {module.__file__}, not from {path}")
    _loaded[str(root)] = module
    return module


def _first_definitions(module: types.ModuleType, name: str = "MyDecoderLayerDAEFormer") -> type:
    """``name`` compiled from the official file keeping the first of each repeated method (the paper's layer)."""
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    cls = next((node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == name), None)
    methods = [node.name for node in cls.body if isinstance(node, ast.FunctionDef)] if cls else []
    if methods.count("__init__") != 2 or methods.count("forward") != 2:
        raise NotAnOfficialCheckout(
            f"{module.__file__}: {name} should define __init__ and forward twice (commit 209ca72), got {methods}."
        )
    seen, body = set(), []
    for node in cls.body:
        if isinstance(node, ast.FunctionDef):
            if node.name in seen:
                continue
            seen.add(node.name)
        body.append(node)
    cls.body = body
    namespace = dict(vars(module))  # the official module's globals: nn, MultiScaleGatedAttn, DualTransformerBlock…
    exec(compile(ast.Module(body=[cls], type_ignores=[]), module.__file__, "exec"), namespace)
    return namespace[name]


def official_msa2net(src: str, variant: str = "released", seed: int = 0, num_classes: int = 9) -> torch.nn.Module:
    """The official ``Msa2Net(num_classes)`` from the checkout ``src``, built under ``torch.manual_seed(seed)``.

    Args:
        src: root folder of an extracted github.com/xmindflow/MSA-2Net checkout.
        variant: ``released`` (the file as Python runs it) or ``paper`` (the first ``MyDecoderLayerDAEFormer``).
        seed: seed of the construction (the official random initialisation).
        num_classes: output channels (9 for Synapse).
    """
    if variant not in ("released", "paper"):
        raise ValueError(f"variant must be 'released' or 'paper', got {variant!r}.")
    module = _import_msa2net(src)
    saved = {name: getattr(module, name) for name in ("MaxViT4Out_Small", "MyDecoderLayerDAEFormer")}
    encoder = saved["MaxViT4Out_Small"]
    module.MaxViT4Out_Small = lambda *args, **kwargs: encoder(*args, **{**kwargs, "pretrain": False})
    if variant == "paper":
        module.MyDecoderLayerDAEFormer = _first_definitions(module)
    try:
        torch.manual_seed(seed)
        return module.Msa2Net(num_classes=num_classes)
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


# ----------------------------------------------------------------------------------------------- SA2-Net
def official_sa2net(src: str, in_channels: int = 3, out_channels: int = 1, seed: int = 0) -> torch.nn.Module:
    """The official ``MyNet(n_channels=in_channels, n_classes=out_channels)`` from the checkout ``src``.

    With ``out_channels == 1`` the official network applies a sigmoid to its outputs (ours returns logits).
    """
    path = _official_file(src, SA2NET_FILE, _SA2NET_REPO, "docs/fidelity_sa2net.md §2")
    spec = importlib.util.spec_from_file_location("official_sasanet", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(seed)
    return module.MyNet(n_channels=in_channels, n_classes=out_channels)
