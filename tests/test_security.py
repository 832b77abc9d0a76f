"""Security audit: no dangerous calls in our code (an AST scan), and no path traversal from names that datasets,
DICOM tags or inference datalists control: ``data_prep``'s ``safe_join`` and converters, and the bundles'
``SaveMaskd`` writer.

Bundles themselves are code (MONAI evaluates their ``$`` expressions); that trust boundary is documented in the
README and is not what this file tests."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from data_prep.convert import ConversionJob, Pair, Sample, run_conversion
from data_prep.io import DataPrepError, safe_join
from dale_monai.bundle_transforms import SaveMaskd
from tests.conftest import REPO

SCANNED = ("dale_monai", "data_prep", "scripts", "benchmarks")
PICKLE_MODULES = ("pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib")
SAFE_YAML_LOADERS = ("SafeLoader", "CSafeLoader")
SHELL_FUNCTIONS = ("os.system", "os.popen")


# ----------------------------------------------------------------------------------------------- the scanner
class _Scanner(ast.NodeVisitor):
    """Resolve each call's dotted name through the module's imports (``import pickle as p``, ``from torch import
    load``) and record the calls that run code from data: see :func:`scan`."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.aliases: dict[str, str] = {}
        self.findings: list[str] = []
        self.calls = 0
        self.resolved: dict[str, int] = {}  # dotted names of the calls the rules looked at, counted

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            if a.asname:
                self.aliases[a.asname] = a.name
            else:
                top = a.name.split(".")[0]
                self.aliases[top] = top

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = "." * node.level + (node.module or "")
        for a in node.names:
            self.aliases[a.asname or a.name] = f"{module}.{a.name}"

    def name(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id, node.id)
        if isinstance(node, ast.Attribute):
            base = self.name(node.value)
            return None if base is None else f"{base}.{node.attr}"
        return None

    def flag(self, node: ast.AST, what: str) -> None:
        self.findings.append(f"{self.filename}:{node.lineno}: {what}")

    def visit_Call(self, node: ast.Call) -> None:
        self.calls += 1
        q = self.name(node.func)
        if q is not None:
            self.check(node, q)
        self.generic_visit(node)

    def check(self, node: ast.Call, q: str) -> None:
        kw = {k.arg: k.value for k in node.keywords if k.arg}

        def literal(name: str, position: int | None = None):
            value = kw.get(name)
            if value is None and position is not None and len(node.args) > position:
                value = node.args[position]
            return value.value if isinstance(value, ast.Constant) else ("<expr>" if value is not None else None)

        module, _, func = q.rpartition(".")
        rule = None
        if q in ("eval", "exec", "builtins.eval", "builtins.exec"):
            rule, bad = q, True
        elif module in PICKLE_MODULES and func in ("load", "loads", "Unpickler"):
            rule, bad = q, True
        elif q == "torch.load":
            rule, bad = q, literal("weights_only") is not True
        elif q in ("numpy.load", "numpy.lib.npyio.load"):
            rule, bad = q, literal("allow_pickle", 2) not in (None, False)
        elif q in ("yaml.load", "yaml.load_all"):
            loader = kw.get("Loader", node.args[1] if len(node.args) > 1 else None)
            loader_name = self.name(loader) if loader is not None else None
            rule, bad = q, not (loader_name and loader_name.rpartition(".")[2] in SAFE_YAML_LOADERS)
        elif q.startswith("yaml.") and func in ("unsafe_load", "unsafe_load_all", "full_load", "full_load_all"):
            rule, bad = q, True
        elif q.startswith("subprocess."):
            rule, bad = q, "shell" in kw and literal("shell") is not False
        elif q in SHELL_FUNCTIONS:
            rule, bad = q, True
        if rule is None:
            return
        self.resolved[rule] = self.resolved.get(rule, 0) + 1
        if bad:
            self.flag(node, f"{q}(...)" + (" without weights_only=True" if q == "torch.load" else ""))


def scan(source: str, filename: str = "<snippet>") -> _Scanner:
    """Scan Python ``source`` for ``eval``/``exec``, unpickling (``pickle``/``dill``/``joblib`` loads,
    ``torch.load`` without ``weights_only=True``, ``numpy.load(allow_pickle=...)``), ``yaml.load`` without a
    safe loader, ``subprocess`` with ``shell=...`` other than ``False``, and ``os.system``/``os.popen``.

    Raises:
        SyntaxError: the source does not parse (a file the scan cannot read must not pass it).
    """
    scanner = _Scanner(filename)
    scanner.visit(ast.parse(source, filename=filename))
    return scanner


def _sources() -> list[Path]:
    return sorted(p for root in SCANNED for p in (REPO / root).rglob("*.py") if "__pycache__" not in p.parts)


def test_our_code_makes_no_dangerous_call():
    files = _sources()
    per_root = {root: sum(1 for p in files if p.relative_to(REPO).parts[0] == root) for root in SCANNED}
    # not vacuous: every folder is there and holds code, and the scan reached the calls it judges
    assert all(per_root.values()) and len(files) >= 40, per_root
    findings, calls, resolved = [], 0, {}
    for path in files:
        scanner = scan(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
        findings += scanner.findings
        calls += scanner.calls
        for rule, n in scanner.resolved.items():
            resolved[rule] = resolved.get(rule, 0) + n
    assert calls >= 2000, calls
    assert resolved.get("torch.load", 0) >= 2 and resolved.get("numpy.load", 0) >= 2, resolved  # checked, and safe
    assert not findings, "dangerous calls:\n" + "\n".join(findings)


BAD_SNIPPET = """
import pickle, pickle as pk, subprocess, os, yaml, torch, numpy as np, builtins
from torch import load as tload
from subprocess import run
eval("1 + 1")
exec("x = 1")
builtins.eval("2")
pickle.load(f)
pk.loads(b"")
pickle.Unpickler(f)
torch.load("model.pt")
torch.load("model.pt", weights_only=False)
tload("model.pt", map_location="cpu")
np.load("a.npy", allow_pickle=True)
yaml.load(text)
yaml.load(text, Loader=yaml.Loader)
yaml.unsafe_load(text)
subprocess.run("ls " + name, shell=True)
run(cmd, shell=flag)
subprocess.Popen(cmd, shell=1)
os.system("rm -rf " + path)
os.popen(cmd)
"""

GOOD_SNIPPET = """
import subprocess, yaml, torch, numpy as np
from yaml import SafeLoader
model.eval()
self.network.eval()
torch.load("model.pt", weights_only=True, map_location="cpu")
np.load("a.npy")
np.load("a.npy", allow_pickle=False)
yaml.safe_load(text)
yaml.load(text, Loader=yaml.SafeLoader)
yaml.load(text, SafeLoader)
yaml.load(text, Loader=yaml.CSafeLoader)
subprocess.run(["git", "status"], check=True)
subprocess.run(["ls"], shell=False)
json.loads(text)
"""


def test_scanner_flags_every_forbidden_call_and_nothing_else():
    bad = scan(BAD_SNIPPET)
    flagged = [int(f.split(":")[1]) for f in bad.findings]
    lines = BAD_SNIPPET.splitlines()
    calls = [n for n, line in enumerate(lines, 1) if line.strip() and not line.startswith(("import", "from"))]
    assert flagged == calls, "\n".join(f"{n}: {lines[n - 1]}" for n in sorted(set(calls) ^ set(flagged)))
    good = scan(GOOD_SNIPPET)
    assert good.findings == [] and good.resolved["torch.load"] == 1 and good.resolved["yaml.load"] == 3
    with pytest.raises(SyntaxError):
        scan("def broken(:\n")


# ----------------------------------------------------------------------------------------------- data_prep
def test_safe_join_rejects_parent_absolute_and_symlinked_escapes(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    assert safe_join(root, "images/case1.png") == (root / "images" / "case1.png").resolve()
    assert safe_join(root, "images/../labels/a.png") == (root / "labels" / "a.png").resolve()  # stays inside
    for name in ("../evil.png", "images/../../evil.png", "..", str(tmp_path / "evil.png"), "/etc/passwd"):
        with pytest.raises(DataPrepError, match="outside the output directory"):
            safe_join(root, name)
    (root / "link").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(DataPrepError, match="outside the output directory"):
        safe_join(root, "link/evil.png")


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_conversion_skips_a_pair_whose_name_escapes(tmp_path):
    """A converter's pair key comes from a dataset's file names: one that climbs out is skipped and reported."""
    image = np.zeros((8, 8), np.uint8)

    def sample() -> Sample:
        return Sample(image=image, label=np.zeros((8, 8), np.uint8))

    pairs = [Pair("case1", "training", sample, ("src/case1.png",)),
             Pair("../../evil", "training", sample, ("src/evil.png",)),
             Pair(str(tmp_path / "abs"), "training", sample, ("src/abs.png",))]
    out = tmp_path / "deep" / "out"
    before = _files(tmp_path)
    result = run_conversion(ConversionJob("test", tmp_path / "src", pairs), out, stream=open(os.devnull, "w"))
    assert result.converted == 2 and [s.files for s in result.skipped] == [("src/evil.png",)]
    assert "outside the output directory" in result.skipped[0].reason
    new = _files(tmp_path) - before
    assert new and all(out.resolve() in p.resolve().parents for p in new), new
    images = [e["image"] for e in json.loads((out / "datalist.json").read_text())["training"]]
    # an absolute key is nested under images/, never used as the absolute path it names
    assert images == ["images/case1.png", f"images/{str(tmp_path / 'abs').lstrip('/')}.png"]


def test_dicom_tags_cannot_name_files_outside_the_output(tmp_path, monkeypatch):
    """Two series in one folder with the same SeriesNumber are told apart by their UIDs' tails, which a crafted
    file can fill with ``../``; pydicom is told to write and read such invalid UIDs."""
    from tests.fixtures_datasets import make_dicom_series
    from pydicom import config

    from data_prep.__main__ import main

    monkeypatch.setattr(config.settings, "writing_validation_mode", config.IGNORE)
    monkeypatch.setattr(config.settings, "reading_validation_mode", config.IGNORE)
    for i in (1, 2):
        make_dicom_series(tmp_path / "src" / "study", n=2, seed=i, series_number=7, uid=f"1.2.{i}/../../../evil{i}")
    before = _files(tmp_path)
    out = tmp_path / "a" / "out"
    assert main(["dicom", "--src", str(tmp_path / "src"), "--out", str(out)]) == 0
    new = _files(tmp_path) - before
    assert {p.name for p in new if p.parent.name == "images"} == {"study_evil1.nii.gz", "study_evil2.nii.gz"}
    assert all(out.resolve() in p.resolve().parents for p in new), new


# ----------------------------------------------------------------------------------------------- SaveMaskd
def _mask(source: str, shape=(1, 4, 5)) -> MetaTensor:
    return MetaTensor(torch.zeros(shape, dtype=torch.uint8), affine=torch.eye(4), meta={"filename_or_obj": source})


@pytest.mark.parametrize(("source", "postfix", "separate_folder", "patch"), [
    ("{tmp}/data/..", "", False, None),  # a folder input named '..' and no postfix: <out>/.. + .nii.gz
    ("{tmp}/data/..", "seg", True, None),  # one folder per input: <out>/../.._seg.nii.gz
    ("{tmp}/data/case", "seg", False, "/../../evil"),  # MONAI appends meta 'patch_index' to the name
])
def test_save_mask_refuses_names_that_leave_the_output_dir(tmp_path, source, postfix, separate_folder, patch):
    out = tmp_path / "nested" / "out"
    saver = SaveMaskd("pred", output_dir=out, output_postfix=postfix, separate_folder=separate_folder, print_log=False)
    mask = _mask(source.format(tmp=tmp_path), shape=(1, 4, 5, 3))
    if patch is not None:
        mask.meta["patch_index"] = patch
    before = {p for p in tmp_path.rglob("*")}
    with pytest.raises(ValueError, match="outside the output directory"):
        saver({"pred": mask})
    assert {p for p in tmp_path.rglob("*")} == before  # nothing written, no folder made


def test_save_mask_keeps_ordinary_names_inside(tmp_path):
    out = tmp_path / "out"
    saver = SaveMaskd("pred", output_dir=out, print_log=False)
    saver({"pred": _mask("/etc/passwd.png")})  # an absolute input name: only its stem is used
    saver({"pred": _mask(str(tmp_path / "in" / ".." / ".." / "up.png"))})
    assert sorted(p.name for p in out.iterdir()) == ["passwd_seg.png", "up_seg.png"]


def test_inference_datalist_entry_climbing_out_writes_only_under_output_dir(tmp_path):
    """A datalist entry ``../../evil.png`` reads that file, and its mask lands in the output folder as
    ``evil_seg.png``, never beside the input or elsewhere."""
    from monai.bundle import run

    from tests.test_bundles_inference import _copy_with_random_weights

    name = "synthetic2d_unet"
    _copy_with_random_weights(name, tmp_path / "bundle", [32, 32])
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30), dtype=np.uint8)).save(tmp_path / "evil.png")
    listing = tmp_path / "a" / "b" / "list.json"
    listing.parent.mkdir(parents=True)
    listing.write_text(json.dumps(["../../evil.png"]))
    out = tmp_path / "a" / "b" / "out"
    before = _files(tmp_path)
    run("run", config_file=str(tmp_path / "bundle" / "configs" / "inference.json"), datalist=str(listing),
        output_dir=str(out), spatial_size=[32, 32])
    assert _files(tmp_path) - before == {out / "evil_seg.png"}
