"""The same patient in any storage order gets the same mask in the patient (issue: LPS storage scored Dice 0.000).

A PLS-stored synthetic patient (224² slices, so no resampling blurs the expected labels) is written in other storage
orders with nibabel (same world position for every voxel), as NRRD and as a DICOM series, and run through
``configs/inference.yaml`` and ``configs/evaluate.yaml`` with :class:`conftest.QuadrantNet`, a network whose classes
depend on where a bright pixel lies in the canonical view. Before canonical orientation, every order but the stored
one gave other classes.
"""

import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import QUADRANT_NET, ROOT, QuadrantNet, inference_workflow, quadrant_labels
from monai.bundle import ConfigWorkflow
from monai.transforms import LoadImage

from bundle.data.synthetic import write_dicom_series
from bundle.errors import InputError, root_input_error
from bundle.transforms.geometry import Geometry, body_mask, checkpoint_geometry, reorient_array

CFG = os.path.join(ROOT, "configs")
# rows → posterior 0.8 mm, columns → patient's left 0.7 mm, slices → superior 3 mm, with an offset
PLS_AFFINE = np.array([[0.0, -0.7, 0.0, 80.0], [-0.8, 0.0, 0.0, 90.0], [0.0, 0.0, 3.0, -20.0], [0, 0, 0, 1.0]])
ORDERS = ("PLS", "RAS", "LAS", "LPS", "ASR", "SLP")  # the last two: sagittal storage, axes permuted


def _patient(left_only=False):
    """(224, 224, 3) HU in PLS order: 400 HU blocks in several quadrants (other blocks per slice), 0 HU elsewhere."""
    pls = np.zeros((224, 224, 3), np.float32)
    blocks = [(20, 70, 130, 200), (140, 200, 150, 210)] if left_only else [(20, 70, 10, 60), (140, 200, 150, 210)]
    for z in range(3):
        for i, (r0, r1, c0, c1) in enumerate(blocks):
            if z == 1 and i == 0:
                continue
            pls[r0 + 3 * z : r1, c0 : c1 - 5 * z, z] = 400.0
    if not left_only:
        pls[150:180, 20:50, 2] = 400.0  # posterior-right, one slice only
    return pls


def _store(pls, axcodes, path, dtype=np.float32):
    """Writes the PLS array in another storage order: same world position for every voxel."""
    img = nib.Nifti1Image(pls.astype(dtype), PLS_AFFINE)
    ornt = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(PLS_AFFINE), nib.orientations.axcodes2ornt(tuple(axcodes))
    )
    stored = img.as_reoriented(ornt)
    assert nib.aff2axcodes(stored.affine) == tuple(axcodes)
    nib.save(stored, str(path))
    return str(path)


def _checkpoint(path, geometry=None):
    state = QuadrantNet().state_dict()
    torch.save(state if geometry is None else {"model": state, "geometry": geometry.state_dict()}, path)
    return str(path)


def _infer(inputs, out, ckpt, **override):
    wf = inference_workflow(inputs, out, ckpt, **{"network_def": dict(QUADRANT_NET), **override})
    wf.initialize()
    wf.run()
    wf.finalize()


def _stored_inputs(tmp_path, pls):
    """{name: path} of the same patient as NIfTI in every order of ORDERS, as NRRD and as a DICOM series."""
    import SimpleITK as sitk

    src = tmp_path / "in"
    os.makedirs(src, exist_ok=True)
    paths = {code: _store(pls, code, src / f"ct_{code}.nii.gz") for code in ORDERS}
    lps = _store(pls, "LPS", tmp_path / "lps_int16.nii.gz", np.int16)
    sitk.WriteImage(sitk.ReadImage(lps), str(src / "ct_nrrd.nrrd"))
    paths["nrrd"] = str(src / "ct_nrrd.nrrd")
    paths["dicom"] = write_dicom_series(lps, str(src / "ct_dicom"))
    return paths


def _output(out, name):
    return nib.load(str(out / f"{name}_seg.nii.gz"))


def test_same_patient_any_storage_order_gives_the_same_world_mask(tmp_path):
    pls = _patient()
    expected = quadrant_labels(pls)
    assert set(np.unique(expected)) == {0, 1, 3, 4}  # anterior-right, posterior-right, posterior-left present
    paths = _stored_inputs(tmp_path, pls)
    _infer(str(tmp_path / "in"), tmp_path / "out", _checkpoint(tmp_path / "model.pt"))
    for name, path in paths.items():
        seg = _output(tmp_path / "out", os.path.basename(path).split(".")[0])
        ref = nib.load(path) if name in ORDERS else LoadImage(reader="ITKReader", image_only=True)(path)
        # written on the input's own grid: its shape, affine (RAS, as MONAI reads it), storage order
        assert seg.shape == tuple(ref.shape) and np.allclose(seg.affine, np.asarray(ref.affine), atol=1e-4), name
        assert seg.get_data_dtype() == np.uint8
        world = reorient_array(np.asarray(seg.dataobj), seg.affine)  # exact: flips/permutations only
        np.testing.assert_array_equal(world, expected, err_msg=name)


def test_structure_on_the_patients_left_is_labelled_left_in_every_order(tmp_path):
    """Only the patient's left holds bright tissue: every order predicts only 'left' classes (2, 4), at world
    positions on the patient's left (RAS x below the volume's centre)."""
    pls = _patient(left_only=True)
    paths = _stored_inputs(tmp_path, pls)
    _infer(str(tmp_path / "in"), tmp_path / "out", _checkpoint(tmp_path / "model.pt"))
    centre_x = (PLS_AFFINE @ np.array([111.5, 111.5, 1.0, 1.0]))[0]
    for name, path in paths.items():
        seg = _output(tmp_path / "out", os.path.basename(path).split(".")[0])
        arr = np.asarray(seg.dataobj)
        assert set(np.unique(arr)) == {0, 2, 4}, name
        ijk = np.argwhere(arr > 0)
        world_x = (seg.affine[:3, :3] @ ijk.T + seg.affine[:3, 3:4])[0]
        assert (world_x < centre_x).all(), name


def test_evaluating_every_storage_order_scores_the_world_labels(tmp_path):
    """run evaluating on the same patient stored 6 ways + NRRD + DICOM, each with its labels stored alike: Dice 1.0
    for every organ of every case; the saved predictions lie on each input's grid."""
    pls = _patient()
    paths = _stored_inputs(tmp_path, pls)
    labels = tmp_path / "labels"
    os.makedirs(labels)
    items = []
    for name, path in paths.items():
        code = name if name in ORDERS else "LPS"  # NRRD and DICOM were written from the LPS copy
        lab = _store(quadrant_labels(pls), code, labels / f"{name}.nii.gz", np.uint8)
        if name in ("nrrd", "dicom"):  # the label must carry the affine the image loads with (LPS → RAS by ITK)
            affine = np.asarray(LoadImage(reader="ITKReader", image_only=True)(path).affine)
            img = nib.load(lab)
            nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine), lab)
        items.append({"image": path, "label": lab})
    with open(tmp_path / "dataset.json", "w") as f:
        json.dump({"training": items, "validation": items, "test": items}, f)
    ckpt = _checkpoint(tmp_path / "model.pt")
    wf = ConfigWorkflow(
        config_file=[os.path.join(CFG, "train.yaml"), os.path.join(CFG, "evaluate.yaml")],
        meta_file=os.path.join(CFG, "metadata.json"),
        logging_file=False,
        workflow_type="train",
        bundle_root=ROOT,
        dataset_dir=str(tmp_path),
        datalist=str(tmp_path / "dataset.json"),
        output_dir=str(tmp_path / "run"),
        ckpt_path=ckpt,
        network_def=dict(QUADRANT_NET),
        num_workers=0,
        show_progress=False,
        device="cpu",
        save_pred=True,
        resample="smooth",
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    summary = json.load(open(tmp_path / "run" / "eval" / "report" / "summary.json"))
    assert summary["num_cases"] == len(paths)
    per_organ = summary["protocol"]["per_organ"]  # classes 1, 3, 4 present (spleen, left kidney, gallbladder ids)
    for organ in ("spleen", "left kidney", "gallbladder"):
        assert per_organ[organ]["dice"] == pytest.approx(1.0) and per_organ[organ]["hd95"] == 0.0, organ
    for name, path in paths.items():
        seg = _output(tmp_path / "run" / "eval" / "pred", os.path.basename(path).split(".")[0])
        world = reorient_array(np.asarray(seg.dataobj), seg.affine)
        np.testing.assert_array_equal(world, quadrant_labels(pls), err_msg=name)


# ------------------------------------------------------------------------------------------------ checkpoints
def test_checkpoint_geometry_is_applied_or_refused(tmp_path):
    bare = _checkpoint(tmp_path / "official.pt")  # converted official weights: no geometry → the official one
    assert checkpoint_geometry(bare) == Geometry("PLS", None)
    made = _checkpoint(tmp_path / "lps.pt", Geometry("LPS", 1.6))
    assert checkpoint_geometry(made) == Geometry("LPS", 1.6)  # "checkpoint": its own
    assert checkpoint_geometry(made, axcodes="lps", pixel_size=1.6) == Geometry("LPS", 1.6)
    with pytest.raises(
        InputError, match=r"trained with axcodes LPS, pixel_size 1.6 mm.*--axcodes LPS --pixel_size 1.6"
    ):
        checkpoint_geometry(made, axcodes="RAS")
    with pytest.raises(InputError, match="different geometries"):
        checkpoint_geometry(None, [made, _checkpoint(tmp_path / "pls.pt", Geometry())])
    with pytest.raises(InputError, match="one of L/R"):
        Geometry("PLL")
    with pytest.raises(InputError, match="S or I last"):
        Geometry("SPL")
    with pytest.raises(InputError, match="positive size in mm"):
        Geometry("PLS", -1)
    with pytest.raises(InputError, match=r"resume with --axcodes LPS --pixel_size 1.6"):
        Geometry().load_state_dict(Geometry("LPS", 1.6).state_dict())


def test_inference_applies_the_checkpoints_axcodes(tmp_path):
    """A checkpoint trained on RAS-ordered slices is applied with RAS: the stored-LPS patient's world mask equals
    QuadrantNet's classes computed on the RAS view."""
    pls = _patient()
    src = _store(pls, "LPS", tmp_path / "ct.nii.gz")
    _infer(src, tmp_path / "out", _checkpoint(tmp_path / "ras.pt", Geometry("RAS")))
    seg = nib.load(str(tmp_path / "out" / "ct_seg.nii.gz"))
    ras_view = reorient_array(pls, PLS_AFFINE, "RAS")
    expected_ras = quadrant_labels(ras_view)
    np.testing.assert_array_equal(reorient_array(np.asarray(seg.dataobj), seg.affine, "RAS"), expected_ras)
    with pytest.raises(Exception) as err:
        _infer(src, tmp_path / "out2", tmp_path / "ras.pt", axcodes="PLS")
    assert "trained with axcodes RAS" in (root_input_error(err.value) or "")


@pytest.mark.parametrize(
    "affine, message",
    [
        (np.diag([0.8, 0.0, 3.0, 1.0]), "zero voxel spacing"),
        (np.array([[0.8, 0.8, 0, 0], [0.7, 0.7, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 1.0]]), "singular affine"),
        (np.diag([0.8, np.nan, 3.0, 1.0]), "NaN/inf"),
    ],
)
def test_bad_geometry_is_refused_and_nothing_is_written(tmp_path, affine, message):
    src = tmp_path / "in"
    os.makedirs(src)
    img = nib.Nifti1Image(np.zeros((24, 20, 3), np.float32), np.eye(4))
    img.header["qform_code"], img.header["sform_code"] = 0, 1  # the broken matrix as the header's sform
    img.header["srow_x"], img.header["srow_y"], img.header["srow_z"] = affine[0], affine[1], affine[2]
    pixdim = img.header["pixdim"]  # consistent with the matrix, so no reader "repairs" it from a qform
    pixdim[1:4] = np.linalg.norm(affine[:3, :3], axis=0)
    img.header["pixdim"] = pixdim
    img.update_header = lambda: None  # keep the raw header fields (nibabel would recompute them from the affine)
    nib.save(img, str(src / "bad.nii.gz"))
    assert np.allclose(nib.load(str(src / "bad.nii.gz")).affine, affine, equal_nan=True)
    with pytest.raises(Exception) as err:
        _infer(str(src / "bad.nii.gz"), tmp_path / "out", _checkpoint(tmp_path / "model.pt"))
    text = root_input_error(err.value) or ""
    assert "1 of 1 cases failed" in text
    failures = json.load(open(tmp_path / "out" / "failures.json"))
    assert message in failures[0]["reason"] and "bad.nii.gz" in failures[0]["reason"]
    assert "repair the header" in failures[0]["reason"]
    assert sorted(os.listdir(tmp_path / "out")) == ["failures.json"]  # no mask written


# ------------------------------------------------------------------------------------------------ pixel size
def test_fixed_pixel_size_is_storage_order_invariant_and_crops_to_its_field_of_view(tmp_path):
    """pixel_size 0.5 mm: the network sees the central 112 × 112 mm of the 179 × 157 mm slices; every storage order
    still gives the identical world mask, background outside that field of view, QuadrantNet's classes inside."""
    pls = _patient()
    paths = _stored_inputs(tmp_path, pls)
    _infer(str(tmp_path / "in"), tmp_path / "out", _checkpoint(tmp_path / "model.pt", Geometry("PLS", 0.5)))
    reference = None
    for name, path in paths.items():
        seg = _output(tmp_path / "out", os.path.basename(path).split(".")[0])
        world = reorient_array(np.asarray(seg.dataobj), seg.affine)
        reference = world if reference is None else reference
        np.testing.assert_array_equal(world, reference, err_msg=name)
    rows = np.abs((np.arange(224) + 0.5) * 0.8 - 224 * 0.8 / 2) < 56 - 1.0  # inside the 112 mm field of view
    cols = np.abs((np.arange(224) + 0.5) * 0.7 - 224 * 0.7 / 2) < 56 - 1.0
    inside = rows[:, None, None] & cols[None, :, None]
    outside = (
        ~(np.abs((np.arange(224) + 0.5) * 0.8 - 89.6) < 56 + 1.0)[:, None, None]
        | ~(np.abs((np.arange(224) + 0.5) * 0.7 - 78.4) < 56 + 1.0)[None, :, None]
    )
    assert (reference[np.broadcast_to(outside, reference.shape)] == 0).all()
    expected = quadrant_labels(pls)
    interior = np.broadcast_to(inside, expected.shape)
    agree = (reference == expected)[interior].mean()
    assert agree > 0.98, agree  # borders of the blocks move by up to a network pixel (0.5 mm)


def test_fixed_pixel_size_shows_organs_at_their_physical_size():
    """A 60 mm disc in a 358 mm field of view at 0.7 mm (512²) and in a 282 mm one at 3 mm (94²): the whole-slice
    resize shows it at different sizes, a 2 mm network grid at the same, true size (within 3 %)."""
    from bundle.transforms.geometry import to_network_grid

    def disc(n, spacing):
        c = (np.arange(n) + 0.5) * spacing - n * spacing / 2
        return torch.as_tensor((c[:, None] ** 2 + c[None, :] ** 2 < 30.0**2).astype(np.float32))[None, None]

    fine, coarse = disc(512, 0.7), disc(94, 3.0)
    area = {}
    for name, img, sp in (("fine", fine, 0.7), ("coarse", coarse, 3.0)):
        grid = to_network_grid(img, torch.tensor([[sp, sp]]), 2.0, (224, 224), "nearest")[0]
        area[name] = float(grid.sum()) * 2.0**2
        resized = torch.nn.functional.interpolate(img, size=(224, 224), mode="nearest")
        area[name + "_resize"] = float(resized.sum())
    assert abs(area["fine"] / area["coarse"] - 1) < 0.03 and abs(area["fine"] / (np.pi * 900) - 1) < 0.03
    assert area["coarse_resize"] / area["fine_resize"] > 1.5  # (358 / 282)² = 1.6: the official resize


def test_protocol_and_smooth_resampling_agree_with_a_pixel_size():
    """With pixel_size both resampling modes use the same physical grid: protocol takes the argmax at the network
    grid and maps labels back nearest, smooth maps scores back bilinear; they differ only at label borders."""
    from monai.data import MetaTensor

    from bundle.inferers.axial import AxialSliceInferer

    pls = _patient()
    vol = MetaTensor(torch.as_tensor(np.clip((pls + 125) / 400, 0, 1))[None, None], affine=torch.as_tensor(PLS_AFFINE))
    net = QuadrantNet().eval()
    out = {
        mode: AxialSliceInferer(resample=mode, pixel_size=1.2, sw_batch_size=2)(vol, net)[0, 0].numpy()
        for mode in ("protocol", "smooth")
    }
    assert set(np.unique(out["protocol"])) == set(np.unique(out["smooth"])) == {0, 1, 3, 4}
    assert (out["protocol"] == out["smooth"]).mean() > 0.99


# ------------------------------------------------------------------------------------------------ body crop
@pytest.mark.parametrize("resample", ["smooth", "protocol"])
def test_network_grid_mapping_stays_float32_under_autocast(resample):
    """The evaluators autocast the inferer (amp): the pixel-size grids in and out must not follow it into bf16,
    whose 8-bit mantissa put a 512 slice's edge samples up to ~1 px off. QuadrantNet uses no autocast op, so the
    labels under CPU bf16 autocast equal the fp32 ones exactly."""
    from monai.data import MetaTensor

    from bundle.inferers.axial import AxialSliceInferer
    from bundle.transforms.geometry import to_network_grid

    x = torch.rand(2, 1, 512, 500, generator=torch.Generator().manual_seed(0))
    spacing = torch.tensor([[0.7, 0.75], [0.7, 0.75]])
    ref, _ = to_network_grid(x, spacing, 1.6, (224, 224))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = to_network_grid(x, spacing, 1.6, (224, 224))
    assert out.dtype == torch.float32 and torch.equal(out, ref)
    vol = MetaTensor(
        torch.as_tensor(np.clip((_patient() + 125) / 400, 0, 1))[None, None], affine=torch.as_tensor(PLS_AFFINE)
    )
    inferer = AxialSliceInferer(resample=resample, pixel_size=1.2, sw_batch_size=2)
    ref = inferer(vol, QuadrantNet().eval())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(inferer(vol, QuadrantNet().eval()), ref)


def test_crop_body_centres_the_grid_on_the_patient_in_every_order(tmp_path):
    """crop_body: the patient (224² slices of 0 HU tissue) lies off-centre in a 400 × 420 field of air; cropped to
    the body, the network sees the patient's own quadrants in every storage order (QuadrantNet's classes of the
    patient alone, exact: the crop is 224² and the resize an identity), and the mask comes back on the input's grid
    with background in the air. Without the crop the same scan gets other classes."""
    pls = _patient()
    field = np.full((400, 420, 3), -1000.0, np.float32)
    field[170:394, 190:414] = pls
    expected = np.zeros(field.shape, np.uint8)
    expected[170:394, 190:414] = quadrant_labels(pls)
    paths = _stored_inputs(tmp_path, field)
    _infer(str(tmp_path / "in"), tmp_path / "out", _checkpoint(tmp_path / "model.pt", Geometry("PLS", None, True)))
    for name, path in paths.items():
        seg = _output(tmp_path / "out", os.path.basename(path).split(".")[0])
        ref = nib.load(path) if name in ORDERS else LoadImage(reader="ITKReader", image_only=True)(path)
        assert seg.shape == tuple(ref.shape) and np.allclose(seg.affine, np.asarray(ref.affine), atol=1e-4), name
        np.testing.assert_array_equal(reorient_array(np.asarray(seg.dataobj), seg.affine), expected, err_msg=name)
    _infer(paths["LPS"], tmp_path / "whole", _checkpoint(tmp_path / "whole.pt", Geometry("PLS", None, False)))
    seg = _output(tmp_path / "whole", "ct_LPS")
    whole = reorient_array(np.asarray(seg.dataobj), seg.affine)
    assert (whole != expected)[expected > 0].mean() > 0.2  # the field's quadrants are not the patient's


def test_crop_body_is_saved_applied_and_refused_like_the_other_settings(tmp_path):
    made = _checkpoint(tmp_path / "body.pt", Geometry("PLS", 3.0, True))
    assert checkpoint_geometry(made) == Geometry("PLS", 3.0, True)
    assert checkpoint_geometry(_checkpoint(tmp_path / "bare.pt")).crop_body is False  # official weights: no crop
    with pytest.raises(InputError, match=r"crop_body True.*--crop_body True"):
        checkpoint_geometry(made, crop_body=False)
    with pytest.raises(InputError, match="is not true or false"):
        Geometry("PLS", None, "yes")
    assert Geometry("PLS", None, "True").crop_body is True  # the CLI's string


def test_slice_window_is_saved_applied_and_refused_like_the_other_settings(tmp_path):
    made = _checkpoint(tmp_path / "sliding.pt", Geometry("PLS", 1.0, False, "sliding"))
    assert checkpoint_geometry(made) == Geometry("PLS", 1.0, False, "sliding")
    assert torch.load(made, weights_only=True)["geometry"]["slice_window"] == "sliding"
    # official weights and checkpoints made before the setting existed: whole slices
    assert checkpoint_geometry(_checkpoint(tmp_path / "bare.pt")).slice_window == "whole"
    older = tmp_path / "older.pt"
    torch.save({"model": QuadrantNet().state_dict(), "geometry": {"axcodes": "PLS", "pixel_size": 1.0}}, older)
    assert checkpoint_geometry(str(older)) == Geometry("PLS", 1.0, False, "whole")
    with pytest.raises(InputError, match=r"slice_window sliding.*--slice_window sliding"):
        checkpoint_geometry(made, slice_window="whole")
    with pytest.raises(InputError, match=r"resume with .*--slice_window sliding"):
        Geometry("PLS", 1.0).load_state_dict(Geometry("PLS", 1.0, False, "sliding").state_dict())
    with pytest.raises(InputError, match=r"slice_window 'tiles' is not whole or sliding"):
        Geometry("PLS", 1.0, False, "tiles")
    with pytest.raises(InputError, match=r"physical pixel size: give it one, e.g. --pixel_size 1.0"):
        Geometry("PLS", None, False, "sliding")
    assert Geometry("PLS", 1.0, False, "Sliding").slice_window == "sliding"  # the CLI's string, any case


def test_body_mask_keeps_every_slice_and_drops_what_is_apart_from_the_trunk():
    x = torch.zeros(1, 40, 50, 4)
    x[0, 5:30, 10:40, 1:3] = 0.3  # the trunk, on two slices only
    x[0, 35:38, 5:45, :] = 0.5  # the table, apart from it
    m = body_mask(x)
    assert m.shape == x.shape and m[0, :, :, 0].equal(m[0, :, :, 3])  # same footprint on every slice
    rows, cols = torch.nonzero(m[0, :, :, 0], as_tuple=True)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (5, 29, 10, 39)
    assert body_mask(torch.zeros(1, 8, 8, 2)).all()  # nothing above the threshold: no crop


def test_body_mask_leaves_out_an_arm_that_overlaps_the_trunk_on_another_slice():
    """The demo DICOM series' failure: on slice 0 the trunk is wider (it reaches column 14); on slice 1 it is
    narrower and an arm lies apart from it at columns 2..15. Their combined footprint is one region; per slice the
    arm is apart, so the crop stays on the trunk."""
    x = torch.zeros(1, 30, 50, 2)
    x[0, 5:25, 14:40, 0] = 0.3  # trunk, slice 0
    x[0, 5:25, 18:40, 1] = 0.3  # trunk, slice 1 (narrower)
    x[0, 10:20, 2:16, 1] = 0.3  # arm on slice 1: apart from its trunk, overlapping slice 0's
    rows, cols = torch.nonzero(body_mask(x)[0, :, :, 1], as_tuple=True)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (5, 24, 14, 39)


def test_metadata_states_the_geometry_of_the_weights():
    """The zip's / the .ts's metadata.json says what the weights need, not the config's defaults."""
    from bundle.transforms.geometry import Geometry, metadata_with_geometry

    with open(os.path.join(ROOT, "configs", "metadata.json")) as f:
        meta = json.load(f)
    official = metadata_with_geometry(meta, Geometry())
    assert official == meta  # the repository's file states the official geometry, word for word
    demo = metadata_with_geometry(meta, Geometry("PLS", 3.0, True))
    image = demo["network_data_format"]["inputs"]["image"]
    assert (image["axcodes"], image["pixel_size_mm"], image["crop_body"]) == ("PLS", 3.0, True)
    assert demo["image_classes"].endswith(
        "each volume cropped in-plane to the patient's body first (crop_body), axial slices sampled at 3 mm pixels "
        "onto 224x224, centred (pixel_size: 3)"
    )
    assert image["slice_window"] == "whole"
    sliding = metadata_with_geometry(meta, Geometry("PLS", 1.0, True, "sliding"))
    assert sliding["network_data_format"]["inputs"]["image"]["slice_window"] == "sliding"
    assert sliding["image_classes"].endswith(
        "(crop_body), axial slices sampled whole at 1 mm pixels, overlapping 224x224 windows (pixel_size: 1)"
    )
    assert meta["network_data_format"]["inputs"]["image"]["pixel_size_mm"] is None  # the input is not changed
