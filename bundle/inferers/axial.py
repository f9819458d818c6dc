"""Volume inference: every axial slice through a 2D network in batches, back to the original grid.

``AxialSliceInferer`` sends each chunk of ``sw_batch_size`` axial slices to 224², normalises it to [-1, 1], runs
the network(s) and reduces the scores by argmax **per chunk** into a uint8 volume, so a 512×512×300 volume never
holds full-volume float logits (9·512²·300·4 B = 2.8 GB). Two resampling modes:

* ``resample="protocol"`` -- TransUNet's ``test_single_volume`` (``docs/official_code.md`` §5) exactly:
  ``scipy.ndimage.zoom(slice, 224/size, order=3)`` in, argmax at 224², ``zoom(labels, size/224, order=0)`` back.
* ``resample="smooth"`` (the inferer's default) -- torch bicubic in, scores bilinear back to the slice size, argmax
  there (smoother organ borders than a nearest-neighbour zoom of a 224² label map).

With ``pixel_size`` set, both modes sample each slice onto a grid of that physical pixel size instead
(:func:`bundle.transforms.geometry.network_grid_theta`) and map back with its inverse: one network-sized grid centred on
the slice (``slice_window="whole"``), or the whole slice at that pixel size covered by overlapping network-sized
windows, Gaussian-blended (``slice_window="sliding"``, :class:`bundle.inferers.sliding.SliceWindows`; a chunk is then
``sw_batch_size`` slices and each forward pass ``sw_batch_size`` of their windows). Optional flip test-time augmentation
(``tta``) and checkpoint ensembles (``networks``, see :func:`load_checkpoints`) average **softmax probabilities** per
chunk. The label map comes out on the canonically oriented grid of the preprocessing (flips/permutations only); the
configs' ``Invertd`` puts it back on the input's stored grid before :class:`SaveLabelNiftid` writes it.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import Inferer
from monai.utils import convert_to_dst_type
from scipy.ndimage import zoom

from bundle.errors import InputError
from bundle.inferers.backends import BACKENDS, CALIBRATED_BACKENDS, check_backend_available, optimize_for_inference
from bundle.inferers.sliding import SliceWindows, body_box
from bundle.transforms.geometry import body_mask, check_pixel_size, check_slice_window, inplane_spacing, to_network_grid

# flip TTA: identity, left-right, up-down, both (the training augmentation flips each axis with p = 0.5)
TTA_FLIPS = ((), (-1,), (-2,), (-2, -1))


_RESAMPLE_MODES = ("smooth", "protocol")


class AxialSliceInferer(Inferer):
    """Runs 2D network(s) on every axial slice of (B, C, H, W, D) volumes and returns (B, 1, H, W, D) labels.

    Args:
        roi_size: network input size (224 for MSA²Net).
        sw_batch_size: slices per forward pass (also the argmax chunk).
        normalise: map [0, 1] input to [-1, 1] as the training pipeline does.
        sw_device: device for the network (default: the input's).
        progress: show a tqdm bar over chunks.
        resample: ``"smooth"`` (torch bicubic in, scores bilinear out, argmax at the slice size) or
            ``"protocol"`` (TransUNet: scipy zoom order 3 in, argmax at ``roi_size``, zoom order 0 out).
        tta: average the softmax over the 4 flips of :data:`TTA_FLIPS` (each output flipped back).
        networks: checkpoint ensemble (e.g. from :func:`load_checkpoints`) used **instead of** the network the
            engine passes; their softmax probabilities are averaged. ``None`` or empty: the engine's network.
        backend: ``"eager"`` runs the network(s) as given; ``"auto"``, ``"onnx"`` or ``"compile"`` wrap each one
            once with :func:`bundle.inferers.backends.optimize_for_inference` (CPU fp32 ``"auto"``: ONNX Runtime, 0.65× the
            official code's time per slice, ``docs/performance.md``). Wrapping happens at the first call and is
            kept per network object, so use it for inference only, never while the weights still change.
        pixel_size: ``None`` resizes whole slices to ``roi_size`` (official); a size in mm samples each slice onto
            ``roi_size`` pixels of that size centred on the slice (:func:`bundle.transforms.geometry.network_grid_theta`, the
            training mapping) and maps the scores back with its inverse; outside the field of view is background.
            The slice's pixel size comes from the input's meta affine.
        slice_window: ``"whole"`` (one network grid per slice, above) or ``"sliding"`` (needs ``pixel_size``): each
            slice whole at ``pixel_size``, covered by windows of ``roi_size``
            (:class:`bundle.inferers.sliding.SliceWindows`).
        window_overlap: ``sliding``: the fraction of a window shared with its neighbour (0.5: nnU-Net's step).
        skip_outside_body: ``sliding``: window only the bounding box of the patient's body
            (:func:`bundle.inferers.sliding.body_box`), the rest of the slice is background.
        calibration: for INT8 backends (``"openvino_int8"``): a callable taking this inferer and returning
            network-ready real CT slices (:class:`bundle.inferers.calibration.CalibrationSlices`); called once, at the
            first wrapping, and never for other backends.

    With one network and no TTA the argmax is taken on the raw logits (bit-identical to earlier releases);
    otherwise on ``log(mean softmax)``, whose argmax is that of the averaged probabilities.
    """

    def __init__(
        self,
        roi_size: Sequence[int] = (224, 224),
        sw_batch_size: int = 16,
        normalise: bool = True,
        sw_device: Union[str, torch.device, None] = None,
        progress: bool = False,
        resample: str = "smooth",
        tta: bool = False,
        networks: Optional[Sequence[Callable[..., torch.Tensor]]] = None,
        backend: str = "eager",
        pixel_size: Optional[float] = None,
        slice_window: str = "whole",
        window_overlap: float = 0.5,
        skip_outside_body: bool = True,
        calibration: Optional[Callable[["AxialSliceInferer"], torch.Tensor]] = None,
    ) -> None:
        super().__init__()
        if sw_batch_size < 1:
            raise InputError(f"sw_batch_size must be ≥ 1, got {sw_batch_size}.")
        if resample not in _RESAMPLE_MODES:
            raise InputError(
                f"resample must be one of {_RESAMPLE_MODES}, got {resample!r}; set "
                "`resample` in configs/inference.yaml or configs/evaluate.yaml (or --resample on the command line)."
            )

        if backend not in BACKENDS:
            raise InputError(
                f"backend must be one of {BACKENDS}, got {backend!r}; set `backend` in "
                "configs/inference.yaml (or --backend on the command line)."
            )
        check_backend_available(backend)
        if backend in CALIBRATED_BACKENDS and not calibration:
            raise InputError(
                f"backend {backend} needs real CT volumes to calibrate on: pass --calibration with CT files or DICOM "
                "series folders (e.g. the demo's demo_data/imagesTr/demo_train.nii.gz), or pick another backend."
            )
        self.backend = backend
        self.calibration = calibration
        self._slices: Optional[torch.Tensor] = None  # the calibration's slices, once asked for
        self._accelerated: Dict[int, tuple] = {}
        self.roi_size = tuple(int(s) for s in roi_size)
        self.sw_batch_size = int(sw_batch_size)
        self.normalise = normalise
        self.sw_device = sw_device
        self.progress = progress
        self.resample = resample
        self.tta = bool(tta)
        self.networks = list(networks or [])
        self.pixel_size = check_pixel_size(pixel_size)
        self.slice_window = check_slice_window(slice_window, self.pixel_size)
        self.windows = (
            SliceWindows(self.roi_size, self.pixel_size, self.sw_batch_size, window_overlap)
            if self.slice_window == "sliding"
            else None
        )
        self.skip_outside_body = bool(skip_outside_body)

    def scores(self, x: torch.Tensor, networks: Sequence[Callable[..., torch.Tensor]], *args: Any, **kwargs: Any):
        """Per-class scores (N, K, h, w) of network-ready slices ``x`` (N, C, h, w), argmax-equivalent to the average.

        One network without TTA: its raw float logits. Otherwise ``log`` of the softmax averaged over
        ``networks`` × flips (accumulated one forward at a time, so memory is one chunk's probabilities).
        """
        flips = TTA_FLIPS if self.tta else ((),)
        if len(networks) == 1 and len(flips) == 1:
            return networks[0](x, *args, **kwargs).float()
        return torch.log(self.probabilities(x, networks, *args, **kwargs).clamp_min(1e-12))

    def probabilities(self, x: torch.Tensor, networks: Sequence[Callable[..., torch.Tensor]], *args, **kwargs):
        """Softmax (N, K, h, w) averaged over ``networks`` and, with ``tta``, over :data:`TTA_FLIPS`."""
        flips = TTA_FLIPS if self.tta else ((),)
        total = None
        for net in networks:
            for dims in flips:
                xi = torch.flip(x, dims) if dims else x
                p = torch.softmax(net(xi, *args, **kwargs).float(), dim=1)
                p = torch.flip(p, dims) if dims else p
                total = p if total is None else total.add_(p)
        return total / (len(networks) * len(flips))

    def _accelerate(self, net: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """``net`` wrapped once by :func:`bundle.inferers.backends.optimize_for_inference` (``backend`` other than eager)."""
        if self.backend == "eager" or not isinstance(net, torch.nn.Module):
            return net
        if id(net) not in self._accelerated:  # the network is kept beside its wrapper so its id stays unique
            if self.backend in CALIBRATED_BACKENDS and self.calibration is not None and self._slices is None:
                self._slices = self.calibration(self)  # once per inferer: an ensemble's members share the slices
            self._accelerated[id(net)] = (net, optimize_for_inference(net, self.backend, calibration=self._slices))
        return self._accelerated[id(net)][1]

    def network_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W, D) volumes → every slice as the network sees it (B·D, C, h, w), on the CPU (calibration)."""
        b, c, h, w, d = inputs.shape
        spacings = self._spacings(inputs, b)
        x = torch.as_tensor(inputs).permute(0, 4, 1, 2, 3).reshape(-1, c, h, w).float()
        spacing = None if spacings is None else spacings.repeat_interleave(d, dim=0)
        chunks = []
        for i in range(0, len(x), self.sw_batch_size):
            part = None if spacing is None else spacing[i : i + self.sw_batch_size]
            chunks.append(self._to_roi(x[i : i + self.sw_batch_size], torch.device("cpu"), part)[0])
        return torch.cat(chunks)

    def _to_roi(
        self, x: torch.Tensor, device: torch.device, spacing: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(N, C, H, W) slices → (network input at ``roi_size`` on ``device``, normalised if asked; grid matrices).

        ``spacing`` (N, 2) mm: the physical-pixel-size grid (``pixel_size``, :func:`bundle.transforms.geometry.to_network_grid`:
        anti-aliased, bicubic), in both modes; its (N, 2, 3) matrices are returned for :meth:`_to_labels` (None
        without ``spacing``).
        """
        h, w = x.shape[-2:]
        theta = None
        if spacing is not None:
            x, theta = to_network_grid(x.to(device), spacing, self.pixel_size, self.roi_size, "bicubic")
        elif self.resample == "protocol":
            if (h, w) != self.roi_size:  # official: zoom(slice, (224 / x, 224 / y), order=3), skipped at 224²
                factors = (self.roi_size[0] / h, self.roi_size[1] / w)
                arr = x.detach().cpu().numpy()
                x = torch.from_numpy(
                    np.stack([np.stack([zoom(ch, factors, order=3) for ch in sl]) for sl in arr]).astype(np.float32)
                )
            x = x.to(device)
        else:
            x = F.interpolate(x.to(device), size=self.roi_size, mode="bicubic", align_corners=False)
        return self._normalised(x), theta

    def _to_labels(self, scores: torch.Tensor, h: int, w: int, theta: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(N, K, h', w') scores at ``roi_size`` → (N, H, W) uint8 labels on the slice grid.

        With ``theta`` the inverse mapping takes the scores (smooth: bilinear) or the argmax labels (protocol:
        nearest) back; outside the field of view every score is 0, whose argmax is background (class 0).
        """
        if theta is not None:
            inverse = torch.zeros_like(theta)
            inverse[:, 0, 0], inverse[:, 1, 1] = 1.0 / theta[:, 0, 0], 1.0 / theta[:, 1, 1]
            protocol = self.resample == "protocol"
            src = scores.argmax(1, keepdim=True).float() if protocol else scores
            with torch.autocast(src.device.type, enabled=False):  # fp32 grid inside the evaluator's autocast
                grid = F.affine_grid(inverse.to(src), [src.shape[0], src.shape[1], h, w], align_corners=False)
                back = F.grid_sample(src, grid, mode="nearest" if protocol else "bilinear", align_corners=False)
            return (back[:, 0] if protocol else back.argmax(1)).to(torch.uint8)
        if self.resample == "protocol":
            labels = scores.argmax(1).to(torch.uint8).cpu()
            if (h, w) != self.roi_size:  # official: zoom(out, (x / 224, y / 224), order=0)
                factors = (h / self.roi_size[0], w / self.roi_size[1])
                labels = torch.from_numpy(np.stack([zoom(sl, factors, order=0) for sl in labels.numpy()]))
            return labels
        scores = F.interpolate(scores, size=(h, w), mode="bilinear", align_corners=False)
        return scores.argmax(1).to(torch.uint8)

    def _normalised(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.5) / 0.5 if self.normalise else x

    def _window_boxes(self, inputs: torch.Tensor, spacings: torch.Tensor) -> list:
        """Per volume, the part of its slices' ``pixel_size`` grid the windows cover (sliding; ``None``: all)."""
        h, w = inputs.shape[2:4]
        boxes = []
        for volume, spacing in zip(inputs, spacings.tolist()):
            grid = self.windows.grid_size((h, w), spacing)
            # body_mask gives every slice the union of the slices' bodies: one box per volume
            body = body_mask(torch.as_tensor(volume))[0, :, :, 0] if self.skip_outside_body else None
            boxes.append(body_box(body, spacing, self.pixel_size, grid, self.roi_size))
        return boxes

    def _sliding_labels(self, x, spacing, box, device, networks, *args, **kwargs) -> torch.Tensor:
        """(n, C, H, W) slices of one volume → (n, H, W) labels through overlapping windows at ``pixel_size``."""

        def predictor(windows: torch.Tensor) -> torch.Tensor:
            scores = self.scores(self._normalised(windows), networks, *args, **kwargs)
            # MONAI weights the windows in place: a network run under inference_mode (the eager backend's wrapper)
            # returns tensors that only inference_mode may change
            return scores.clone() if scores.is_inference() else scores

        scores, theta = self.windows(x.to(device), spacing, predictor, box)
        return self._to_labels(scores, x.shape[-2], x.shape[-1], theta)

    def _spacings(self, inputs: torch.Tensor, b: int) -> Optional[torch.Tensor]:
        """(B, 2) in-plane pixel sizes (mm) from the volumes' affines, or ``None`` (whole-slice resize)."""
        if self.pixel_size is None:
            return None
        affine = getattr(inputs, "affine", None)
        if affine is None:
            raise ValueError(
                "pixel_size needs the volume's affine (a MONAI MetaTensor from LoadImaged) to know its pixel size; "
                "load the volumes with the bundle's preprocessing, or set pixel_size to None."
            )
        affine = torch.as_tensor(affine).reshape(-1, 4, 4)
        affine = affine.expand(b, 4, 4) if affine.shape[0] == 1 else affine
        return torch.tensor([inplane_spacing(a) for a in affine], dtype=torch.float64)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any):
        """Segments ``inputs`` (B, C, H, W, D) slice by slice; returns uint8 labels (B, 1, H, W, D)."""
        if inputs.ndim != 5:
            raise InputError(f"expected (B, C, H, W, D) volumes, got {tuple(inputs.shape)}.")
        b, c, h, w, d = inputs.shape
        device = torch.device(self.sw_device) if self.sw_device is not None else inputs.device
        networks = [self._accelerate(net) for net in (self.networks or [network])]
        spacings = self._spacings(inputs, b)
        boxes = self._window_boxes(inputs, spacings) if self.windows is not None else None
        # labels stay on a CUDA device until the volume is done (no host round trip per chunk; 52 MB for 512²×200)
        out = torch.zeros((b, 1, h, w, d), dtype=torch.uint8, device=device if device.type == "cuda" else "cpu")
        chunks = range(0, d, self.sw_batch_size)
        if self.progress:
            from tqdm import tqdm

            chunks = tqdm(chunks, desc="slices", unit="chunk")
        with torch.no_grad():
            for z0 in chunks:
                z1 = min(z0 + self.sw_batch_size, d)
                x = torch.as_tensor(inputs[..., z0:z1]).permute(0, 4, 1, 2, 3).reshape(-1, c, h, w).float()
                if self.windows is not None:  # sliding: each volume's slices on the grid of its own pixel size
                    volumes = zip(x.split(z1 - z0), spacings.tolist(), boxes)
                    labels = torch.cat(
                        [self._sliding_labels(v, sp, box, device, networks, *args, **kwargs) for v, sp, box in volumes]
                    )
                else:
                    spacing = None if spacings is None else spacings.repeat_interleave(z1 - z0, dim=0)  # x: (B·n, …)
                    roi, theta = self._to_roi(x, device, spacing)
                    scores = self.scores(roi, networks, *args, **kwargs)
                    labels = self._to_labels(scores, h, w, theta)  # (B·n, H, W); scores freed per chunk
                out[:, 0, :, :, z0:z1] = labels.to(out.device).reshape(b, z1 - z0, h, w).permute(0, 2, 3, 1)
        result, *_ = convert_to_dst_type(out, inputs, dtype=torch.uint8)  # keeps the input's meta/affine
        return result
