"""The MSA²Net augmentation list as batched torch operations on the batch's device (``augment_backend: batched``).

Same list, rates and parameter ranges as the per-sample MONAI version (:func:`bundle.transforms.ct.augmentation`,
``augment_backend: monai``): per sample, ``SomeOf((0, 4))`` draws ``k ~ U{0..4}`` distinct members of the ten in
random order (each member is drawn with probability 0.2), each drawn member always applied:

==============================  ==========================================================================
member                          parameters (per sample), as the MONAI list
==============================  ==========================================================================
flip rows / flip columns        each flips with p = 0.5 when drawn (``RandFlipd(prob=0.5)``)
noise                           + N(0, 0.005²) per pixel
blur                            Gaussian, σ = 1 pixel
contrast                        v · α, α ~ U[0.5, 1.5]
scale                           sampling grid × s per axis, s ~ U[0.5, 2] (``RandAffined(scale_range=(-.5, 1))``)
rotate                          θ ~ U[-40°, 40°]
shear                           [[1, h], [0, 1]], h ~ U[-tan 16°, tan 16°]
elastic                         N(0, m²) offsets on a 56-pixel control lattice, bicubic, m ~ U[0.008, 0.03] · size
translate                       t ~ U[-0.2, 0.2] · size pixels per axis
==============================  ==========================================================================

How it is batched: the geometric members of a sample (flips, scale, rotate, shear, translate, elastic) are chained
in their drawn order into **one** sampling grid per sample (affine maps as matrices, the elastic field looked up
where the chain reaches it), and the whole batch is resampled once: image bilinear, label nearest, zeros outside,
exactly as MONAI's resamplers. The intensity members (noise, blur, contrast) then run as per-sample masked
operations in their drawn relative order. The one departure from the per-sample list: MONAI resamples after each
geometric member, so noise or blur drawn *before* a geometric member gets interpolated there, and one resampling
interpolates once instead of up to four times (sharper, and what the official imgaug pipeline does per member too).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from bundle.errors import check_choice, check_subset
from bundle.transforms.geometry import gaussian_blur

MEMBERS = ("flip_rows", "flip_cols", "noise", "blur", "contrast", "scale", "rotate", "shear", "elastic", "translate")


GEOMETRIC = ("flip_rows", "flip_cols", "scale", "rotate", "shear", "elastic", "translate")


# the official member parameters (docs/official_code.md §3), shared with the per-sample list of bundle.transforms.ct
NOISE_STD, BLUR_SIGMA, CONTRAST = 0.005, 1.0, (0.5, 1.5)
SCALE, ROTATE, SHEAR, TRANSLATE = (0.5, 2.0), math.radians(40.0), math.tan(math.radians(16.0)), 0.2  # translate × size
ELASTIC_SPACING, ELASTIC_MAGNITUDE = 0.25, (0.008, 0.03)  # × size


class BatchedAugment:
    """Augments a batch of (B, C, S, S) images in [0, 1] and (B, 1, S, S) labels on their device.

    Args:
        size: slice size S (224 for MSA²Net); the elastic lattice and translations scale with it.
        members: the members that can be drawn (default: all ten, the official list); a subset keeps the
            ``SomeOf((0, 4))`` count over the subset (used by tests).
        image_mode: ``bilinear`` (official) or ``nearest`` (tests of image/label alignment).

    Call with a ``torch.Generator`` on the batch's device for reproducible draws.

    Examples::

        >>> aug = BatchedAugment(224)
        >>> g = torch.Generator().manual_seed(0)
        >>> img, lab = aug(torch.rand(8, 1, 224, 224), torch.zeros(8, 1, 224, 224), g)
    """

    def __init__(self, size: int = 224, members: Optional[Sequence[str]] = None, image_mode: str = "bilinear"):
        members = MEMBERS if members is None else check_subset("augment_members", members, MEMBERS)
        check_choice("image_mode", image_mode, ("bilinear", "nearest"))
        self.size, self.members, self.image_mode = int(size), members, image_mode

    # --------------------------------------------------------------------------------------------------- draws
    def _draw_members(self, b: int, device, g) -> torch.Tensor:
        """(B, 4) member indices into MEMBERS in application order, -1 = empty slot (SomeOf((0, 4)), no repeats)."""
        m = len(self.members)
        k = torch.randint(0, min(4, m) + 1, (b,), device=device, generator=g)
        order = torch.rand(b, m, device=device, generator=g).argsort(1)[:, :4]  # a random permutation's head
        allowed = torch.tensor([MEMBERS.index(x) for x in self.members], device=device)
        slots = allowed[order]
        if slots.shape[1] < 4:
            slots = torch.cat([slots, slots.new_full((b, 4 - slots.shape[1]), -1)], 1)
        return torch.where(torch.arange(4, device=device)[None] < k[:, None], slots, -1)

    @staticmethod
    def _uniform(lo, hi, shape, device, g) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape, device=device, generator=g)

    def _matrices(self, b: int, device, g) -> dict:
        """Per-sample (B, 3, 3) maps of every affine member, in centred pixel coordinates (row, column)."""
        eye = torch.eye(3, device=device).expand(b, 3, 3).clone()
        out = {}
        flip = torch.where(torch.rand(b, device=device, generator=g) < 0.5, -1.0, 1.0)
        out["flip_rows"] = eye.clone()
        out["flip_rows"][:, 0, 0] = flip
        flip = torch.where(torch.rand(b, device=device, generator=g) < 0.5, -1.0, 1.0)
        out["flip_cols"] = eye.clone()
        out["flip_cols"][:, 1, 1] = flip
        out["scale"] = eye.clone()
        out["scale"][:, 0, 0] = self._uniform(*SCALE, (b,), device, g)
        out["scale"][:, 1, 1] = self._uniform(*SCALE, (b,), device, g)
        theta = self._uniform(-ROTATE, ROTATE, (b,), device, g)
        out["rotate"] = eye.clone()
        out["rotate"][:, 0, 0], out["rotate"][:, 0, 1] = torch.cos(theta), -torch.sin(theta)
        out["rotate"][:, 1, 0], out["rotate"][:, 1, 1] = torch.sin(theta), torch.cos(theta)
        out["shear"] = eye.clone()
        out["shear"][:, 0, 1] = self._uniform(-SHEAR, SHEAR, (b,), device, g)
        out["translate"] = eye.clone()
        out["translate"][:, :2, 2] = self._uniform(-TRANSLATE * self.size, TRANSLATE * self.size, (b, 2), device, g)
        return out

    def _elastic_field(self, b: int, device, g) -> torch.Tensor:
        """(B, 2, S, S) displacement (rows, columns) in pixels: normal offsets on a lattice, bicubic, centre crop."""
        spacing = max(1, round(ELASTIC_SPACING * self.size))
        n = int(math.ceil((self.size - 1.0) / (2.0 * spacing) + 0.5) * 2 + 2)  # MONAI's control-grid size
        magnitude = self._uniform(*(m * self.size for m in ELASTIC_MAGNITUDE), (b, 1, 1, 1), device, g)
        offsets = torch.randn(b, 2, n, n, device=device, generator=g) * magnitude
        field = F.interpolate(offsets, scale_factor=spacing, mode="bicubic", align_corners=False)
        start = (field.shape[-1] - self.size) // 2
        return field[..., start : start + self.size, start : start + self.size]

    # --------------------------------------------------------------------------------------------------- apply
    def __call__(self, image: torch.Tensor, label: torch.Tensor, generator: Optional[torch.Generator] = None):
        """Returns the augmented ``(image, label)``; the label keeps its dtype and its values (nearest)."""
        b, _, h, w = image.shape
        if h != self.size or w != self.size:
            raise ValueError(f"BatchedAugment({self.size}) got slices of {h}×{w}.")
        device, g = image.device, generator
        slots = self._draw_members(b, device, g)
        mats = self._matrices(b, device, g)
        geo_ids = torch.tensor([MEMBERS.index(n) for n in GEOMETRIC], device=device)
        moved = torch.isin(slots, geo_ids).any(1).nonzero().flatten()  # only these samples are resampled
        if moved.numel():
            grid = self._grid(slots[moved], {k: v[moved] for k, v in mats.items()}, device, g)
            image, label = image.clone(), label.clone()
            image[moved] = F.grid_sample(
                image[moved], grid, mode=self.image_mode, padding_mode="zeros", align_corners=False
            )
            lab = F.grid_sample(label[moved].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
            label[moved] = lab.to(label.dtype)
        return self._intensity(image, slots, g), label

    def _grid(self, slots: torch.Tensor, mats: dict, device, g) -> torch.Tensor:
        """``grid_sample`` grid (N, S, S, 2) chaining each sample's geometric members in their drawn order."""
        n, size = slots.shape[0], self.size
        centre = (size - 1) / 2.0
        axis = torch.arange(size, device=device, dtype=torch.float32) - centre
        rows, cols = torch.meshgrid(axis, axis, indexing="ij")
        pos = torch.stack([rows, cols], 0).reshape(1, 2, -1).expand(n, 2, size * size)  # centred (row, column)
        elastic_id = MEMBERS.index("elastic")
        for slot in range(slots.shape[1] - 1, -1, -1):  # the first-applied member is the outermost map
            member = slots[:, slot]
            linear = mats["flip_rows"].new_zeros(n, 3, 3)
            linear[:] = torch.eye(3, device=device)
            for name in GEOMETRIC:
                if name != "elastic":
                    use = member == MEMBERS.index(name)
                    linear[use] = mats[name][use]
            pos = torch.bmm(linear[:, :2, :2], pos) + linear[:, :2, 2:]
            use = (member == elastic_id).nonzero().flatten()
            if use.numel():  # the displacement field looked up where the chain is
                field = self._elastic_field(use.numel(), device, g)
                where = self._normalized(pos[use].reshape(-1, 2, size, size))
                shift = F.grid_sample(field, where, align_corners=False).reshape(-1, 2, size * size)
                pos = pos.clone()
                pos[use] = pos[use] + shift
        return self._normalized(pos.reshape(n, 2, size, size))

    def _normalized(self, pos: torch.Tensor) -> torch.Tensor:
        """(B, 2, H, W) centred (row, column) pixel coordinates → ``grid_sample`` grid (B, H, W, 2) in (x, y)."""
        scale = 2.0 / self.size
        return torch.stack([pos[:, 1] * scale, pos[:, 0] * scale], -1)  # pixel centres, align_corners=False

    def _intensity(self, image: torch.Tensor, slots: torch.Tensor, g) -> torch.Tensor:
        """Noise, blur and contrast on the samples that drew them, in each sample's drawn order."""
        b, device = image.shape[0], image.device
        alpha = self._uniform(*CONTRAST, (b, 1, 1, 1), device, g)
        ids = {name: MEMBERS.index(name) for name in ("noise", "blur", "contrast")}
        for slot in range(slots.shape[1]):
            member = slots[:, slot]
            for name, idx in ids.items():
                use = (member == idx).nonzero().flatten()
                if not use.numel():
                    continue
                x = image[use]
                if name == "noise":
                    x = x + torch.randn(x.shape, device=device, generator=g) * NOISE_STD
                elif name == "blur":
                    x = _blur(x, BLUR_SIGMA)
                else:
                    x = x * alpha[use]
                image = image.index_copy(0, use, x)
        return image


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of every sample (radius 4σ, as MONAI's GaussianSmooth), zero padding."""
    sigmas = torch.full((x.shape[0],), float(sigma), device=x.device)
    return gaussian_blur(gaussian_blur(x, sigmas, -2, truncate=4.0), sigmas, -1, truncate=4.0)
