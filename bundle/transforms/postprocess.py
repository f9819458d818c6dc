"""Largest-connected-component post-processing per organ, with the semantics of MONAI's transform.

MONAI's ``KeepLargestConnectedComponent(applied_labels, is_onehot=False, independent=True)`` is the reference:
for every organ label, voxels outside that label's largest connected component become background (0); other
labels are untouched. On CPU it needs scikit-image (``skimage.measure.label``), which this bundle does not depend
on, so :func:`keep_largest_component` computes the same thing with ``scipy.ndimage.label`` (same component
numbering in raster order, so ties between equal-sized components resolve alike: the first one is kept).
``tests/inferers/test_tta_ensemble.py`` checks the two agree where scikit-image is installed.
"""

from __future__ import annotations

from typing import Any, Dict, Hashable, Mapping, Optional, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type
from scipy.ndimage import generate_binary_structure, label

from bundle.errors import InputError


def keep_largest_component(
    labels, applied_labels: Sequence[int] = tuple(range(1, 9)), connectivity: Optional[int] = None
):
    """Keeps, for every label in ``applied_labels``, only its largest connected component.

    Args:
        labels: integer label map, channel-first ``(1, *spatial)`` (numpy, torch or MetaTensor).
        applied_labels: labels to clean; voxels of their smaller components become 0.
        connectivity: neighbours that connect, as in MONAI / scikit-image: 1 = faces only, ``ndim`` (default,
            ``None``) = faces, edges and corners (26 in 3D).

    Returns:
        The cleaned map, same type, dtype and metadata as ``labels``.
    """
    arr = labels.detach().cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)
    if arr.ndim < 2 or arr.shape[0] != 1:
        raise InputError(
            f"expected a channel-first label map (1, *spatial), got shape {arr.shape}; "
            "apply the LCC before one-hot encoding (AsDiscreted to_onehot)."
        )
    out = arr.copy()
    vol = out[0]
    structure = generate_binary_structure(vol.ndim, connectivity or vol.ndim)
    for c in applied_labels:
        mask = vol == c
        if not mask.any():
            continue
        comp, n = label(mask, structure=structure)
        if n <= 1:
            continue
        sizes = np.bincount(comp.ravel())[1:]
        keep = int(np.argmax(sizes)) + 1  # first maximum: the lowest component id in raster order
        vol[mask & (comp != keep)] = 0
    result, *_ = convert_to_dst_type(out, labels)
    return result


class KeepLargestComponentPerOrgand(MapTransform):
    """Dictionary transform: largest connected component per organ, optionally into a new key (raw kept).

    Args:
        keys: label-map keys (``(1, *spatial)`` each).
        applied_labels: organ labels to clean (default the 8 Synapse organs).
        connectivity: see :func:`keep_largest_component`.
        output_keys: where the cleaned maps go, one per key (default: in place).
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        applied_labels: Sequence[int] = tuple(range(1, 9)),
        connectivity: Optional[int] = None,
        output_keys: Optional[KeysCollection] = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.applied_labels = [int(c) for c in applied_labels]
        self.connectivity = connectivity
        out = [output_keys] if isinstance(output_keys, str) else list(output_keys or self.keys)
        if len(out) != len(self.keys):
            raise InputError(f"output_keys {out} must name one key per input key {list(self.keys)}.")
        self.output_keys = dict(zip(self.keys, out))

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.output_keys[key]] = keep_largest_component(d[key], self.applied_labels, self.connectivity)
        return d


class LogitsToMaskd(MapTransform):
    """Network logits (K, H, W) → a (1, H, W) float label map, for either head of a binary task.

    ``head="sigmoid"``: one logit, foreground where sigmoid(logit) > ``threshold``. ``head="softmax"``: K ≥ 2
    logits, argmax (for K = 2 identical to softmax p₁ > 0.5).

    Args:
        keys: prediction keys.
        head: ``sigmoid`` or ``softmax``.
        threshold: probability threshold of the sigmoid head.
    """

    def __init__(self, keys: KeysCollection = "pred", head: str = "sigmoid", threshold: float = 0.5) -> None:
        super().__init__(keys)
        if head not in ("sigmoid", "softmax"):
            raise InputError(f"head must be 'sigmoid' or 'softmax', got {head!r}.")
        self.head, self.threshold = head, float(threshold)

    def __call__(self, data: Mapping) -> Dict:
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            if self.head == "sigmoid":
                if x.shape[0] != 1:
                    raise InputError(f"the sigmoid head has 1 logit channel, got {x.shape[0]}.")
                d[key] = (torch.sigmoid(x.float()) > self.threshold).float()
            else:
                d[key] = x.argmax(dim=0, keepdim=True).float()
        return d
