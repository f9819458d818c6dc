"""TensorRT overlay (configs/inference_trt.yaml, bundle/inferers/tensorrt.py).

On a CPU machine: the overlay parses and every id resolves except those that need TensorRT (the network and what
holds it), which fail with one InputError line, also on the command line; the precision rules and the engine's
name; and the ONNX graph that TensorRT is built from (MONAI's own export code with this bundle's arguments) equals
the eager network at two batch sizes. Where CUDA, tensorrt and polygraphy are present: a real engine's logits and
labels against eager fp32, its reuse from disk, and AxialSliceInferer with it.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, TinySegNet, make_volume

from bundle.errors import InputError, root_input_error
from bundle.inferers import tensorrt as trt_mod
from bundle.inferers.tensorrt import (
    check_tensorrt,
    plan_base,
    tensorrt_missing,
    trt_compile_args,
    trt_network,
    trt_networks,
)

CONFIGS = [os.path.join(ROOT, "configs", "inference.yaml"), os.path.join(ROOT, "configs", "inference_trt.yaml")]
ENTRY_IDS = {"run", "inference", "initialize", "finalize"}  # run the workflow; everything else is a component
NEEDS_TRT = {"network", "handlers", "evaluator"}  # the network and what refers to it (single-checkpoint run)
CUDA_TRT_MISSING = tensorrt_missing("cuda")


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A small CT volume and a checkpoint file with a geometry (the overlay needs no weights to parse)."""
    root = tmp_path_factory.mktemp("trt")
    make_volume(str(root / "ct.nii.gz"), str(root / "ct_label.nii.gz"))
    torch.save({"model": {}, "geometry": {"axcodes": "PLS", "pixel_size": None}}, root / "model.pt")
    return root


def _parser(case, **overrides):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(ConfigParser.load_config_files(CONFIGS))
    parser.update(
        {
            "input": str(case / "ct.nii.gz"),
            "output_dir": str(case / "out"),
            "ckpt_path": str(case / "model.pt"),
            "num_workers": 0,
            **overrides,
        }
    )
    return parser


def _resolve_all(parser):
    """{id: InputError message (or repr)} of the top-level ids that fail to resolve."""
    failed = {}
    for key in parser.config:
        if key in ENTRY_IDS:
            continue
        try:
            parser.get_parsed_content(key)
        except Exception as err:  # noqa: BLE001 - what matters is which ids fail, and with what message
            failed[key] = root_input_error(err) or repr(err)
    return failed


def test_overlay_parses_and_only_the_network_needs_tensorrt(case):
    parser = _parser(case)
    assert parser.get_parsed_content("backend") == "eager"  # the inferer calls the wrapped network directly
    assert parser.get_parsed_content("trt_precision") == "tf32"
    assert parser.get_parsed_content("trt_max_batch") == parser.get_parsed_content("sw_batch_size")
    assert parser.get_parsed_content("ensemble") == []  # no ckpt_paths: nothing to compile, no CUDA needed
    inferer = parser.get_parsed_content("inferer")
    assert inferer.backend == "eager" and inferer.networks == []
    failed = _resolve_all(parser)
    missing = tensorrt_missing(parser.get_parsed_content("device"))
    if not missing:  # a CUDA machine with TensorRT: everything resolves (engines are built at the first forward)
        assert failed == {}
        return
    assert set(failed) == NEEDS_TRT
    for message in failed.values():
        assert message.startswith("TensorRT inference (configs/inference_trt.yaml) needs ")
        assert "pip install torch-tensorrt==2.14.0 polygraphy" in message and "\n" not in message
        assert all(m in message for m in missing)


def test_overlay_keeps_the_base_ids_it_does_not_replace(case):
    """Only network/ensemble (and the TensorRT settings) change: preprocessing, inferer and outputs are the base's."""
    from monai.bundle import ConfigParser

    base = ConfigParser.load_config_file(CONFIGS[0])
    overlay = ConfigParser.load_config_file(CONFIGS[1])
    assert set(overlay) & set(base) == {"network", "ensemble", "backend"}
    assert set(overlay) - set(base) == {
        "trt_precision",
        "trt_opt_level",
        "trt_cache_dir",
        "trt_max_batch",
        "network_eager",
        "ensemble_eager",
        "unused_options",  # backend, calibration: refused on the command line (the TensorRT network runs as is)
    }
    assert base["handlers"][0]["load_dict"]["model"] == "@network"  # weights load into the wrapped network


def test_command_line_without_tensorrt_prints_one_line(case):
    if not tensorrt_missing("cuda"):
        pytest.skip("TensorRT and CUDA are available here: the run would build an engine")
    cmd = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", str(CONFIGS)]
    cmd += [
        "--input",
        str(case / "ct.nii.gz"),
        "--output_dir",
        str(case / "cli"),
        "--ckpt_path",
        str(case / "model.pt"),
    ]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("InputError: ")]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert "TensorRT inference (configs/inference_trt.yaml) needs " in lines[0]
    assert "drop configs/inference_trt.yaml from --config_file" in lines[0]
    assert not os.path.exists(case / "cli" / "ct_seg.nii.gz")


def test_precision_rules(monkeypatch):
    with pytest.raises(InputError, match="trt_precision 'int8' is not one of fp32, tf32, fp16, bf16"):
        check_tensorrt("cuda", "int8")
    monkeypatch.setattr(trt_mod, "tensorrt_missing", lambda device: [])
    monkeypatch.setattr(trt_mod, "_version", lambda name: {"tensorrt": "11.1.0.106"}.get(name, "1.0"))
    assert check_tensorrt("cuda", "tf32") == "11.1.0.106"
    assert check_tensorrt("cuda", "fp32") == "11.1.0.106"
    for precision in ("fp16", "bf16"):
        with pytest.raises(InputError, match=f"--trt_precision {precision} needs TensorRT 10: TensorRT 11.1.0.106"):
            check_tensorrt("cuda", precision)
    monkeypatch.setattr(trt_mod, "_version", lambda name: {"tensorrt": "10.13.3.9"}.get(name, "1.0"))
    assert check_tensorrt("cuda", "fp16") == "10.13.3.9"


def test_compile_args_per_tensorrt_version():
    old, new = trt_compile_args("fp16", 8, "10.13.3.9", 5), trt_compile_args("tf32", 16, "11.1.0.106")
    assert old["build_args"] == {"builder_optimization_level": 5, "precision_constraints": "obey"}
    assert new["build_args"] == {"builder_optimization_level": 3}  # TensorRT 11 has no precision-constraint flag
    assert new["dynamic_batchsize"] == [1, 16, 16] and new["precision"] == "tf32" and new["method"] == "onnx"
    assert new["fallback"] is False and new["export_args"] == {"dynamo": False, "opset_version": 17}
    assert trt_compile_args("tf32", 16, "11.1")["export_args"] is not new["export_args"]  # MONAI mutates it


def test_engine_name_follows_the_checkpoint_content(tmp_path):
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"weights A")
    first = plan_base(str(ckpt), "tf32", 16, 3)
    assert os.path.dirname(first) == str(tmp_path)
    assert os.path.basename(first).startswith("model.pt.") and first.endswith(".trt_tf32_b16_o3")
    assert plan_base(str(ckpt), "tf32", 16, 3) == first
    assert plan_base(str(ckpt), "fp32", 16, 3) != first and plan_base(str(ckpt), "tf32", 8, 3) != first
    ckpt.write_bytes(b"weights B")  # same path, new weights: a new engine, never a stale one
    assert plan_base(str(ckpt), "tf32", 16, 3) != first
    cache = tmp_path / "engines"
    assert os.path.dirname(plan_base(str(ckpt), "tf32", 16, 3, str(cache))) == str(cache)
    with pytest.raises(InputError, match="checkpoint .*missing.pt does not exist"):
        plan_base(str(tmp_path / "missing.pt"), "tf32", 16)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(InputError, match="trt_cache_dir .*a_file/sub is not writable"):
        plan_base(str(ckpt), "tf32", 16, 3, str(tmp_path / "a_file" / "sub"))


def test_ensemble_members_and_disabled_single_network(tmp_path):
    net = TinySegNet()
    assert trt_networks([], [], device="cpu") == []
    assert trt_network(net, "unused.pt", device="cpu", enabled=False) is net  # ensembles compile members instead
    with pytest.raises(ValueError, match="2 ensemble networks but 1 checkpoints"):
        trt_networks([net, net], ["a.pt"], device="cpu")
    if tensorrt_missing("cpu"):
        with pytest.raises(InputError, match="TensorRT inference"):
            trt_networks([net], [str(tmp_path / "a.pt")], device="cpu")


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime not installed")
def test_onnx_graph_tensorrt_builds_from_equals_eager(tmp_path):
    """MONAI's TrtCompiler export (casts around norms, dynamic batch profile, our export args) on MSA²Net; the
    ONNX file it would hand to TensorRT is run with ONNX Runtime at batch 1 and 3 and compared with eager fp32."""
    import onnxruntime as ort
    from monai.networks.trt_compiler import TrtCompiler

    from bundle.networks import MSA2Net

    torch.manual_seed(0)
    net = MSA2Net(in_channels=1, out_channels=9, variant="paper").eval()
    x = torch.randn(3, 1, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = net(x)
    model = copy.deepcopy(net)
    compiler = TrtCompiler(model, str(tmp_path / "x.plan"), **trt_compile_args("tf32", 4, "11.1.0.106"))
    graph = tmp_path / "graph.onnx"

    def keep_graph(onnx_path):  # stands in for the TensorRT build: keeps the graph, returns no engine
        shutil.copy(onnx_path, graph)

    compiler._onnx_to_trt = keep_graph
    with torch.no_grad():
        compiler._build_and_save(model, {"x": x[:2]})
    assert compiler.profiles == [{"x": [[1, 1, 224, 224], [4, 1, 224, 224], [4, 1, 224, 224]]}]
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    (inp,), outputs = session.get_inputs(), session.get_outputs()
    assert (
        len(outputs) == 1 and inp.name == "x" and isinstance(inp.shape[0], str) and inp.shape[1:] == [1, 224, 224]
    )  # batch is dynamic
    for b in (1, 3):
        logits = torch.from_numpy(session.run(None, {"x": x[:b].numpy()})[0])
        assert logits.shape == (b, 9, 224, 224)
        assert (logits - ref[:b]).abs().max() <= 1e-4  # measured 9.7e-6
        assert torch.equal(logits.argmax(1), ref[:b].argmax(1))
    with torch.no_grad():
        assert torch.equal(model(x), ref)  # the casts MONAI wraps around the norms change nothing in fp32


@pytest.mark.cuda
@pytest.mark.skipif(bool(CUDA_TRT_MISSING), reason=f"needs {', '.join(CUDA_TRT_MISSING) or 'nothing'}")
def test_tensorrt_engine_matches_eager_fp32(tmp_path):
    """A real fp32 engine (batch 1-4, builder level 1 for a short build) against eager fp32 without TF32."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, False  # a true fp32 reference
    try:
        _check_fp32_engine(tmp_path)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def _check_fp32_engine(tmp_path):
    from bundle.inferers.axial import AxialSliceInferer
    from bundle.networks import MSA2Net

    torch.manual_seed(0)
    net = MSA2Net(in_channels=1, out_channels=9, variant="paper").eval().cuda()
    ckpt = tmp_path / "model.pt"
    torch.save({"model": net.state_dict()}, ckpt)
    x = torch.randn(3, 1, 224, 224, generator=torch.Generator().manual_seed(1)).cuda()
    with torch.no_grad():
        ref = net(x)
    kwargs = dict(device="cuda", precision="fp32", max_batch=4, opt_level=1)
    fast = trt_network(copy.deepcopy(net), str(ckpt), **kwargs)
    with torch.no_grad():
        for b in (1, 3):
            out = fast(x[:b]).float().clone()
            assert out.shape == ref[:b].shape
            assert (out - ref[:b]).abs().max() <= 1e-3
            assert (out.argmax(1) == ref[:b].argmax(1)).float().mean() >= 0.999
    plans = [p for p in os.listdir(tmp_path) if p.endswith(".plan")]
    assert len(plans) == 1 and plans[0].endswith(".trt_fp32_b4_o1.plan")
    mtime = os.path.getmtime(tmp_path / plans[0])
    again = trt_network(copy.deepcopy(net), str(ckpt), **kwargs)  # loads the saved engine, builds nothing
    with torch.no_grad():
        assert (again(x[:3]).float() - fast(x[:3]).float()).abs().max() <= 1e-5  # the same plan, two engines
    assert os.path.getmtime(tmp_path / plans[0]) == mtime
    volume = torch.rand(1, 1, 60, 50, 7, generator=torch.Generator().manual_seed(2)).cuda()
    eager_labels = AxialSliceInferer(sw_batch_size=4)(volume, net)
    trt_labels = AxialSliceInferer(sw_batch_size=4)(volume, again)  # chunks of 4 and 3 slices
    assert (trt_labels == eager_labels).float().mean() >= 0.999
