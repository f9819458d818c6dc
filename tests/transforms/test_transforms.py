"""CT window, slice sampling from a volume, augmentation list, normalisation: shapes, ranges, label values."""

import os

import numpy as np
import pytest
import torch
from conftest import ROOT
from monai.bundle import ConfigParser
from monai.utils import set_determinism

from bundle.data.synapse import HU_WINDOW
from bundle.transforms.ct import augmentation, ct_volume_transforms, slice_transforms
from bundle.transforms.geometry import Geometry


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


def _steps(compose) -> list:
    """Each step of a Compose as (class name, its settings): nested objects by their own settings, callables by
    name, so two chains compare equal exactly when they would do the same thing."""

    def plain(value, depth=0):
        if isinstance(value, (str, int, float, bool, type(None))):
            return value
        if isinstance(value, (list, tuple)):
            return [plain(v, depth + 1) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v, depth + 1) for k, v in value.items()}
        if callable(value) and hasattr(value, "__qualname__"):  # a function or a class
            return value.__qualname__
        if hasattr(value, "__dict__"):  # a transform, a reader: its class and settings
            return [type(value).__qualname__, plain(vars(value), depth + 1)] if depth < 4 else type(value).__qualname__
        return str(value)  # dtypes, enums

    return [plain(step) for step in compose.transforms]


@pytest.mark.parametrize("geometry", [Geometry(), Geometry("LPS", 1.6, True)])
def test_configs_list_the_volume_stage_ct_volume_transforms_builds(geometry, ct_dataset):
    """train.yaml (training and validation) and inference.yaml spell the CT volume stage out, as zoo bundles do;
    ``ct_volume_transforms`` builds the same chain for scripts and tests: same steps, same settings, same output."""
    expected = ct_volume_transforms(keys=["image", "label"], axcodes=geometry.axcodes, crop_body=geometry.crop_body)
    geometry_cfg = {"_target_": "bundle.transforms.geometry.Geometry", **geometry.state_dict()}
    train = ConfigParser(ConfigParser.load_config_file(os.path.join(ROOT, "configs/train.yaml")))
    train["geometry"] = geometry_cfg
    for chain in (
        train.get_parsed_content("train#deterministic_transforms"),
        train.get_parsed_content("validate#preprocessing"),
    ):
        assert _steps(chain) == _steps(expected)
    case = {"image": str(ct_dataset / "images/vol0.nii.gz"), "label": str(ct_dataset / "images/vol0_label.nii.gz")}
    got, want = chain(dict(case)), expected(dict(case))
    assert torch.equal(got["image"], want["image"]) and torch.equal(got["label"], want["label"])
    assert np.array_equal(got["image"].affine, want["image"].affine)

    inference = ConfigParser(ConfigParser.load_config_file(os.path.join(ROOT, "configs/inference.yaml")))
    inference["geometry"] = geometry_cfg
    for output_type in ("nifti", "dicom_seg"):
        inference["output_type"] = output_type
        chain = inference.get_parsed_content("preprocessing", lazy=False)
        images_only = ct_volume_transforms(
            keys=["image"], axcodes=geometry.axcodes, crop_body=geometry.crop_body, output_type=output_type
        )
        assert _steps(chain) == _steps(images_only)


def test_every_ct_config_windows_the_same_hu_range():
    """inference_ts.yaml re-spells the chain with MONAI components only (it runs without this package); its HU
    window must still be train.yaml's, or the exported model sees other intensities than it was trained on."""
    windows = {}
    for name, steps in (
        ("train", "volume_transforms"),
        ("inference", "preprocessing#transforms"),
        ("inference_ts", "preprocessing#transforms"),
    ):
        parser = ConfigParser(ConfigParser.load_config_file(os.path.join(ROOT, f"configs/{name}.yaml")))
        (step,) = [s for s in parser[steps] if s["_target_"] == "ScaleIntensityRanged"]
        windows[name] = (float(step["a_min"]), float(step["a_max"]))
    assert set(windows.values()) == {tuple(HU_WINDOW)}, windows  # ct_volume_transforms' window
