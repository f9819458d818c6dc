"""CT window, slice sampling from a volume, augmentation list, normalisation: shapes, ranges, label values."""

import numpy as np
import torch
from monai.utils import set_determinism

from bundle.transforms.ct import augmentation, ct_volume_transforms, slice_transforms


def test_volume_stage_windows_hu(ct_dataset):
    out = ct_volume_transforms()(
        {"image": str(ct_dataset / "images/vol0.nii.gz"), "label": str(ct_dataset / "images/vol0_label.nii.gz")}
    )
    assert out["image"].shape == (1, 40, 36, 3) and out["label"].shape == (1, 40, 36, 3)
    assert 0.0 <= float(out["image"].min()) and float(out["image"].max()) <= 1.0
    raw = np.asarray(__import__("nibabel").load(str(ct_dataset / "images/vol0.nii.gz")).dataobj)
    expected = np.clip((raw + 125) / 400, 0, 1)
    assert np.allclose(out["image"][0].numpy(), expected, atol=1e-6)
    assert set(np.unique(out["label"].numpy())) <= {0, 1, 5}


def test_slice_stage_shapes_ranges_labels():
    set_determinism(0)
    vol = {"image": torch.rand(1, 50, 40, 6), "label": torch.randint(0, 9, (1, 50, 40, 6)).float()}
    t = slice_transforms(size=224, slices_per_volume=3, augment=True)
    for _ in range(10):
        samples = t({k: v.clone() for k, v in vol.items()})
        assert len(samples) == 3
        for s in samples:
            assert s["image"].shape == (1, 224, 224) and s["label"].shape == (1, 224, 224)
            assert s["image"].dtype == torch.float32
            # [0, 1] → [-1, 1]; contrast ×1.5 (as official) reaches 2, bicubic/noise overshoot a little
            assert float(s["image"].min()) >= -1.6 and float(s["image"].max()) <= 2.6
            assert set(np.unique(s["label"].numpy())) <= set(range(9))  # nearest: no new label values
    set_determinism(None)


def test_no_augmentation_is_exact_resize_and_normalise():
    img = torch.zeros(1, 224, 224, 1)
    img[..., 0] = 0.25
    s = slice_transforms(224, 1, augment=False)({"image": img, "label": torch.zeros(1, 224, 224, 1)})[0]
    assert torch.allclose(s["image"], torch.full((1, 224, 224), -0.5), atol=1e-5)


def test_augmentation_draws_zero_to_four_members():
    aug = augmentation(32)
    assert len(aug.transforms) == 10
    assert aug.min_num_transforms == 0 and aug.max_num_transforms == 4
