"""Tests for bundle.evaluation.reports: the handler's CSV/JSON/Markdown, and that each plot writes a PNG of the right size."""

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT
from ignite.engine import Engine
from monai.data import MetaTensor
from PIL import Image

from bundle.evaluation.metrics import SYNAPSE_CLASSES
from bundle.evaluation.plots import (
    plot_dice_bars,
    plot_overlay,
    plot_training_curves,
    read_training_history,
    select_slices,
)
from bundle.evaluation.reports import SegmentationReport
from bundle.evaluation.tables import PAPER_MSA2NET_SYNAPSE, TABLE1_COLUMNS

medpy_binary = pytest.importorskip("medpy.metric.binary")


def _cases():
    """Two (H, W, D) volumes: case A has spleen (1) well found and liver (5) missed; case B adds a false-positive
    gallbladder (4). Every other organ is absent from both."""
    t = np.zeros((12, 10, 6), np.int64)
    t[2:7, 2:7, 1:4] = 1
    t[8:11, 1:5, 2:5] = 5
    pa = t.copy()
    pa[8:11, 1:5, 2:5] = 0  # liver missed
    pa[2:7, 2:7, 4] = 1  # spleen one slice too long
    pb = t.copy()
    pb[0:2, 7:9, 0:2] = 4  # gallbladder that is not there
    return [("caseA", pa, t), ("caseB", pb, t.copy())]


def _mt(a, spacing, name, onehot=False):
    x = torch.as_tensor(a)[None]
    if onehot:
        x = torch.nn.functional.one_hot(x[0], 9).permute(3, 0, 1, 2).float()
    return MetaTensor(
        x, affine=torch.diag(torch.tensor([*spacing, 1.0])), meta={"filename_or_obj": f"/d/{name}.nii.gz"}
    )


def _run_engine(tmp_path, **kw):
    cases = _cases()
    handler = SegmentationReport(output_dir=tmp_path, **kw)

    def step(engine, batch):
        name, p, t = batch
        # what MONAI's evaluator leaves after decollate_batch: a list of per-case dicts
        return [{"pred": _mt(p, (0.8, 0.8, 2.5), name, onehot=True), "label": _mt(t, (0.8, 0.8, 2.5), name)}]

    engine = Engine(step)
    handler.attach(engine)
    engine.run(cases, max_epochs=1)
    return engine, cases


def test_handler_writes_csv_json_markdown(tmp_path):
    engine, cases = _run_engine(tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "metrics_long.csv")))
    assert len(rows) == 2 * 8 * (2 + 4)  # cases x organs x (protocol dice, hd95 + clinical dice, hd95, assd, nsd)
    get = {(r["case"], r["label"], r["mode"], r["metric"]): (float(r["value"]), r["status"]) for r in rows}
    # spleen, both cases: medpy's values on the binary volumes
    for name, p, t in cases:
        assert get[(name, "1", "protocol", "dice")][0] == pytest.approx(medpy_binary.dc(p == 1, t == 1))
        assert get[(name, "1", "protocol", "hd95")][0] == pytest.approx(medpy_binary.hd95(p == 1, t == 1))
        mm = medpy_binary.hd95(p == 1, t == 1, voxelspacing=(0.8, 0.8, 2.5))
        assert get[(name, "1", "clinical", "hd95_mm")][0] == pytest.approx(mm)
    assert get[("caseA", "5", "protocol", "hd95")] == (0.0, "missed")  # published rule: miss -> HD95 0
    assert math.isnan(get[("caseA", "5", "clinical", "hd95_mm")][0])
    assert get[("caseB", "4", "protocol", "dice")] == (1.0, "false_positive")  # published rule: (1, 0)

    s = json.load(open(tmp_path / "summary.json"))
    assert s["num_cases"] == 2 and [c["case"] for c in s["cases"]] == ["caseA", "caseB"]
    assert s["cases"][0]["spacing"] == pytest.approx([0.8, 0.8, 2.5]) and s["cases"][0]["spacing_source"] == "affine"
    # protocol means: per organ over the 2 cases, then over the 8 organs
    dA, dB = medpy_binary.dc(cases[0][1] == 1, cases[0][2] == 1), 1.0
    liver = (0.0 + 1.0) / 2
    gall = (0.0 + 1.0) / 2  # case A: both empty -> 0 ; case B: FP -> 1
    assert s["protocol"]["per_organ"]["spleen"]["dice"] == pytest.approx((dA + dB) / 2)
    assert s["protocol"]["mean_dice"] == pytest.approx(((dA + dB) / 2 + liver + gall) / 8)
    assert s["protocol"]["hd95_unit"] == "voxel" and s["clinical"]["hd95_unit"] == "mm"
    cl = s["clinical"]["per_organ"]
    assert cl["liver"]["n_missed"] == 1 and cl["liver"]["hd95_mm"] == 0.0  # only case B measured, perfect
    assert cl["aorta"]["dice"] is None and cl["aorta"]["n_absent"] == 2  # NaN -> null in strict JSON
    assert engine.state.metrics["protocol_mean_dice"] == pytest.approx(s["protocol"]["mean_dice"])

    md = (tmp_path / "table1.md").read_text().splitlines()
    header = next(line for line in md if line.startswith("| Method"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["Method", *TABLE1_COLUMNS, "DSC ↑", "HD95 ↓"]
    paper = next(line for line in md if line.startswith("| MSA²Net (paper"))
    assert paper.split("|")[-3].strip() == "84.75" and paper.split("|")[-2].strip() == "13.29"
    ours = [c.strip() for c in next(line for line in md if line.startswith("| Ours")).strip("|").split("|")]
    assert float(ours[1]) == pytest.approx(100 * s["protocol"]["per_organ"]["spleen"]["dice"], abs=0.006)
    assert float(ours[-1]) == pytest.approx(s["protocol"]["mean_hd95"], abs=0.006)
    aorta = next(line for line in md if line.startswith("| aorta"))
    assert "missing" in aorta


def test_handler_resets_each_epoch_and_no_temp_files_left(tmp_path):
    cases = _cases()
    h = SegmentationReport(output_dir=tmp_path, pred_key="p", label_key="y")
    engine = Engine(lambda e, b: {"p": torch.as_tensor(b[1])[None], "y": torch.as_tensor(b[2])[None]})  # plain, no meta
    h.attach(engine)
    engine.run(cases, max_epochs=2)
    s = json.load(open(tmp_path / "summary.json"))
    assert s["num_cases"] == 2  # not 4: epoch 2 started afresh
    assert [c["case"] for c in s["cases"]] == ["case_000", "case_001"] and s["cases"][0]["spacing_source"] == "default"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics_long.csv", "summary.json", "table1.md"]


def test_handler_rejects_mismatched_names(tmp_path):
    with pytest.raises(
        ValueError, match=r"scores 2 organ label\(s\) \[1, 2\] .* label_names lists 1 \(a\): give one name"
    ):
        SegmentationReport(tmp_path, labels=[1, 2], class_names=["a"])


def test_select_slices():
    t = np.zeros((6, 6, 3), int)
    t[1:5, 1:5, :] = 2
    p = t.copy()
    p[1:3, 1:5, 0] = 0  # slice 0 half missed
    p[:, :, 2] = 0  # slice 2 fully missed
    sel = select_slices(t, p, 2)
    assert sel["worst"] == (2, 0.0) and sel["best"] == (1, 1.0)
    assert select_slices(t, p, 3) is None
    p[0, 0, 1] = 3  # a false-positive organ only: its one slice is both best and worst, Dice 0
    assert select_slices(t, p, 3) == {"best": (1, 0.0), "worst": (1, 0.0)}


def _png_size(path):
    assert path.stat().st_size > 0
    with Image.open(path) as im:
        return im.size


def test_plots_have_expected_pixel_size(tmp_path):
    img = np.random.default_rng(0).random((40, 30))
    t = np.zeros((40, 30), int)
    t[5:20, 5:15] = 1
    p = np.roll(t, 2, 0)
    assert _png_size(plot_overlay(img, t, p, tmp_path / "o.png", size_px=256, title="x")) == (256, 256)
    assert _png_size(plot_dice_bars({"a": 0.5, "b": float("nan")}, tmp_path / "b.png")) == (800, 400)
    bars = plot_dice_bars(dict(zip(SYNAPSE_CLASSES, [0.9] * 8)), tmp_path / "b2.png", paper=PAPER_MSA2NET_SYNAPSE)
    assert _png_size(bars) == (800, 400)
    with pytest.raises(ValueError, match="2D slices"):
        plot_overlay(img, t[:10], p, tmp_path / "bad.png")


def test_training_history_from_logs_tensorboard_and_json(tmp_path):
    (tmp_path / "train.log").write_text(
        "2025-01-01 12:00:00,000 - INFO - Epoch: 1/2, Iter: 1/3 -- train_loss: 0.9000 \n"
        "2025-01-01 12:00:01,000 - INFO - Epoch: 2/2, Iter: 2/3 -- train_loss: 0.5000 \n"
        "2025-01-01 12:00:02,000 - INFO - Epoch[2] Metrics -- val_mean_dice: 0.4200 val_hd95: 12.5000 \n"
        "unrelated line\n"
    )
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path / "tb")) as w:
        for step, v in [(1, 0.1), (2, 0.3)]:
            w.add_scalar("tb_dice", v, step)
    (tmp_path / "metrics.json").write_text(json.dumps({"json_loss": [1.0, 0.8, 0.6]}))
    h = read_training_history(tmp_path)
    assert h["train_loss"] == {"x": [1, 5], "y": [0.9, 0.5], "unit": "iteration"}  # (2-1)*3+2 = 5
    assert h["val_mean_dice"] == {"x": [2], "y": [0.42], "unit": "epoch"}
    assert h["val_hd95"]["y"] == [12.5]
    assert h["tb_dice"]["x"] == [1, 2] and h["tb_dice"]["y"] == pytest.approx([0.1, 0.3])
    assert h["json_loss"]["x"] == [1, 2, 3]
    assert _png_size(plot_training_curves(h, tmp_path / "c.png")) == (900, 400)
    with pytest.raises(ValueError, match="no training series"):
        plot_training_curves({}, tmp_path / "e.png")


def test_report_cli_functions(tmp_path):
    import importlib.util

    import nibabel as nib

    spec = importlib.util.spec_from_file_location("report_cli", Path(ROOT) / "scripts" / "evaluation" / "report.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    name, p, t = _cases()[0]
    paths = {}
    for k, a in {"image": np.random.default_rng(1).normal(0, 100, t.shape), "label": t, "pred": p}.items():
        paths[k] = str(tmp_path / f"{name}_{k}.nii.gz")
        nib.save(nib.Nifti1Image(a.astype(np.float32 if k == "image" else np.int16), np.eye(4)), paths[k])
    written = cli.overlays(**paths, out_dir=tmp_path / "png", size_px=128)
    # spleen and liver are in the truth -> best + worst each; the spleen's worst is the predicted-only z=4 (Dice 0)
    assert len(written) == 4 and any("spleen_worst_z4" in w for w in written)
    assert all(_png_size(Path(w)) == (128, 128) for w in written)
    _run_engine(tmp_path / "eval")
    assert _png_size(Path(cli.bars(tmp_path / "eval" / "summary.json", tmp_path / "b.png"))) == (800, 400)
    assert _png_size(Path(cli.bars(tmp_path / "eval" / "metrics_long.csv", tmp_path / "b2.png"))) == (800, 400)


def test_handler_reports_postprocessed_rows_beside_raw(tmp_path):
    """LCC rows: every table holds raw and LCC, labelled, each scored against the same truth (medpy values)."""
    from bundle.transforms.postprocess import keep_largest_component

    cases = _cases()
    lcc = {name: keep_largest_component(p[None])[0] for name, p, _ in cases}
    assert (lcc["caseA"] != cases[0][1]).sum() == 0  # one spleen blob: LCC changes nothing
    cases[1][1][9:11, 8:10, 4:6] = 1  # case B: a stray 2×2×2 spleen blob far from the organ, removed by LCC
    lcc["caseB"] = keep_largest_component(cases[1][1][None])[0]
    assert (lcc["caseB"] == 1).sum() == (cases[1][1] == 1).sum() - 8
    run_info = {"resample": "protocol", "tta": False}
    handler = SegmentationReport(output_dir=tmp_path, extra_pred_keys={"LCC": "pred_lcc"}, run_info=run_info)

    def step(engine, batch):
        name, p, t = batch
        sp = (0.8, 0.8, 2.5)
        return [{"pred": _mt(p, sp, name), "pred_lcc": _mt(lcc[name], sp, name), "label": _mt(t, sp, name)}]

    engine = Engine(step)
    handler.attach(engine)
    engine.run(cases, max_epochs=1)

    rows = list(csv.DictReader(open(tmp_path / "metrics_long.csv")))
    assert len(rows) == 2 * 2 * 8 * 6 and {r["postprocess"] for r in rows} == {"raw", "LCC"}
    get = {(r["case"], r["postprocess"], r["label"], r["mode"], r["metric"]): float(r["value"]) for r in rows}
    p_raw, p_lcc, t = cases[1][1], lcc["caseB"], cases[1][2]
    assert get[("caseB", "raw", "1", "protocol", "hd95")] == pytest.approx(medpy_binary.hd95(p_raw == 1, t == 1))
    assert get[("caseB", "LCC", "1", "protocol", "hd95")] == pytest.approx(medpy_binary.hd95(p_lcc == 1, t == 1))
    assert get[("caseB", "LCC", "1", "protocol", "dice")] == pytest.approx(medpy_binary.dc(p_lcc == 1, t == 1))
    assert get[("caseB", "LCC", "1", "protocol", "hd95")] < get[("caseB", "raw", "1", "protocol", "hd95")]

    s = json.load(open(tmp_path / "summary.json"))
    assert s["run"] == run_info
    lcc_spleen = s["postprocessed"]["LCC"]["protocol"]["per_organ"]["spleen"]
    assert lcc_spleen["hd95"] == pytest.approx(np.mean([get[(c, "LCC", "1", "protocol", "hd95")] for c, *_ in cases]))
    assert s["postprocessed"]["LCC"]["protocol"]["mean_dice"] > s["protocol"]["mean_dice"]
    assert engine.state.metrics["protocol_mean_dice_LCC"] == pytest.approx(
        s["postprocessed"]["LCC"]["protocol"]["mean_dice"]
    )

    md = (tmp_path / "table1.md").read_text()
    assert "Evaluated: resample = protocol, tta = False." in md
    raw_row = next(line for line in md.splitlines() if line.startswith("| Ours (protocol, raw)"))
    lcc_row = next(line for line in md.splitlines() if line.startswith("| Ours (protocol, LCC)"))
    assert float(lcc_row.split("|")[-2]) == pytest.approx(s["postprocessed"]["LCC"]["protocol"]["mean_hd95"], abs=0.006)
    assert float(raw_row.split("|")[-2]) == pytest.approx(s["protocol"]["mean_hd95"], abs=0.006)
    assert "## Clinical mode, raw" in md and "## Clinical mode, LCC" in md
    assert "Resampling is" not in md  # protocol resampling: no warning
    handler.run_info = {"resample": "smooth"}
    handler.write()
    assert "Resampling is **smooth**, not the protocol's" in (tmp_path / "table1.md").read_text()

    import importlib.util

    spec = importlib.util.spec_from_file_location("report_cli", Path(ROOT) / "scripts" / "evaluation" / "report.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    for src in ("summary.json", "metrics_long.csv"):
        assert _png_size(Path(cli.bars(tmp_path / src, tmp_path / "b.png", postprocess="LCC"))) == (800, 400)
    with pytest.raises(ValueError, match="no post-processed rows"):
        cli.bars(tmp_path / "summary.json", tmp_path / "b.png", postprocess="opening")
    with pytest.raises(ValueError, match="'raw' names"):
        SegmentationReport(tmp_path, extra_pred_keys={"raw": "x"})


def test_table_counts_the_pairs_each_protocol_rule_scored(tmp_path):
    """Predicted-but-absent scores 100 % (official rule), missed and absent-from-both 0: the header counts each, so a
    protocol mean far above the clinical one explains itself."""
    truth = np.zeros((1, 8, 8, 2), np.int64)
    truth[0, 2:5, 2:5, :] = 1  # organ 1 present, organ 2 absent, organ 3 present
    truth[0, 6:8, 6:8, :] = 3
    pred = np.zeros_like(truth)
    pred[0, 2:5, 2:5, :] = 1  # organ 1 found
    pred[0, 0:2, 0:2, :] = 2  # organ 2 predicted but absent from the reference; organ 3 missed
    handler = SegmentationReport(output_dir=tmp_path, labels=[1, 2, 3, 4], class_names=["a", "b", "c", "d"])
    handler.add_case(torch.as_tensor(pred), torch.as_tensor(truth), name="case")
    summary = handler.write()
    md = (tmp_path / "table1.md").read_text()
    assert [summary["protocol"]["per_organ"][n]["dice"] for n in "abcd"] == [1.0, 1.0, 0.0, 0.0]
    assert "Here, of 4 case-organ pairs: 1 predicted but absent (scored 100 %), 1 missed, 1 absent from both" in md
    assert summary["clinical"]["per_organ"]["b"]["dice"] == 0.0  # the clinical table scores it 0
