"""Microscopy transforms (SA2-Net, Fiaz et al., BMVC 2023): the official augmentation and the two input modes.

Used by ``configs/microscopy/*.yaml`` through ``_target_`` strings; builds on :mod:`bundle.transforms.image2d` and
:mod:`bundle.io.image2d` (loading any 2D file, channel handling, mask binarisation, writing masks at the original
size). The network is built by :func:`bundle.networks.factory.build_network`, fold ensembles by
:func:`bundle.inferers.ensemble.load_ensemble`, the published per-image scores by
:class:`bundle.evaluation.reports.PerImageScores`.

* :func:`microscopy_transforms` -- two input modes: ``resize`` (the official protocol: every image resized to
  ``size``², predictions resized back) and ``native`` (no resize: random ``crop_size`` patches for training,
  sliding-window inference over the whole image).
* :func:`official_augmentation` -- the official MoNuSeg/GlaS ``RandomGenerator`` (``docs/official_code.md`` §8).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

from monai.transforms import (
    Compose,
    EnsureTyped,
    Identity,
    OneOf,
    RandFlipd,
    RandRotate90d,
    RandRotated,
    RandSpatialCropSamplesd,
    SpatialPadd,
)

from bundle.errors import InputError
from bundle.transforms.image2d import Resize2Dd, imagenet_normalize, load_steps


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

    Built from the :mod:`bundle.transforms.image2d` blocks so that augmentation runs before the normalisation, as in the
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
        raise InputError(f"input mode must be 'resize' or 'native', got {mode!r}.")
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
        steps.append(imagenet_normalize(images))
    steps.append(EnsureTyped(keys=keys, dtype="float32", track_meta=True))
    return Compose(steps)
