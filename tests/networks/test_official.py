"""The official networks from a checkout (bundle/networks/official.py) and the parity command built on them.

End to end where a checkout is given: ``MSA2NET_OFFICIAL_SRC`` (github.com/xmindflow/MSA-2Net) and
``SA2NET_OFFICIAL_SRC`` (github.com/mustansarfiaz/SA2-Net), each the root of a folder extracted as
docs/fidelity.md §1 and docs/fidelity_sa2net.md §2 show. Without one those tests skip; the rest need none.
"""

import ast
import importlib.util
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from bundle.networks import official

PARITY = "scripts/model/parity_official.py"
CHECKOUTS = {"msa2net": "MSA2NET_OFFICIAL_SRC", "sa2net": "SA2NET_OFFICIAL_SRC"}
HOW = {"msa2net": "docs/fidelity.md §1", "sa2net": "docs/fidelity_sa2net.md §2"}


def _parity(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")  # the thread count the recorded figures used
    cmd = [sys.executable, PARITY, *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("build", [official.official_msa2net, official.official_sa2net])
def test_a_folder_that_is_not_the_checkout_is_refused(tmp_path, build):
    (tmp_path / "networks").mkdir()
    with pytest.raises(official.NotAnOfficialCheckout, match=r"is not a checkout of github\.com/.* extract one as"):
        build(str(tmp_path))


def test_parity_command_refuses_a_wrong_folder_with_one_line(tmp_path):
    run = _parity("--repo", str(tmp_path), timeout=300)
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    assert run.stderr.splitlines()[0] == (
        f"InputError: '{tmp_path}' is not a checkout of github.com/xmindflow/MSA-2Net (no networks/msa2net.py): "
        "extract one as docs/fidelity.md §1 shows and pass its root folder."
    )


FAKE_LAYER = """
import torch.nn as nn

class MyDecoderLayerDAEFormer(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Identity()

    def forward(self, x):
        return "first"
{second}
"""
SECOND = """
    def __init__(self):
        super().__init__()
        self.second = nn.Identity()

    def forward(self, x):
        return "second"
"""


def _module(path):
    spec = importlib.util.spec_from_file_location("fake_msa2net", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_paper_layer_is_the_first_of_the_twice_defined_methods(tmp_path):
    path = tmp_path / "msa2net.py"
    path.write_text(FAKE_LAYER.format(second=SECOND))
    module = _module(path)
    assert module.MyDecoderLayerDAEFormer()(None) == "second"  # what Python keeps: the released layer
    layer = official._first_definitions(module)()
    assert layer(None) == "first" and hasattr(layer, "first") and not hasattr(layer, "second")
    for text in (FAKE_LAYER.format(second=""), "import torch.nn as nn\n"):
        path.write_text(text)
        with pytest.raises(official.NotAnOfficialCheckout, match="should define __init__ and forward twice"):
            official._first_definitions(_module(path))


def _imports_official(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.startswith("bundle.networks.official") for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.module == "bundle.networks.official":
            return True
        if isinstance(node, ast.ImportFrom) and node.module == "bundle.networks":
            if "official" in [a.name for a in node.names]:
                return True
    return False


def test_the_bundle_runtime_never_imports_the_official_networks():
    importers = []
    for folder, _, files in os.walk(os.path.join(ROOT, "bundle")):
        for name in (n for n in files if n.endswith(".py")):
            path = os.path.join(folder, name)
            if _imports_official(ast.parse(open(path, encoding="utf-8").read())):
                importers.append(os.path.relpath(path, ROOT))
    assert importers == []
    assert _imports_official(ast.parse("from bundle.networks import official"))  # the check sees an import


def _checkout(network: str) -> str:
    src = os.environ.get(CHECKOUTS[network], "")
    if not src:
        pytest.skip(f"no official checkout: set {CHECKOUTS[network]} to one extracted as {HOW[network]} shows")
    return src


@pytest.mark.slow
def test_msa2net_parity_with_the_official_checkout(tmp_path):
    src = _checkout("msa2net")
    run = _parity("--repo", src, "--variant", "both", "--batch", "1", "--out", str(tmp_path / "parity.json"))
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads((tmp_path / "parity.json").read_text())
    built = {"released": (93_660_877, 71_013_299), "paper": (112_767_981, 76_606_666)}  # docs/fidelity.md §2-3
    for variant in ("released", "paper"):
        assert (report[variant]["official_parameters_built"], report[variant]["our_parameters"]) == built[variant]
        for in_ch in (1, 3):
            row = report[variant][f"in_channels={in_ch}"]
            assert row["max_abs_diff"] < 1e-4 and row["argmax_agreement"] > 0.999, (variant, row)


@pytest.mark.slow
@pytest.mark.parametrize(
    "config,parameters",
    [(("3", "1", "224", "0"), (32_484_308, 19_296_596)), (("4", "2", "128", "3"), (32_493_464, 19_297_688))],
    ids=["monuseg", "segpc"],
)
def test_sa2net_parity_with_the_official_checkout(tmp_path, config, parameters):
    src = _checkout("sa2net")
    in_ch, out_ch, size, seed = config
    args = ["--in_channels", in_ch, "--out_channels", out_ch, "--size", size, "--seed", seed]
    run = _parity("--network", "sa2net", "--repo", src, *args, "--out", str(tmp_path / "parity.json"))
    assert run.returncode == 0, run.stderr[-2000:]
    rows = json.loads((tmp_path / "parity.json").read_text())[f"{in_ch}->{out_ch}, {size}x{size}"]
    assert (rows["official_parameters_built"], rows["our_parameters"]) == parameters  # docs/fidelity_sa2net.md §3
    assert rows["eval logits"]["max_abs_diff"] < 1e-6  # recorded: 8.6e-8 / 1.2e-7 (docs/fidelity_sa2net.md §2)
    assert [k for k in rows if k.startswith("train logits")] == [
        f"train logits, head {h}" for h in ("main", "stride 2", "stride 4", "stride 8")
    ]
    assert max(row["max_abs_diff"] for key, row in rows.items() if key.startswith("train")) < 1e-4
