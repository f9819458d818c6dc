"""What the model zoo's CI reads besides the code: pinned packages in metadata.json, JSON formatting, data licences.

* The zoo's CI installs only what ``configs/metadata.json`` lists (``ci/get_bundle_requirements.py`` in
  Project-MONAI/model-zoo turns monai/pytorch/numpy versions and ``required_packages_version`` into a requirements
  file). So every third-party module that ``bundle/`` imports, at module level or inside a function, must be pinned
  in ``required_packages_version`` at the version ``pyproject.toml`` pins (one list: MONAI 1.6.1 reads the other,
  ``optional_packages_version``, as a deprecated spelling of it and drops the required list).
* The zoo formats JSON with pre-commit's ``pretty-format-json --autofix --no-sort-keys --indent=4`` (its
  ``.pre-commit-config.yaml``): ``json.dumps(obj, indent=4)`` (ASCII escapes, key order kept) and a final newline.
"""

from __future__ import annotations

import ast
import glob
import importlib.metadata
import json
import os
import re
import sys

import pytest
from conftest import ROOT

METADATA = ["configs/metadata.json", "configs/microscopy/metadata.json"]
# pinned by the metadata's own fields, not by required_packages_version
VERSION_FIELDS = {"torch": "pytorch_version", "monai": "monai_version", "numpy": "numpy_version"}


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503 name normalisation


def _third_party_imports(package: str = "bundle") -> dict:
    """{top-level module: {"module": set(files), "function": set(files)}} for ``package``'s non-stdlib imports.

    "module": executed when the file is imported (module body, also under if/try or in a class body);
    "function": inside a function or lambda body (runs only when called).
    """
    found: dict = {}

    def visit(node, path, in_function):
        for child in ast.iter_child_nodes(node):
            names = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                names = [child.module]
            for name in names:
                root = name.split(".")[0]
                if root not in sys.stdlib_module_names and root not in (package, "__future__"):
                    found.setdefault(root, {"module": set(), "function": set()})
                    found[root]["function" if in_function else "module"].add(path)
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, path, inner)

    for path in sorted(glob.glob(os.path.join(ROOT, package, "**", "*.py"), recursive=True)):
        visit(ast.parse(open(path, encoding="utf-8").read()), os.path.relpath(path, ROOT), False)
    return found


# imported inside functions only, by optional backends whose extra may be absent (pyproject.toml [openvino]):
# module name -> distribution, for a scan on an install without them
OPTIONAL_DISTRIBUTIONS = {"openvino": "openvino", "nncf": "nncf"}


def _distribution(module: str) -> str:
    dists = importlib.metadata.packages_distributions().get(module)
    if not dists and module in OPTIONAL_DISTRIBUTIONS:
        return OPTIONAL_DISTRIBUTIONS[module]
    if not dists:
        pytest.fail(f"{module} is imported by bundle/ but no installed distribution provides it")
    return _canon(dists[0])


def _pyproject_pins() -> dict:
    text = open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8").read()
    return {_canon(name): version for name, version in re.findall(r'"([A-Za-z0-9_.\-]+)==([^"]+)"', text)}


@pytest.fixture(scope="module")
def imports():
    return _third_party_imports()


def test_the_scan_sees_module_and_function_level_imports(imports):
    """Guards the scan itself: known imports of this package land on the right side."""
    assert "bundle/evaluation/plots.py" in imports["matplotlib"]["module"]
    assert "bundle/networks/encoders.py" in imports["timm"]["module"]
    assert (
        imports["onnxruntime"]["module"] == set()
        and "bundle/inferers/backends.py" in imports["onnxruntime"]["function"]
    )


@pytest.mark.parametrize("meta_path", METADATA)
def test_every_module_level_import_is_a_required_package(meta_path, imports):
    meta = json.load(open(os.path.join(ROOT, meta_path)))
    required = {_canon(k) for k in meta["required_packages_version"]}
    missing = {}
    for module, where in sorted(imports.items()):
        if not where["module"]:
            continue
        if module in VERSION_FIELDS:
            assert meta.get(VERSION_FIELDS[module]), f"{meta_path}: {VERSION_FIELDS[module]} missing"
            continue
        if _distribution(module) not in required:
            missing[_distribution(module)] = sorted(where["module"])[:3]
    assert missing == {}, f"{meta_path}: required_packages_version lacks (imported at module level by): {missing}"


@pytest.mark.parametrize("meta_path", METADATA)
def test_every_function_level_import_is_listed(meta_path, imports):
    meta = json.load(open(os.path.join(ROOT, meta_path)))
    listed = {_canon(k) for k in meta["required_packages_version"]}
    unlisted = {
        _distribution(module): sorted(where["function"])[:3]
        for module, where in imports.items()
        if where["function"] and module not in VERSION_FIELDS and _distribution(module) not in listed
    }
    assert unlisted == {}, f"{meta_path}: not in required_packages_version (imported inside functions by): {unlisted}"


@pytest.mark.parametrize("meta_path", METADATA)
def test_pins_agree_with_pyproject_and_apps_key_exists(meta_path):
    meta = json.load(open(os.path.join(ROOT, meta_path)))
    pins = _pyproject_pins()
    required = meta["required_packages_version"]
    differ = {k: (v, pins[_canon(k)]) for k, v in required.items() if _canon(k) in pins and pins[_canon(k)] != v}
    assert differ == {}, f"{meta_path}: versions differ from pyproject.toml (metadata, pyproject): {differ}"
    for field, dist in (("pytorch_version", "torch"), ("monai_version", "monai"), ("numpy_version", "numpy")):
        assert meta[field] == pins[dist], f"{meta_path}: {field} {meta[field]} != pyproject {pins[dist]}"
    assert isinstance(meta.get("supported_apps"), dict)


@pytest.mark.parametrize("meta_path", METADATA)
def test_monai_keeps_the_required_packages(meta_path):
    """MONAI 1.6.1 reads ``optional_packages_version`` as the deprecated spelling of ``required_packages_version`` and
    replaces the latter with it when it parses a bundle (``reference_resolver.normalize_meta_id``): the metadata holds
    one list, and the parsed bundle requires every package of it."""
    from monai.bundle import ConfigParser

    meta = json.load(open(os.path.join(ROOT, meta_path)))
    assert "optional_packages_version" not in meta
    parser = ConfigParser()
    parser.read_meta(os.path.join(ROOT, meta_path))
    assert parser.get_parsed_content("_meta_#required_packages_version") == meta["required_packages_version"]


def _zoo_json_files():
    files = []
    for top in ("configs", "docs"):
        files += glob.glob(os.path.join(ROOT, top, "**", "*.json"), recursive=True)
    return sorted(os.path.relpath(p, ROOT) for p in files)


def _zoo_format(text: str) -> str:
    return json.dumps(json.loads(text), indent=4) + "\n"  # pretty-format-json --no-sort-keys --indent=4


@pytest.mark.parametrize("relpath", _zoo_json_files())
def test_json_files_are_in_the_zoo_format(relpath):
    text = open(os.path.join(ROOT, relpath), encoding="utf-8").read()
    assert text == _zoo_format(text), f"{relpath}: run pre-commit's pretty-format-json --no-sort-keys --indent=4"


def test_the_zoo_hook_agrees():
    hook = pytest.importorskip("pre_commit_hooks.pretty_format_json")
    files = [os.path.join(ROOT, p) for p in _zoo_json_files()]
    assert hook.main(["--no-sort-keys", "--indent=4", *files]) == 0
    assert _zoo_format('{"b": 1, "a": "\\u00b2"}') == '{\n    "b": 1,\n    "a": "\\u00b2"\n}\n'


def _package_bundle():
    sys.path.insert(0, os.path.join(ROOT, "scripts", "release"))
    try:
        import package_bundle
    finally:
        sys.path.remove(os.path.join(ROOT, "scripts", "release"))
    return package_bundle


def test_generated_zip_configs_are_in_the_zoo_format():
    rendered = _package_bundle()._json_configs()
    assert "configs/inference_trt.json" in rendered and "configs/inference.json" in rendered
    for name, text in rendered.items():
        assert text == _zoo_format(text), name


def test_the_microscopy_configs_log_with_the_ct_logging_conf_in_the_checkout_and_in_the_zip(tmp_path):
    """MONAI's CLI takes logging.conf from the first config file's folder, configs/microscopy/ for every microscopy
    command: the file there is a link to configs/logging.conf (one logging setup), which the zip holds as a file."""
    import stat
    import zipfile

    import torch

    ct = os.path.join(ROOT, "configs", "logging.conf")
    link = os.path.join(ROOT, "configs", "microscopy", "logging.conf")
    assert os.path.islink(link) and os.path.realpath(link) == os.path.realpath(ct)
    torch.save({"model": {}}, tmp_path / "model.pt")
    zip_path = _package_bundle().main(out=str(tmp_path / "dist"), weights=str(tmp_path / "model.pt"))
    with zipfile.ZipFile(zip_path) as zf:
        info = zf.getinfo(f"{_package_bundle().NAME}/configs/microscopy/logging.conf")
        assert stat.S_ISREG(info.external_attr >> 16) and zf.read(info) == open(ct, "rb").read()


def test_data_license_names_every_data_source():
    text = open(os.path.join(ROOT, "docs", "data_license.txt"), encoding="utf-8").read()
    for needle in (
        "syn3193805",  # Synapse / BTCV
        "totalsegmentator==2.18.0",  # demo CT and DICOM series
        "Apache License 2.0",
        "ISIC 2018",
        "CC BY-NC",
        "MoNuSeg",
        "GlaS",
        "stardist==0.9.2",
        "BSD-3-Clause",
    ):
        assert needle in text, needle


def test_the_package_states_the_bundle_version():
    """provenance.json and every DICOM SEG's SoftwareVersions carry ``bundle.__version__``, and pyproject.toml takes
    the package version from it: it must be the version configs/metadata.json publishes (it said 0.4.1 in 0.5.0)."""
    import bundle

    with open(os.path.join(ROOT, "configs", "metadata.json"), encoding="utf-8") as f:
        assert bundle.__version__ == json.load(f)["version"]
    pyproject = open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8").read()
    assert 'dynamic = ["version"]' in pyproject and 'version = { attr = "bundle.__version__" }' in pyproject
    assert not re.search(r'(?m)^version\s*=\s*"', pyproject)  # no second, static copy
