"""Tests for bundle.evaluation.metrics: protocol equals medpy, edge cases, clinical mm values, NSD, ISIC pooled formulas."""

import numpy as np
import pytest
import torch

from bundle.evaluation import metrics as M

medpy_binary = pytest.importorskip("medpy.metric.binary")


def _medpy_case(p, t):
    """The official calculate_metric_percase, verbatim logic (TransUNet utils.py)."""
    p, t = p.astype(np.uint8), t.astype(np.uint8)
    if p.sum() > 0 and t.sum() > 0:
        return medpy_binary.dc(p, t), medpy_binary.hd95(p, t)
    if p.sum() > 0 and t.sum() == 0:
        return 1, 0
    return 0, 0


def _blob(rng, shape, n):
    m = np.zeros(shape, bool)
    for _ in range(n):
        c = [rng.integers(0, s) for s in shape]
        r = [rng.integers(1, max(2, s // 3)) for s in shape]
        m[tuple(slice(max(0, a - b), a + b) for a, b in zip(c, r))] = True
    return m


@pytest.mark.parametrize("shape", [(20, 20, 20), (40, 12, 5), (3, 30, 17), (64, 64, 2)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_protocol_matches_medpy_random(shape, seed):
    rng = np.random.default_rng(seed)
    p, t = _blob(rng, shape, 3), _blob(rng, shape, 2)
    # a speckle of random voxels makes surfaces irregular (and touching the array edge)
    p |= rng.random(shape) > 0.97
    d, h = M.protocol_case(p, t)
    md, mh = _medpy_case(p, t)
    assert d == pytest.approx(md, abs=1e-12)
    assert h == pytest.approx(mh, abs=1e-9)


def test_protocol_single_voxels_and_hand_values():
    p = np.zeros((5, 6, 7), bool)
    t = np.zeros_like(p)
    p[1, 1, 1] = True
    t[4, 5, 1] = True  # 3 and 4 voxels apart -> distance 5 both ways
    assert M.protocol_case(p, t) == (0.0, 5.0)
    assert M.protocol_case(p, t)[1] == pytest.approx(medpy_binary.hd95(p, t))
    assert M.protocol_case(p, p) == (1.0, 0.0)


def test_protocol_anisotropic_spacing_matches_medpy():
    rng = np.random.default_rng(7)
    p, t = _blob(rng, (30, 25, 9), 2), _blob(rng, (30, 25, 9), 2)
    sd = M.surface_distances(p, t, spacing=(0.7, 0.9, 3.0))
    assert sd.hd95() == pytest.approx(medpy_binary.hd95(p, t, voxelspacing=(0.7, 0.9, 3.0)))
    assert sd.assd() == pytest.approx(medpy_binary.assd(p, t, voxelspacing=(0.7, 0.9, 3.0)))


def test_protocol_edge_cases():
    empty = np.zeros((4, 4, 4), bool)
    full = empty.copy()
    full[1:3, 1:3, 1:3] = True
    assert M.protocol_case(full, empty) == (1.0, 0.0)  # false-positive organ: published rule
    assert M.protocol_case(empty, full) == (0.0, 0.0)  # missed organ scores HD95 0
    assert M.protocol_case(empty, empty) == (0.0, 0.0)
    for p, t in [(full, empty), (empty, full), (empty, empty)]:
        assert M.protocol_case(p, t) == _medpy_case(p, t)


def test_dice_agrees_with_monai_where_defined():
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot

    rng = np.random.default_rng(3)
    truth = rng.integers(0, 4, (16, 16, 8))
    pred = np.where(rng.random(truth.shape) > 0.3, truth, rng.integers(0, 4, truth.shape))
    res = M.evaluate_case(pred, truth, labels=range(1, 4))
    oh = lambda x: one_hot(torch.as_tensor(x)[None, None], 4)  # noqa: E731
    monai = DiceMetric(include_background=False, reduction="none")(oh(pred), oh(truth))[0]
    for i, c in enumerate(range(1, 4)):
        assert res[c]["protocol"]["dice"] == pytest.approx(float(monai[i]), abs=1e-6)
        assert res[c]["clinical"]["dice"] == pytest.approx(float(monai[i]), abs=1e-6)


def test_clinical_offset_cubes_in_mm():
    # Two 4x4x4 cubes offset by k=2 voxels along axis 2 with spacing 3 mm there.
    # Faces perpendicular to the offset are 2 voxels = 6 mm apart; the 4x4 face voxels on the far side of
    # each cube have distance 6 mm, every other surface voxel lies on (or 0 from) the other surface.
    p = np.zeros((8, 8, 12), bool)
    t = np.zeros_like(p)
    p[2:6, 2:6, 2:6] = True
    t[2:6, 2:6, 4:8] = True
    r = M.clinical_case(p, t, spacing=(1.0, 1.0, 3.0), nsd_tolerance_mm=2.0)
    assert r["status"] == "ok"
    assert r["dice"] == pytest.approx(2 * 32 / 128)
    # Surface of a 4^3 cube = 64 - 2^3 = 56 voxels. Directed p->t (t's surface: faces z=4, z=7, rings z=5, z=6):
    # p's face z=2 (16 voxels) -> t's face z=4, 2 slices = 6 mm; p's ring z=3 (12) -> 1 slice = 3 mm;
    # p's ring z=4 (12) lies on t's face -> 0; p's face z=5: its ring (12) lies on t's ring -> 0, its 2x2 inside
    # (4) is 1 voxel in-plane from t's ring -> 1 mm. Symmetric for t->p.
    d = np.array([6.0] * 16 + [3.0] * 12 + [0.0] * 24 + [1.0] * 4)
    assert r["assd_mm"] == pytest.approx(d.mean())
    assert r["hd95_mm"] == pytest.approx(np.percentile(np.hstack([d, d]), 95))
    assert r["nsd"] == pytest.approx((24 + 4) / 56)  # within 2 mm: the 0 and 1 mm groups
    assert r["hd95_mm"] == pytest.approx(medpy_binary.hd95(p, t, voxelspacing=(1, 1, 3)))


def test_clinical_edge_cases_are_nan_not_zero():
    empty = np.zeros((4, 4, 4), bool)
    full = empty.copy()
    full[1:3, 1:3, 1:3] = True
    miss = M.clinical_case(empty, full)
    assert miss["status"] == "missed" and miss["dice"] == 0.0 and np.isnan(miss["hd95_mm"])
    fp = M.clinical_case(full, empty)
    assert fp["status"] == "false_positive" and np.isnan(fp["assd_mm"]) and fp["nsd"] == 0.0
    absent = M.clinical_case(empty, empty)
    assert absent["status"] == "absent" and np.isnan(absent["dice"])
    with pytest.raises(ValueError, match="non-empty"):
        M.surface_distances(empty, full)


def test_nsd_sanity():
    p = np.zeros((10, 10, 10), bool)
    p[2:8, 2:8, 2:8] = True
    t = np.roll(p, 1, axis=0)
    assert M.clinical_case(p, p)["nsd"] == 1.0
    assert M.clinical_case(p, t, nsd_tolerance_mm=1.0)["nsd"] == 1.0  # every voxel within 1 voxel
    assert M.clinical_case(p, t, nsd_tolerance_mm=0.0)["nsd"] < 1.0
    lo = M.clinical_case(p, np.roll(p, 2, 0), nsd_tolerance_mm=1.0)["nsd"]
    assert 0.0 < lo < 1.0


def test_nsd_matches_monai_surface_dice():
    from monai.metrics import compute_surface_dice

    rng = np.random.default_rng(5)
    p, t = _blob(rng, (20, 18, 10), 2), _blob(rng, (20, 18, 10), 2)
    ours = M.clinical_case(p, t, spacing=(1.0, 1.0, 2.0), nsd_tolerance_mm=2.0)["nsd"]
    oh = lambda m: torch.as_tensor(np.stack([~m, m]))[None].float()  # noqa: E731
    ref = compute_surface_dice(oh(p), oh(t), class_thresholds=[2.0], spacing=(1.0, 1.0, 2.0))
    assert ours == pytest.approx(float(ref[0, 0]), abs=1e-6)


def test_summaries_mean_over_cases_then_organs():
    cases = [
        {1: {"dice": 1.0, "hd95": 2.0}, 2: {"dice": 0.0, "hd95": 0.0}},
        {1: {"dice": 0.5, "hd95": 4.0}, 2: {"dice": 0.5, "hd95": 1.0}},
    ]
    s = M.summarize_protocol(cases)
    assert s["per_label"][1] == {"dice": 0.75, "hd95": 3.0}
    assert s["mean_dice"] == pytest.approx((0.75 + 0.25) / 2)
    assert s["mean_hd95"] == pytest.approx((3.0 + 0.5) / 2)
    nan = float("nan")
    ok = {"dice": 0.8, "hd95_mm": 4.0, "assd_mm": 1.0, "nsd": 0.9, "status": "ok"}
    miss = {"dice": 0.0, "hd95_mm": nan, "assd_mm": nan, "nsd": 0.0, "status": "missed"}
    c = M.summarize_clinical([{1: ok}, {1: miss}])
    assert c["per_label"][1]["dice"] == pytest.approx(0.4)
    assert c["per_label"][1]["hd95_mm"] == 4.0  # the miss is counted, not averaged in as 0
    assert c["per_label"][1]["n_missed"] == 1 and c["per_label"][1]["n_ok"] == 1


def test_isic_pooled_hand_case():
    m = M.BinaryPooledMetrics()
    # image 1: TP=2 FP=1 FN=1 TN=0 ; image 2: TP=0 FP=0 FN=0 TN=4
    m.update(np.array([1, 1, 1, 0]), np.array([1, 1, 0, 1]))
    m.update(np.zeros((2, 2)), np.zeros((2, 2)))
    r = m.compute()
    assert r["dsc"] == pytest.approx(4 / 6)
    assert r["iou"] == pytest.approx(2 / 4)
    assert r["acc"] == pytest.approx(6 / 8)
    assert r["se"] == pytest.approx(2 / 3)
    assert r["sp"] == pytest.approx(4 / 5)
    pi = m.compute(per_image=True)
    assert pi["acc"] == pytest.approx((2 / 4 + 1.0) / 2)
    assert pi["se"] == pytest.approx(2 / 3)  # image 2 has no lesion: SE undefined, skipped
    assert pi["n_images"] == 2


def test_isic_threshold_and_batch():
    m = M.BinaryPooledMetrics(threshold=0.5)
    m.update_batch(np.array([[0.9, 0.2], [0.6, 0.4]]), np.array([[1, 0], [0, 0]]))
    r = m.compute()
    assert r["se"] == 1.0 and r["sp"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="no images"):
        M.BinaryPooledMetrics().compute()


def test_per_image_dice_iou():
    r = M.per_image_dice_iou([np.array([1, 1, 0]), np.zeros(3)], [np.array([1, 0, 0]), np.zeros(3)])
    assert r["per_image_dice"] == [pytest.approx(2 / 3), 1.0]
    assert r["iou"] == pytest.approx((0.5 + 1.0) / 2)
    r = M.per_image_dice_iou([np.zeros(3)], [np.zeros(3)], empty_score=float("nan"))
    assert np.isnan(r["dice"])
