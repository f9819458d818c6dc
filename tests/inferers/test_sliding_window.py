"""Sliding-window slice inference (``slice_window: sliding``, bundle/inferers/sliding.py): every voxel of any field of
view inside some window, windows stitched where they came from, the whole-slice scores where one window covers a
slice, windows outside the body not run, TTA / ensembles / ONNX Runtime as in whole-slice mode."""

import copy
import os

import numpy as np
import pytest
import torch
from conftest import TinySegNet
from monai.data import MetaTensor

from bundle.errors import InputError
from bundle.inferers.axial import AxialSliceInferer
from bundle.inferers.sliding import SliceWindows, body_box
from bundle.transforms.geometry import inplane_spacing, to_network_grid


class PixelNet(torch.nn.Module):
    """1 × 1 convolutions: a pixel's logits depend on that pixel alone, so every window that holds it agrees and the
    blended scores must equal the network applied to the whole grid at once."""

    def __init__(self, seed=0, classes=9):
        super().__init__()
        torch.manual_seed(seed)
        self.body = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 1), torch.nn.Tanh(), torch.nn.Conv2d(8, classes, 1))

    def forward(self, x):
        return self.body(x)


class Probe(torch.nn.Module):
    """Class 1 wherever it looks: the labels show which pixels some window covered (the rest is background)."""

    def forward(self, x):
        out = torch.zeros(x.shape[0], 9, *x.shape[2:], device=x.device)
        out[:, 1] = 1.0
        return out


class Counting(torch.nn.Module):
    """Records the batch size of every forward call of ``net``."""

    def __init__(self, net):
        super().__init__()
        self.net, self.batches = net, []

    def forward(self, x):
        self.batches.append(x.shape[0])
        return self.net(x)


def _volume(h, w, d, spacing, body=None, seed=0):
    """(1, 1, h, w, d) windowed CT in [0, 1] (0 = air) with ``spacing`` mm pixels; tissue in ``body`` rows/columns."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(1, 1, h, w, d)
    r0, r1, c0, c1 = body or (0, h, 0, w)
    x[..., r0:r1, c0:c1, :] = 0.05 + 0.9 * torch.rand(1, 1, r1 - r0, c1 - c0, d, generator=g)
    return MetaTensor(x, affine=torch.diag(torch.tensor([spacing, spacing, 2.0, 1.0])))


def _slices(vol):
    """(D, 1, H, W) slices and their pixel size as the inferer reads it (the float32 affine's)."""
    return torch.as_tensor(vol)[0].permute(3, 0, 1, 2), inplane_spacing(vol.affine)


# --------------------------------------------------------------------------------- (a) one window = whole slice
@pytest.mark.parametrize("resample", ["smooth", "protocol"])
def test_a_slice_one_window_covers_gets_the_whole_slice_result_to_float_rounding(resample):
    """A 200 × 180 mm slice at 1 mm fits one 224² window: sliding windows and the whole-slice grid at the same
    pixel size give the same scores to float rounding and the same labels."""
    vol = _volume(200, 180, 5, 1.0, body=(20, 180, 30, 150))
    torch.manual_seed(0)
    net = TinySegNet().eval()
    whole = AxialSliceInferer(pixel_size=1.0, sw_batch_size=4, resample=resample)
    sliding = AxialSliceInferer(pixel_size=1.0, sw_batch_size=4, resample=resample, slice_window="sliding")
    assert sliding.windows.grid_size((200, 180), (1.0, 1.0)) == (224, 224)
    labels = whole(vol, net)
    assert len(torch.unique(labels)) > 2  # the network does tell pixels apart
    assert torch.equal(sliding(vol, net), labels)
    x, spacing = _slices(vol)
    with torch.no_grad():
        expected = whole.scores(whole._to_roi(x, torch.device("cpu"), torch.tensor([spacing]).expand(5, 2))[0], [net])
        got, _ = sliding.windows(x, spacing, lambda w: sliding.scores(sliding._normalised(w), [net]))
    assert got.shape == expected.shape == (5, 9, 224, 224)
    assert float((got - expected).abs().max()) < 1e-6 * float(expected.abs().max())


# ------------------------------------------------------------------------ windows stitched where they came from
def test_windows_are_batched_across_slices_and_stitched_where_they_came_from():
    """A 0.7 mm, 512 × 400 slice at 1 mm is a 359 × 280 grid: 3 × 2 windows of 224 at overlap 0.5 per slice, run
    8 per forward across the 5 slices; the Gaussian-blended scores equal the pixel-wise network on the whole grid."""
    vol = _volume(512, 400, 5, 0.7)
    net = Counting(PixelNet()).eval()
    inferer = AxialSliceInferer(pixel_size=1.0, sw_batch_size=8, slice_window="sliding", skip_outside_body=False)
    x, spacing = _slices(vol)
    with torch.no_grad():
        scores, theta = inferer.windows(x, spacing, lambda w: inferer.scores(inferer._normalised(w), [net]))
        grid = inferer.windows.grid_size((512, 400), spacing)
        assert grid == (359, 280) and scores.shape == (5, 9, 359, 280)
        assert net.batches == [8, 8, 8, 6]  # 5 slices × 6 windows, batched across slices
        whole_grid = to_network_grid(x, torch.tensor([spacing]).expand(5, 2), 1.0, grid, "bicubic")[0]
        expected = net.net((whole_grid - 0.5) / 0.5)
    assert float((scores - expected).abs().max()) < 1e-6
    # through the volume call: the same labels as the inverse mapping of the whole-grid scores
    net.batches.clear()
    labels = inferer(vol, net)[0, 0].permute(2, 0, 1)
    assert torch.equal(labels, inferer._to_labels(expected, 512, 400, theta))
    assert sum(net.batches) == 30


def test_every_pixel_of_a_large_field_of_view_is_inside_a_window():
    """A 500 mm field of view at 1 mm: the whole-slice grid (224 mm) sees the central 45 % of the rows and columns,
    sliding windows every pixel of the body."""
    vol = _volume(512, 512, 2, 0.9765625, body=(30, 480, 40, 470))
    body = np.zeros((512, 512), bool)
    body[30:480, 40:470] = True
    whole = AxialSliceInferer(pixel_size=1.0, sw_batch_size=2)(vol, Probe())[0, 0, ..., 0].numpy() == 1
    sliding = AxialSliceInferer(pixel_size=1.0, sw_batch_size=2, slice_window="sliding")
    covered = sliding(vol, Probe())[0, 0, ..., 0].numpy() == 1
    assert covered[body].all() and whole[body].mean() < 0.3
    assert not covered[:25].any() and not covered[:, :35].any()  # outside the body's box: background


# --------------------------------------------------------------------- (b) the demo's real DICOM series at 1 mm
def test_every_organ_voxel_of_the_demo_dicom_series_is_inside_a_window(demo_dicom_series):
    """The real 0.98 mm, 500 mm field-of-view series at 1.0 mm: the whole-slice grid (224 mm) leaves 33 % of the
    spleen and 19 % of the liver outside; sliding windows leave none out."""
    from bundle.data.demos import TOTALSEG_TO_SYNAPSE
    from bundle.data.synapse import ORGANS, remap_labels
    from bundle.transforms.ct import ct_volume_transforms

    label_path = os.path.join(os.path.dirname(demo_dicom_series), "example_seg_dicom.nii.gz")
    if not os.path.isfile(label_path):
        pytest.skip("the demo's reference labels are not beside the series")
    load = ct_volume_transforms(keys=["image", "label"], num_classes=None, validate=False)
    data = load({"image": demo_dicom_series, "label": label_path})
    labels = remap_labels(np.asarray(data["label"][0]).astype(np.int64), TOTALSEG_TO_SYNAPSE)
    lost = {}
    for mode in ("whole", "sliding"):
        seen = AxialSliceInferer(pixel_size=1.0, sw_batch_size=8, slice_window=mode)(data["image"][None], Probe())
        seen = seen[0, 0].numpy() == 1
        lost[mode] = {name: 1.0 - seen[labels == i].mean() for i, name in enumerate(ORGANS, 1) if (labels == i).any()}
    assert lost["whole"]["spleen"] == pytest.approx(0.332, abs=0.005)
    assert lost["whole"]["liver"] == pytest.approx(0.192, abs=0.005)
    assert set(lost["sliding"]) >= {"spleen", "liver", "stomach", "aorta"}
    assert all(v == 0.0 for v in lost["sliding"].values()), lost["sliding"]


# ---------------------------------------------------------------------------------- windows outside the body
def test_body_box_is_the_body_on_the_grid_widened_to_one_window():
    body = torch.zeros(400, 400, dtype=torch.bool)
    body[10:60, 300:390] = True  # 0.5 mm pixels: rows 5–30 mm, columns 150–195 mm of a 200 mm slice
    assert body_box(body, (0.5, 0.5), 0.5, (400, 400), (224, 224)) == (0, 224, 176, 400)
    assert body_box(body, (0.5, 0.5), 0.25, (800, 800), (100, 100)) == (20, 120, 600, 780)
    assert body_box(None, (0.5, 0.5), 0.5, (400, 400), (224, 224)) == (0, 400, 0, 400)
    assert body_box(torch.zeros_like(body), (0.5, 0.5), 0.5, (400, 400), (224, 224)) == (0, 400, 0, 400)


def test_windows_outside_the_body_are_not_run():
    """Body in one corner of a 400² grid (3 × 3 windows): one window per slice runs; the body's labels are those
    of all nine windows, the rest is background."""
    vol = _volume(400, 400, 3, 0.5, body=(10, 60, 300, 390))
    net = Counting(PixelNet()).eval()
    every = AxialSliceInferer(pixel_size=0.5, sw_batch_size=3, slice_window="sliding", skip_outside_body=False)
    boxed = AxialSliceInferer(pixel_size=0.5, sw_batch_size=3, slice_window="sliding")
    all_windows = every(vol, net)[0, 0]
    assert sum(net.batches) == 3 * 9
    net.batches.clear()
    labels = boxed(vol, net)[0, 0]
    assert sum(net.batches) == 3 * 1
    assert torch.equal(labels[:224, 176:], all_windows[:224, 176:])  # the box (0:224, 176:400) on a 0.5 mm grid
    assert not labels[224:].any() and not labels[:, :176].any()


# -------------------------------------------------------------------------------- TTA, ensembles, ONNX Runtime
def test_tta_and_ensembles_average_probabilities_in_every_window():
    """Two pixel-wise members with flip TTA: the labels of the averaged softmax over the whole grid."""
    vol = _volume(512, 400, 3, 0.7)
    members = [PixelNet(0).eval(), PixelNet(1).eval()]
    inferer = AxialSliceInferer(
        pixel_size=1.0, sw_batch_size=4, slice_window="sliding", tta=True, networks=members, skip_outside_body=False
    )
    labels = inferer(vol, None)[0, 0].permute(2, 0, 1)
    x, spacing = _slices(vol)
    grid, theta = to_network_grid(x, torch.tensor([spacing]).expand(3, 2), 1.0, (359, 280), "bicubic")
    with torch.no_grad():
        mean = sum(torch.softmax(m((grid - 0.5) / 0.5), 1) for m in members) / 2
    expected = inferer._to_labels(torch.log(mean), 512, 400, theta)
    assert (labels != expected).float().mean() < 1e-4  # log-space blending: ties at float rounding only
    single = AxialSliceInferer(pixel_size=1.0, sw_batch_size=4, slice_window="sliding", skip_outside_body=False)
    assert not torch.equal(single(vol, members[0])[0, 0].permute(2, 0, 1), labels)  # the second member counts


def test_onnx_runtime_gives_the_eager_labels(tmp_path):
    pytest.importorskip("onnxruntime")
    vol = _volume(300, 260, 2, 1.0, body=(20, 280, 20, 240))
    torch.manual_seed(0)
    net = TinySegNet().eval()
    kwargs = dict(pixel_size=1.0, sw_batch_size=4, slice_window="sliding")
    eager = AxialSliceInferer(**kwargs)(vol, net)
    os.environ["MSA2NET_ONNX_CACHE"] = str(tmp_path)
    try:
        onnx = AxialSliceInferer(backend="onnx", **kwargs)(vol, net)
    finally:
        os.environ.pop("MSA2NET_ONNX_CACHE")
    assert list(tmp_path.glob("*.onnx")) and (onnx != eager).float().mean() < 1e-4


def test_a_network_run_under_inference_mode_is_blended():
    """The eager backend's wrapper (what backend auto gives on CUDA) runs the network under inference_mode; MONAI
    weights its windows in place, which such tensors refuse outside inference_mode."""
    from bundle.inferers.backends import optimize_for_inference

    vol = _volume(300, 260, 2, 1.0, body=(20, 280, 20, 240))
    net = PixelNet().eval()
    inferer = AxialSliceInferer(pixel_size=1.0, sw_batch_size=4, slice_window="sliding")
    assert torch.equal(inferer(vol, optimize_for_inference(PixelNet().eval(), backend="eager")), inferer(vol, net))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("amp", [None, torch.bfloat16])
def test_cuda_sliding_windows_as_inference_yaml_runs_them(amp):
    """On the GPU with backend auto (the eager wrapper, channels_last) and, as --amp True, under bf16 autocast: the
    windows are blended in float32 and give the CPU's labels (bf16: all but a few border pixels)."""
    vol = _volume(512, 400, 4, 0.7, body=(40, 470, 30, 380))
    torch.manual_seed(0)
    net = TinySegNet().eval()
    kwargs = dict(pixel_size=1.0, sw_batch_size=8, slice_window="sliding")
    cpu = AxialSliceInferer(**kwargs)(vol, net)
    inferer = AxialSliceInferer(backend="auto", **kwargs)
    with torch.autocast("cuda", dtype=amp, enabled=amp is not None):
        gpu = inferer(vol.cuda(), copy.deepcopy(net).cuda()).cpu()
    assert (gpu != cpu).float().mean() < (1e-3 if amp is None else 2e-2)


# --------------------------------------------------------------------------------------------------- refusals
def test_bad_options_are_refused_with_one_line():
    with pytest.raises(InputError, match=r"slice_window sliding samples each slice at a physical pixel size"):
        AxialSliceInferer(slice_window="sliding")
    with pytest.raises(InputError, match=r"slice_window 'tiles' is not whole or sliding"):
        AxialSliceInferer(pixel_size=1.0, slice_window="tiles")
    with pytest.raises(InputError, match=r"window_overlap 1.0 is not a fraction in \[0, 1\)"):
        SliceWindows((224, 224), 1.0, overlap=1.0)
