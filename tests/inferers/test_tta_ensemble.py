"""Inference extras: protocol resampling vs TransUNet's test_single_volume, flip TTA, checkpoint ensembles, LCC."""

import numpy as np
import pytest
import torch
from conftest import official_test_single_volume
from monai.data import MetaTensor

from bundle.inferers.axial import TTA_FLIPS, AxialSliceInferer
from bundle.inferers.ensemble import load_checkpoints
from bundle.transforms.postprocess import KeepLargestComponentPerOrgand, keep_largest_component


class _Conv(torch.nn.Module):
    """Toy 2D segmenter: one 3×3 conv (1 → 9 classes), optionally with flip-symmetric kernels."""

    def __init__(self, seed: int, symmetric: bool = False):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = torch.nn.Conv2d(1, 9, 3, padding=1)
        w = torch.randn(9, 1, 3, 3, generator=g)
        if symmetric:  # invariant under left-right and up-down flips: the net commutes with every flip
            w = (w + w.flip(-1) + w.flip(-2) + w.flip(-2, -1)) / 4
        with torch.no_grad():
            self.conv.weight.copy_(w * 3)
            self.conv.bias.copy_(torch.randn(9, generator=g))

    def forward(self, x):
        return self.conv(x)


def _volume(shape=(50, 40, 5), seed=0):
    rng = np.random.default_rng(seed)
    return torch.as_tensor(rng.random((1, 1, *shape), dtype=np.float32))


def test_protocol_resampling_equals_official_slice_loop():
    net, vol = _Conv(0), _volume((50, 40, 5))
    ours = AxialSliceInferer(sw_batch_size=2, resample="protocol")(vol, net)[0, 0].numpy()
    official = official_test_single_volume(vol[0, 0].numpy(), net)
    assert ours.shape == (50, 40, 5)
    assert np.array_equal(ours, official)
    assert len(np.unique(ours)) > 2  # the toy net predicts several classes, so equality is not trivial
    smooth = AxialSliceInferer(sw_batch_size=2, resample="smooth")(vol, net)[0, 0].numpy()
    assert not np.array_equal(smooth, official)  # the two modes really differ (bilinear scores vs nearest labels)


def _probs(inferer, vol, nets):
    """Averaged probabilities of the inferer at 224² for the first slice chunk (as __call__ computes them)."""
    x = vol[..., :2].permute(0, 4, 1, 2, 3).reshape(-1, 1, *vol.shape[2:4])
    return inferer.probabilities(inferer._to_roi(x, torch.device("cpu"))[0], nets), inferer._to_roi(x, "cpu")[0]


def test_tta_with_flip_symmetric_net_equals_no_tta():
    net, vol = _Conv(1, symmetric=True), _volume()
    plain, tta = AxialSliceInferer(sw_batch_size=3), AxialSliceInferer(sw_batch_size=3, tta=True)
    p_plain, x = _probs(plain, vol, [net])
    p_tta, _ = _probs(tta, vol, [net])
    assert torch.allclose(p_tta, p_plain, atol=1e-6)
    assert torch.allclose(p_plain, torch.softmax(net(x), 1), atol=1e-6)
    assert torch.equal(tta(vol, net), plain(vol, net))


def test_tta_averages_softmax_of_the_four_flips():
    net, vol = _Conv(2), _volume()  # not symmetric: TTA must change the probabilities
    inferer = AxialSliceInferer(tta=True)
    p_tta, x = _probs(inferer, vol, [net])
    expected = sum(torch.softmax(net(x.flip(d)), 1).flip(d) if d else torch.softmax(net(x), 1) for d in TTA_FLIPS) / 4
    assert len(TTA_FLIPS) == 4
    assert torch.allclose(p_tta, expected, atol=1e-6)
    assert (p_tta - torch.softmax(net(x), 1)).abs().max() > 1e-3


def _save(net, path, wrap=False):
    torch.save({"model": net.state_dict(), "epoch": 3} if wrap else net.state_dict(), path)
    return str(path)


def test_two_identical_checkpoints_equal_one(tmp_path):
    net, vol = _Conv(3), _volume()
    paths = [_save(net, tmp_path / "a.pt"), _save(net, tmp_path / "b.pt", wrap=True)]  # both file layouts
    members = load_checkpoints(_Conv(99), paths)
    assert len(members) == 2 and all(not m.training for m in members)
    inferer = AxialSliceInferer(sw_batch_size=2, networks=members, resample="protocol")
    p_two, x = _probs(inferer, vol, members)
    assert torch.allclose(p_two, torch.softmax(net(x), 1), atol=1e-6)
    single = AxialSliceInferer(sw_batch_size=2, resample="protocol")(vol, net)
    assert torch.equal(inferer(vol, _Conv(99)), single)  # the engine's (untrained) net is ignored


def test_two_different_checkpoints_average_probabilities(tmp_path):
    a, b = _Conv(4), _Conv(5)
    members = load_checkpoints(_Conv(0), [_save(a, tmp_path / "a.pt"), _save(b, tmp_path / "b.pt")])
    vol = _volume((224, 224, 3))  # at 224² the protocol mode does no zoom: labels = argmax of the mean exactly
    inferer = AxialSliceInferer(sw_batch_size=3, networks=members, resample="protocol")
    x = (vol[0, 0].permute(2, 0, 1)[:, None] - 0.5) / 0.5
    with torch.no_grad():
        mean = (torch.softmax(a(x), 1) + torch.softmax(b(x), 1)) / 2
    p, _ = _probs(inferer, vol, members)
    assert torch.allclose(p, mean[:2], atol=1e-6)
    labels = inferer(vol, _Conv(0))[0, 0].permute(2, 0, 1)
    assert torch.equal(labels, mean.argmax(1).to(torch.uint8))
    alone = [AxialSliceInferer(resample="protocol")(vol, n)[0, 0].permute(2, 0, 1) for n in (a, b)]
    assert not torch.equal(labels, alone[0]) and not torch.equal(labels, alone[1])  # the average is its own map


def test_load_checkpoints_errors_and_empty(tmp_path):
    assert load_checkpoints(_Conv(0), []) == [] and load_checkpoints(_Conv(0), None) == []
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoints(_Conv(0), [str(tmp_path / "missing.pt")])
    with pytest.raises(ValueError, match="resample must be one of"):
        AxialSliceInferer(resample="bicubic")


def _hand_made():
    """(1, 8, 8, 4) labels: spleen (1) big + small blob; kidney (2) one blob; liver (5) two cubes touching only
    at a corner (one component with full connectivity, two with face connectivity)."""
    v = np.zeros((8, 8, 4), np.uint8)
    v[0:3, 0:3, 0:2] = 1  # 18 voxels
    v[6:8, 6:8, 3] = 1  # 4 voxels, far away
    v[0:2, 5:8, 2:4] = 2
    v[4:6, 0:2, 0:2] = 5  # 8 voxels
    v[6, 2, 2] = 5  # touches (5, 1, 1) corner-to-corner only
    return v[None]


def test_lcc_on_hand_made_volume():
    v = _hand_made()
    full = keep_largest_component(v)
    expected = v.copy()
    expected[0, 6:8, 6:8, 3] = 0  # the small spleen blob goes; the corner-linked liver voxel stays
    assert np.array_equal(full, expected)
    faces = keep_largest_component(v, connectivity=1)
    expected[0, 6, 2, 2] = 0
    assert np.array_equal(faces, expected)
    only_liver = keep_largest_component(v, applied_labels=[5], connectivity=1)
    assert (only_liver == 1).sum() == 22 and (only_liver == 5).sum() == 8  # other labels untouched

    t = KeepLargestComponentPerOrgand(keys="pred", output_keys="pred_lcc")
    d = t({"pred": MetaTensor(torch.as_tensor(v), meta={"filename_or_obj": "x.nii.gz"})})
    assert torch.equal(d["pred"], torch.as_tensor(v))  # raw kept
    assert isinstance(d["pred_lcc"], MetaTensor) and d["pred_lcc"].meta["filename_or_obj"] == "x.nii.gz"
    assert np.array_equal(d["pred_lcc"].numpy(), full)
    with pytest.raises(ValueError, match="channel-first label map"):
        keep_largest_component(np.zeros((9, 4, 4, 4)))


def test_lcc_matches_monai_transform():
    pytest.importorskip("skimage")  # MONAI's CPU path needs scikit-image, which the bundle does not depend on
    from monai.transforms import KeepLargestConnectedComponent

    rng = np.random.default_rng(0)
    v = rng.integers(0, 4, (1, 14, 12, 6)).astype(np.uint8)
    v[0, :, :, :2] = 0
    for conn in (None, 1, 2):
        ref = KeepLargestConnectedComponent(applied_labels=[1, 2, 3], independent=True, connectivity=conn)(
            torch.as_tensor(v)
        )
        assert np.array_equal(keep_largest_component(v, [1, 2, 3], conn), np.asarray(ref))
