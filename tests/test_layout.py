"""The package layout's rules, checked on the source so that a change that breaks one fails here (README "Layout")."""

import ast
import os
import re
import sys

import pytest
from conftest import ROOT

PACKAGE = os.path.join(ROOT, "bundle")
# layer of each subpackage: a module may import its own layer and lower ones only (networks is a leaf)
LAYER = {"errors": 0, "networks": 0, "io": 1, "data": 2, "transforms": 3, "inferers": 4, "evaluation": 5, "training": 6}


def _modules():
    for folder, _, files in os.walk(PACKAGE):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                yield os.path.relpath(path, ROOT), ast.parse(open(path, encoding="utf-8").read())


def _part(relpath: str) -> str:
    parts = relpath.split(os.sep)
    return parts[1][:-3] if len(parts) == 2 else parts[1]


MODULES = list(_modules())


def test_every_module_belongs_to_a_layer():
    assert {_part(p) for p, _ in MODULES} - {"__init__"} <= set(LAYER)


@pytest.mark.parametrize("relpath,tree", MODULES, ids=[p for p, _ in MODULES])
def test_imports_run_one_way_and_at_module_level(relpath, tree):
    me = _part(relpath)
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith("bundle"):
            continue
        assert node.level == 0, f"{relpath}:{node.lineno}: relative project import"
        assert id(node) in top, f"{relpath}:{node.lineno}: project import inside a function ({node.module})"
        other = node.module.split(".")[1] if "." in node.module else "__init__"
        if me in LAYER and other in LAYER and other != me:
            assert LAYER[other] < LAYER[me] or other == "networks", f"{relpath}:{node.lineno}: {me} -> {other}"


@pytest.mark.parametrize("relpath,tree", [m for m in MODULES if _part(m[0]) == "networks"], ids=lambda x: str(x)[:60])
def test_networks_import_torch_and_timm_only(relpath, tree):
    stdlib = set(sys.stdlib_module_names)
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module]
        for name in names:
            root = name.split(".")[0]
            assert root in stdlib | {"torch", "timm", "safetensors"} or name.startswith("bundle.networks"), name


@pytest.mark.parametrize("relpath,tree", MODULES, ids=[p for p, _ in MODULES])
def test_modules_stay_small_and_messages_name_no_source_path(relpath, tree):
    text = open(os.path.join(ROOT, relpath), encoding="utf-8").read()
    assert text.count("\n") <= 450, f"{relpath} has {text.count(chr(10))} lines: split it by concept"
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            assert not re.match(r"(bundle|scripts)/[\w/]+\.py: ", node.value), f"{relpath}: {node.value[:60]}"


def test_no_reference_to_files_outside_the_repository():
    pattern = re.compile(r"shared/(reference|tools)|/work/|msa2net_official\.md|sa2net_official\.md|demo_data\.md")
    offenders = []
    for top in ("bundle", "scripts", "configs", "docs", "tests", "README.md"):
        start = os.path.join(ROOT, top)
        paths = [start] if os.path.isfile(start) else [os.path.join(f, n) for f, _, ns in os.walk(start) for n in ns]
        for path in paths:
            if path.endswith((".py", ".md", ".yaml", ".json", ".sh", ".txt")) and path != __file__:
                if pattern.search(open(path, encoding="utf-8", errors="replace").read()):
                    offenders.append(os.path.relpath(path, ROOT))
    assert offenders == []


SCRIPTS = sorted(
    os.path.relpath(os.path.join(folder, name), ROOT)
    for folder, _, files in os.walk(os.path.join(ROOT, "scripts"))
    for name in files
    if name.endswith(".py")
)


@pytest.mark.parametrize("relpath", SCRIPTS)
def test_command_line_scripts_share_the_clis_error_handling(relpath):
    """A script run as a command prints bad input as one InputError line: through bundle.errors.run_script (fire
    with the error hook) or, for an argparse script, the hook installed first; never a bare fire.Fire."""
    source = open(os.path.join(ROOT, relpath), encoding="utf-8").read()
    parts = source.split('if __name__ == "__main__":')
    if len(parts) < 2:
        pytest.skip("not a command")
    assert "fire.Fire(" not in source, f"{relpath}: use bundle.errors.run_script(main) under __main__"
    assert "run_script(" in parts[-1] or "install_error_hook()" in source, f"{relpath}: no one-line error handling"
