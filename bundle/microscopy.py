"""Microscopy pipeline (SA2-Net, Fiaz et al., BMVC 2023): networks, transforms, fold ensembles and published metrics.

Used by ``configs/microscopy/*.yaml`` through ``_target_`` strings; builds on :mod:`bundle.image2d` (loading any
2D file, channel handling, mask binarisation, writing masks at the original size).

* :func:`build_network` -- ``sa2net`` (default, deep supervision for training) or ``msa2net`` (3-channel input,
  224² only), both returning raw logits.
* :func:`microscopy_transforms` -- two input modes: ``resize`` (the official protocol: every image resized to
  ``size``², predictions resized back) and ``native`` (no resize: random ``crop_size`` patches for training,
  sliding-window inference over the whole image).
* :func:`official_augmentation` -- the official MoNuSeg/GlaS ``RandomGenerator`` (``sa2net_official.md`` §4.1).
* :class:`ProbabilityEnsemble` / :func:`load_ensemble` -- fold-ensemble inference: the mean of the members'
  sigmoid probabilities (the official ``test_model_*_Ensemble.py``), thresholded at 0.5 afterwards.
* :class:`RestoreSized` -- probabilities back to the original image size (bilinear) before the threshold.
* :class:`PerImageScores` -- per-image Dice and IoU at the original size, averaged over images (the published
  numbers), written as ``scores.json``; :func:`summarize_folds` -- mean ± std (ddof 1) over folds.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    EnsureTyped,
    Identity,
    MapTransform,
    OneOf,
    RandFlipd,
    RandRotate90d,
    RandRotated,
    RandSpatialCropSamplesd,
    SpatialPadd,
)
from torch import nn

from bundle.image2d import Resize2Dd, imagenet_normalise, load_steps

__all__ = [
    "build_network",
    "official_augmentation",
    "microscopy_transforms",
    "ProbabilityEnsemble",
    "load_state_dict",
    "load_ensemble",
    "RestoreSized",
    "PerImageScores",
    "summarize_folds",
]

_ORIG_KEY = "original_spatial_shape"  # set by bundle.image2d.Resize2Dd


def build_network(
    name: str = "sa2net",
    in_channels: int = 3,
    out_channels: int = 1,
    base_channels: int = 64,
    deep_supervision: bool = True,
    variant: str = "paper",
    encoder_weights: Optional[str] = None,
) -> nn.Module:
    """The network named in the config (``network_name``).

    Args:
        name: ``sa2net`` (SA2-Net, the microscopy default) or ``msa2net`` (MSA²Net; 224² input, 1 or 3 channels,
            no deep-supervision heads).
        in_channels: image channels (3 for MoNuSeg/GlaS RGB, 1 for grayscale fluorescence).
        out_channels: 1 (sigmoid head, as the official binary recipe).
        base_channels: SA2-Net width ``C`` (64 in the paper; smaller for CPU demos).
        deep_supervision: SA2-Net's three auxiliary heads in training mode (official: on).
        variant: MSA²Net variant.
        encoder_weights: MSA²Net local timm encoder weights file, or None.

    Returns:
        The network (raw logits; no sigmoid inside, unlike the official SA2-Net with one class).
    """
    from bundle.networks import MSA2Net, SA2Net

    key = str(name).lower().replace("-", "").replace("_", "")
    if key == "sa2net":
        return SA2Net(in_channels, out_channels, base_channels=base_channels, deep_supervision=deep_supervision)
    if key == "msa2net":
        return MSA2Net(in_channels, out_channels, variant=variant, encoder_weights=encoder_weights)
    raise ValueError(f"bundle/microscopy.py: network_name must be 'sa2net' or 'msa2net', got {name!r}.")


def official_augmentation(keys: Sequence[str] = ("image", "label"), label_key: str = "label") -> OneOf:
    """The official MoNuSeg/GlaS ``RandomGenerator``: rot90 + flip (p 0.5), else rotation ±20° (p 0.25), else none.

    Official code: ``if random() > 0.5: rot90(k ∈ 0..3) + flip on a random axis; elif random() < 0.5: rotate by an
    integer angle in [-20, 19]``, i.e. probabilities 0.5 / 0.25 / 0.25. Here the flip axis is drawn per axis
    (p 0.5 each) and the angle is continuous; the rotated image is bilinear (official: nearest, ``order=0``), the
    mask nearest, both zero-filled (``reshape=False``). No intensity augmentation, as the official code.

    Args:
        keys: image key(s) and the mask key.
        label_key: the mask key.

    Returns:
        A MONAI ``OneOf``.
    """
    keys = list(keys)
    modes = ["nearest" if k == label_key else "bilinear" for k in keys]
    rot_flip = Compose(
        [
            RandRotate90d(keys=keys, prob=1.0, max_k=3),
            RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
            RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
        ]
    )
    rotate = RandRotated(keys=keys, range_x=math.radians(20.0), prob=1.0, mode=modes, padding_mode="zeros")
    return OneOf([rot_flip, rotate, Identity()], weights=[0.5, 0.25, 0.25])


def microscopy_transforms(
    keys: Sequence[str] = ("image", "label"),
    mode: str = "resize",
    size: int = 224,
    channels: int = 3,
    normalize: Optional[str] = None,
    crop_size: Optional[int] = None,
    crops_per_image: int = 1,
    augment: bool = False,
    label_key: str = "label",
) -> Compose:
    """Load → [0, 1] → channels → (resize to ``size``² | native size [+ random crops]) → [augment] → normalise.

    Built from the :mod:`bundle.image2d` blocks so that augmentation runs before the normalisation, as in the
    official code (which has none: BGR/RGB in [0, 1]).

    Args:
        keys: image key and, for training/validation, the mask key.
        mode: ``resize`` (official: every image to ``size``², the original (H, W) kept in the meta for writing
            back) or ``native`` (no resize; with ``crop_size``, random square patches for training).
        size: network input side in ``resize`` mode (224 as the official code).
        channels: network input channels (gray images are repeated, RGBA loses alpha).
        normalize: ``None`` ([0, 1] by the file's dtype, official), ``minmax`` (per image) or ``imagenet``.
        crop_size: ``native`` mode: side of the random training patches (images smaller than it are zero-padded).
        crops_per_image: patches drawn per image and visit (the DataLoader batch is images × this).
        augment: add :func:`official_augmentation`.
        label_key: the mask key.

    Returns:
        A Compose producing float32 ``(channels, h, w)`` images and ``(1, h, w)`` {0, 1} masks (a list of
        ``crops_per_image`` samples when cropping).
    """
    keys = list(keys)
    if mode not in ("resize", "native"):
        raise ValueError(f"bundle/microscopy.py: input mode must be 'resize' or 'native', got {mode!r}.")
    images, labels, steps = load_steps(keys, label_key, channels, normalize)
    if mode == "resize":
        steps.append(Resize2Dd(keys=keys, size=size, label_keys=labels))
    elif crop_size:
        steps += [
            SpatialPadd(keys=keys, spatial_size=(crop_size, crop_size)),
            RandSpatialCropSamplesd(
                keys=keys, roi_size=(crop_size, crop_size), num_samples=int(crops_per_image), random_size=False
            ),
        ]
    if augment:
        steps.append(official_augmentation(keys, label_key))
    if normalize == "imagenet":
        steps.append(imagenet_normalise(images))
    steps.append(EnsureTyped(keys=keys, dtype="float32", track_meta=True))
    return Compose(steps)


def load_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Network weights from a bundle checkpoint: a bare state dict, or ``{"model": state_dict, ...}``.

    A ``module.`` prefix (DDP) is removed.
    """
    if not os.path.isfile(path):
        raise ValueError(
            f"bundle/microscopy.py: checkpoint {path} does not exist; train the fold first or fix the path."
        )
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in obj.items()}


class ProbabilityEnsemble(nn.Module):
    """Mean of the members' probabilities: sigmoid for one output channel, softmax over channels otherwise.

    The official fold ensemble (``test_model_*_Ensemble.py``) averages the five folds' sigmoid maps and thresholds
    the mean at 0.5; with one member this is just that member's probability. Output: probabilities, not logits.

    Args:
        members: networks returning raw logits in eval mode.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) == 0:
            raise ValueError("bundle/microscopy.py: a probability ensemble needs at least one checkpoint.")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total: Optional[torch.Tensor] = None
        for member in self.members:
            logits = member(x)
            if isinstance(logits, (list, tuple)):  # a member left in training mode: keep the main head
                logits = logits[0]
            prob = torch.sigmoid(logits.float()) if logits.shape[1] == 1 else torch.softmax(logits.float(), dim=1)
            total = prob if total is None else total + prob
        assert total is not None
        return total / len(self.members)


def load_ensemble(network_def: nn.Module, ckpt_paths, device=None) -> ProbabilityEnsemble:
    """One copy of ``network_def`` per checkpoint, weights loaded strictly (bar SA2-Net aux heads), in eval mode.

    Args:
        network_def: the (untrained) network of the config.
        ckpt_paths: a checkpoint path or a list of them (e.g. the five folds' ``model.pt``).
        device: where to put the ensemble.

    Returns:
        The :class:`ProbabilityEnsemble`.
    """
    paths = [ckpt_paths] if isinstance(ckpt_paths, (str, os.PathLike)) else list(ckpt_paths)
    if not paths:
        raise ValueError(
            "bundle/microscopy.py: no checkpoint given; set ckpt_paths to a model.pt or a list of fold models "
            "(e.g. --ckpt_paths \"\\$sorted(glob.glob('runs/microscopy/fold*/model.pt'))\")."
        )
    members = []
    for path in paths:
        member = copy.deepcopy(network_def)
        state, own = load_state_dict(str(path)), member.state_dict()
        # SA2-Net's deep-supervision heads only train; a network built without them ignores their weights
        state = {k: v for k, v in state.items() if k in own or not k.startswith("aux_heads.")}
        member.load_state_dict(state, strict=True)
        members.append(member.eval())
    ensemble = ProbabilityEnsemble(members).eval()
    return ensemble.to(device) if device is not None else ensemble


def _shape2(value) -> tuple:
    """(H, W) from a meta value that may have been collated into a tensor, array or list."""
    return tuple(int(v) for v in torch.as_tensor(np.asarray(value, dtype=np.int64)).flatten()[:2].tolist())


class RestoreSized(MapTransform):
    """Resizes a (K, h, w) probability map back to the input's original (H, W) with bilinear interpolation.

    The original size is ``meta["original_spatial_shape"]`` of ``ref_key`` (set by the ``resize`` input mode); in
    ``native`` mode there is none and the map, already at full size, is left alone. Resizing probabilities and
    then thresholding gives smoother boundaries than thresholding at 224² and enlarging the mask.

    Args:
        keys: probability keys.
        ref_key: the image key whose meta holds the original size.
    """

    def __init__(self, keys: KeysCollection = "pred", ref_key: str = "image") -> None:
        super().__init__(keys)
        self.ref_key = ref_key

    def __call__(self, data: Mapping) -> Dict:
        d = dict(data)
        ref = d.get(self.ref_key)
        meta = ref.meta if isinstance(ref, MetaTensor) else {}
        if _ORIG_KEY not in meta:
            return d
        h, w = _shape2(meta[_ORIG_KEY])
        for key in self.key_iterator(d):
            x = d[key]
            if tuple(x.shape[-2:]) == (h, w):
                continue
            out = F.interpolate(torch.as_tensor(x).float()[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            new_meta = dict(x.meta) if isinstance(x, MetaTensor) else {}
            new_meta.pop(_ORIG_KEY, None)  # now at the original size: nothing left to restore
            new_meta["spatial_shape"] = np.asarray((h, w), dtype=np.int64)
            d[key] = MetaTensor(out, meta=new_meta)
        return d


class PerImageScores:
    """Ignite handler: per-image Dice and IoU of the thresholded prediction against the original-size mask.

    Published convention (SA2-Net/UCTransNet ``test_model*.py``): Dice and IoU per test image, averaged over the
    images. Edge case: an image whose prediction and mask are both empty scores ``empty_score`` (1 = a correct
    "nothing here"; the official formula ``2I/(|P|+|G|+1e-5)`` gives 0; NaN leaves it out). MoNuSeg and GlaS
    test images all contain foreground, so the choice does not change their numbers.

    Writes ``<output_dir>/scores.json`` (atomically) at the end of each evaluation epoch:
    ``{"dice", "iou", "n_images", "per_image": [{"image", "dice", "iou"}], ...}``.

    Args:
        output_dir: destination folder.
        pred_key: thresholded prediction ({0, 1}, original size).
        label_key: the mask at the original size.
        empty_score: score of an image with both masks empty.
        name: free text stored in the file (e.g. the fold or the ensemble members).
    """

    def __init__(
        self,
        output_dir: str,
        pred_key: str = "pred",
        label_key: str = "label",
        empty_score: float = 1.0,
        name: str = "",
    ) -> None:
        self.output_dir, self.pred_key, self.label_key = output_dir, pred_key, label_key
        self.empty_score, self.name = float(empty_score), name
        self.preds: List[np.ndarray] = []
        self.truths: List[np.ndarray] = []
        self.names: List[str] = []
        self.result: Dict[str, Any] = {}

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self.reset())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: self.write())

    def reset(self) -> None:
        self.preds, self.truths, self.names = [], [], []

    def update(self, engine) -> None:
        outputs = engine.state.output
        for item in outputs if isinstance(outputs, list) else [outputs]:
            pred, truth = item[self.pred_key], item[self.label_key]
            p = np.asarray(torch.as_tensor(pred).detach().cpu()).squeeze()
            t = np.asarray(torch.as_tensor(truth).detach().cpu()).squeeze()
            if p.shape != t.shape:
                raise ValueError(
                    f"bundle/microscopy.py: prediction {p.shape} and mask {t.shape} differ in size; score at the "
                    f"original size (RestoreSized before the threshold, mask loaded without resizing)."
                )
            self.preds.append(p > 0.5)
            self.truths.append(t > 0.5)
            name = None
            for src in (item.get("image"), truth, pred):  # the input image's name first
                name = name or (getattr(src, "meta", None) or {}).get("filename_or_obj")
            self.names.append(os.path.basename(str(name or f"image_{len(self.names)}")))

    def compute(self) -> Dict[str, Any]:
        """Means and per-image values of everything seen since :meth:`reset`."""
        from bundle.metrics import per_image_dice_iou

        scores = per_image_dice_iou(self.preds, self.truths, threshold=0.5, empty_score=self.empty_score)
        per_image = [
            {"image": n, "dice": d, "iou": j}
            for n, d, j in zip(self.names, scores["per_image_dice"], scores["per_image_iou"])
        ]
        return {
            "name": self.name,
            "dice": scores["dice"],
            "iou": scores["iou"],
            "n_images": len(per_image),
            "empty_score": self.empty_score,
            "per_image": per_image,
        }

    def write(self) -> Dict[str, Any]:
        """Computes and writes ``scores.json``; returns the scores."""
        self.result = self.compute()
        os.makedirs(self.output_dir, exist_ok=True)
        path = os.path.join(self.output_dir, "scores.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.result, f, indent=1, allow_nan=True)
        os.replace(tmp, path)
        print(f"per-image Dice {self.result['dice']:.4f}, IoU {self.result['iou']:.4f} on {len(self.names)} images")
        return self.result


def summarize_folds(score_files: Sequence[str]) -> Dict[str, Any]:
    """Mean ± std over folds of the per-fold test means (the official ``test_model*.py`` table; std with ddof 1).

    Args:
        score_files: one ``scores.json`` per fold (written by :class:`PerImageScores`).

    Returns:
        ``{"dice_mean", "dice_std", "iou_mean", "iou_std", "folds": [{"file", "dice", "iou"}]}`` (std NaN for a
        single fold).
    """
    if isinstance(score_files, str):
        score_files = [score_files]
    if not score_files:
        raise ValueError("bundle/microscopy.py: summarize_folds needs at least one scores.json.")
    folds = []
    for path in score_files:
        with open(path) as f:
            s = json.load(f)
        folds.append({"file": str(path), "dice": float(s["dice"]), "iou": float(s["iou"])})
    out: Dict[str, Any] = {"folds": folds, "n_folds": len(folds)}
    for k in ("dice", "iou"):
        v = np.asarray([f[k] for f in folds], dtype=np.float64)
        out[f"{k}_mean"] = float(v.mean())
        out[f"{k}_std"] = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
    return out


def _main(argv: Sequence[str]) -> None:
    """``python -m bundle.microscopy summarize runs/microscopy/fold*/test/scores.json``."""
    if len(argv) < 2 or argv[0] != "summarize":
        raise SystemExit("usage: python -m bundle.microscopy summarize FOLD_SCORES.json [...]")
    s = summarize_folds(argv[1:])
    for f in s["folds"]:
        print(f"{f['file']}: Dice {f['dice']:.4f}  IoU {f['iou']:.4f}")
    print(
        f"{s['n_folds']} folds: Dice {100 * s['dice_mean']:.2f} ± {100 * s['dice_std']:.2f}, "
        f"IoU {100 * s['iou_mean']:.2f} ± {100 * s['iou_std']:.2f} (mean ± std over folds, ddof 1)"
    )


if __name__ == "__main__":
    _main(sys.argv[1:])
