"""Low-precision CPU backends judged by per-organ Dice on the demo's real scans (``organ_dice``) and the
INT8 recipes compared (``int8_recipes``)."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import torch
from bench_common import (
    alternate,
    build_network,
    command_line,
    environment,
    inference_workflow,
    network_slices,
    setup,
    split_list,
    write_record,
)

from bundle.evaluation.demo import DICOM_ORGANS, dice_per_organ, load_canonical, reference_dice
from bundle.inferers.backends import cached_onnx
from bundle.inferers.openvino import OpenVinoInference, quantize_int8

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------------------- organ Dice
def _infer_config(backend: str, image: str, out_dir: Path, ckpt: str, calibration: str, threads: int) -> Path:
    """One ``configs/inference.yaml`` run of ``backend`` on ``image``; returns the written label map."""
    wf = inference_workflow(image, out_dir, ckpt, backend=backend, calibration=[calibration] if calibration else [])
    wf.initialize()
    wf.run()
    wf.finalize()
    name = Path(image.rstrip("/")).name.replace(".nii.gz", "")
    return out_dir / f"{name}_seg.nii.gz"


def organ_dice(
    backends: str = "eager,onnx,openvino,openvino_bf16,openvino_int8",
    ckpt: str = "runs/demo/model.pt",
    data: str = "demo_data",
    calibration: str = "demo_data/imagesTr/demo_train.nii.gz",
    threads: int = 2,
    name: str = "organ_dice_cpu_demo",
) -> None:
    """Per-organ Dice of each backend on the demo's two real scans, through ``configs/inference.yaml``.

    Scans: the held-out slices (``imagesTs``, 13 slices at 3 mm, scored against ``labelsTs``) and the unseen DICOM
    series (20 slices of 512², scored in world space against ``raw/example_seg_dicom.nii.gz`` on the organs it
    holds, as ``scripts/demo/run_demo.py`` does). Each row: a backend's Dice per organ, its change against
    ``eager`` (fp32, the reference; first in ``backends``), and the share of voxels, and of voxels labelled as an
    organ by either, whose label equals eager's. INT8 backends calibrate on ``calibration`` (not a scored scan).
    """
    setup(threads, "cpu")
    data_dir = ROOT / data
    scans = {
        "held_out": (str(data_dir / "imagesTs" / "demo_test.nii.gz"), str(data_dir / "labelsTs" / "demo_test.nii.gz")),
        "dicom": (str(data_dir / "raw" / "example_ct_dicom"), str(data_dir / "raw" / "example_seg_dicom.nii.gz")),
    }
    tmp = Path(tempfile.mkdtemp(prefix="msa2net_dice_"))
    calibration_path = str(ROOT / calibration) if calibration else ""
    preds: Dict[str, Dict[str, np.ndarray]] = {}
    rows = []
    for backend in split_list(backends):
        for scan, (image, label) in scans.items():
            t0 = time.perf_counter()
            pred_path = _infer_config(backend, image, tmp / backend / scan, str(ROOT / ckpt), calibration_path, threads)
            wall = time.perf_counter() - t0
            pred = load_canonical(str(pred_path))
            if scan == "dicom":
                scores, _ = reference_dice(str(pred_path), label)  # every organ the reference holds
            else:
                scores = dice_per_organ(pred, load_canonical(label))
            preds.setdefault(scan, {})[backend] = pred
            ref = preds[scan][split_list(backends)[0]]
            organs = (ref > 0) | (pred > 0)
            row = {"backend": backend, "scan": scan, "wall_s_incl_setup": wall}
            row.update({f"dice_{k}": v for k, v in scores.items()})
            row["mean_dice"] = float(np.nanmean(list(scores.values())))
            base = next(r for r in rows + [row] if r["scan"] == scan and r["backend"] == split_list(backends)[0])
            deltas = {k: row[f"dice_{k}"] - base[f"dice_{k}"] for k in scores}
            row.update({f"delta_{k}": v for k, v in deltas.items()})
            row["max_abs_delta"] = float(np.nanmax(np.abs(list(deltas.values()))))
            row["label_agreement"] = float((pred == ref).mean())
            row["organ_label_agreement"] = float((pred == ref)[organs].mean()) if organs.any() else 1.0
            rows.append(row)
            print(json.dumps(row), flush=True)
    notes = [
        "Dice against the demo's reference labels (TotalSegmentator model outputs, not manual); deltas against the "
        f"first backend ({split_list(backends)[0]}); DICOM series: the organs it holds ({', '.join(DICOM_ORGANS)}).",
        f"INT8 calibration: {calibration or 'none'} (the demo's training CT: no scored slice), slices prepared by the "
        "run's own preprocessing and slice mapping (bundle.inferers.calibration).",
        "wall_s_incl_setup: one process, shared cores; includes network build, export/calibration cache look-up and "
        "compilation: not a speed figure (see side_by_side and inference_200_cpu).",
    ]
    record = {"env": environment("cpu", threads), "ckpt": ckpt, "rows": rows, "notes": notes}
    write_record(name, record, command_line())
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- INT8 recipes
# which operations stay fp32 (regular expressions of the ONNX node names of bundle.networks.MSA2Net)
INT8_RECIPES = {
    "all": (),
    "se_fp32": (r"^/encoder/.*/conv/se/.*",),  # the openvino_int8 backend's recipe (bundle.inferers.openvino)
    "stage0_fp32": (r"^/encoder/stem/.*", r"^/encoder/stages\.0/.*"),
    "encoder_convs_fp32": (r"^/encoder/.*/conv/.*", r"^/encoder/stem/.*"),
    "encoder_fp32": (r"^/encoder/.*",),
    "decoder_fp32": (r"^/stages\..*", r"^/bottleneck_up/.*", r"^/head/.*"),
}


def _ort_int8(onnx_path: Path, calibration: torch.Tensor, dest: Path) -> Path:
    """ONNX Runtime static QDQ quantization: per-channel int8 weights, uint8 activations (MinMax over the
    calibration slices), convolutions and matrix products; the rest fp32."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"image": s[None].numpy()} for s in calibration])

        def get_next(self):
            return next(self.items, None)

    pre = dest.with_suffix(".pre.onnx")
    quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(dest), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=["Conv", "MatMul", "Gemm"], calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"CalibMaxIntermediateOutputs": 4})  # fmt: skip
    pre.unlink()
    return dest


def int8_recipes(
    ckpt: str = "runs/demo/model.pt",
    inputs: str = "demo_data/imagesTs/demo_test.nii.gz,demo_data/raw/example_ct_dicom",
    calibration: str = "demo_data/imagesTr/demo_train.nii.gz",
    recipes: str = ",".join(INT8_RECIPES),
    onnx_int8: bool = True,
    variant: str = "paper",
    threads: int = 2,
    batch: int = 8,
    rounds: int = 6,
    name: str = "int8_recipes_cpu_demo",
) -> None:
    """INT8 post-training quantization recipes of a trained checkpoint, side by side with fp32 and bf16.

    Each recipe of :data:`INT8_RECIPES` is an NNCF quantization (transformer preset) of the fp32 ONNX export with
    some operations left fp32; ``onnx_int8`` adds ONNX Runtime's static QDQ quantization. All calibrate on the
    slices of ``calibration`` and are scored on the slices of ``inputs`` (both prepared as configs/inference.yaml
    prepares them for ``ckpt``) at 224²: argmax agreement with eager fp32 on all pixels and on organ pixels (an
    organ in either), and time per slice alternately with ONNX Runtime fp32, OpenVINO fp32 and bf16.
    """
    import onnxruntime as ort

    setup(threads, "cpu")
    net = build_network(variant)
    trained = torch.load(ckpt, map_location="cpu", weights_only=True)
    net.load_state_dict(trained.get("model", trained))
    slices, calib = network_slices(inputs, ckpt), network_slices(calibration, ckpt)
    onnx_path = cached_onnx(net)
    tmp = Path(tempfile.mkdtemp(prefix="msa2net_int8_"))
    impls: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1

    def ort_session(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run(None, {"image": x.numpy()})[0])

    impls["onnx_fp32"] = ort_session(onnx_path)
    impls["openvino_fp32"] = OpenVinoInference(onnx_path, "fp32")
    try:
        impls["openvino_bf16"] = OpenVinoInference(onnx_path, "bf16")
    except Exception as err:  # no native bf16
        print(f"openvino bf16 skipped: {err}")
    setup_s = {}
    for recipe in split_list(recipes):
        t0 = time.perf_counter()
        path = quantize_int8(onnx_path, calib, tmp / f"{recipe}.xml", ignored=INT8_RECIPES[recipe])
        setup_s[f"openvino_int8_{recipe}"] = time.perf_counter() - t0
        impls[f"openvino_int8_{recipe}"] = OpenVinoInference(path, "fp32")  # already quantized: compile only
    if onnx_int8:
        t0 = time.perf_counter()
        impls["onnx_int8_qdq"] = ort_session(_ort_int8(onnx_path, calib, tmp / "ort_int8.onnx"))
        setup_s["onnx_int8_qdq"] = time.perf_counter() - t0
    with torch.no_grad():
        ref = torch.cat([net(slices[i : i + batch]) for i in range(0, len(slices), batch)]).argmax(1)
    agreement = {}
    for k, f in impls.items():
        labels = torch.cat([f(slices[i : i + batch]) for i in range(0, len(slices), batch)]).argmax(1)
        organs = (ref > 0) | (labels > 0)
        agreement[k] = (float((labels == ref).float().mean()), float((labels == ref)[organs].float().mean()))
    x = slices[torch.arange(batch) % len(slices)].contiguous()
    rows = alternate(impls, x, rounds, ("onnx_fp32", "openvino_fp32"))
    for row in rows:
        row.update(argmax_agreement=agreement[row["impl"]][0], organ_argmax_agreement=agreement[row["impl"]][1])
        row["fp32_ops"] = "; ".join(INT8_RECIPES.get(row["impl"].replace("openvino_int8_", ""), ())) or "-"
        row["quantize_s"] = setup_s.get(row["impl"], "")
    notes = [
        f"{len(slices)} slices of {inputs} scored, {len(calib)} slices of {calibration} calibrate; prepared as "
        f"configs/inference.yaml prepares them for {ckpt}. Agreement at 224² against eager fp32 of the same weights.",
        "NNCF recipes: model_type TRANSFORMER (asymmetric activations, SmoothQuant; softmax, LayerNorm, GELU never "
        "quantized), fp32_ops left unquantized; the rest of each INT8 graph computes in fp32 (precision hint f32).",
        "Times: alternating rounds in one process (only ratios are comparable), batch of real slices.",
    ]
    record = {"env": environment("cpu", threads), "ckpt": ckpt, "batch": batch, "rounds": rounds}
    record.update(rows=rows, notes=notes)
    write_record(name, record, command_line())
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
