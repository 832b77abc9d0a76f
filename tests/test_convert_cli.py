"""``python -m data_prep``: subcommands, exit codes and one-line error messages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures_datasets import make_mosmed

from data_prep.__main__ import MODULES, build_parser, main

REPO = Path(__file__).resolve().parents[1]
CONVERTERS = ("covid_semiseg", "ph2", "isic2016", "isic2016_ph2", "kvasir", "cvc_clinicdb", "polyp_benchmark",
              "mosmed", "synapse", "folder", "dicom", "nifti")


def test_every_command_is_registered():
    assert "data_prep.synthetic" in MODULES and "data_prep.noise" in MODULES
    choices = build_parser()._subparsers._group_actions[0].choices
    assert set(CONVERTERS) <= set(choices)
    for name in CONVERTERS:
        assert callable(choices[name].get_default("func"))


def test_data_prep_never_imports_dale_monai():
    code = ("import sys, data_prep.__main__ as m; m.build_parser(); "
            "print(any(k.startswith('dale_monai') for k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_fatal_error_exits_non_zero_with_one_line_and_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "data_prep", "mosmed", "--src", str(tmp_path / "absent"), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr == f"error: --src {tmp_path / 'absent'}: no such folder\n"
    assert "Traceback" not in proc.stdout + proc.stderr


def test_usage_errors_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["mosmed", "--out", str(tmp_path)])
    assert e.value.code == 2 and "--src" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["no_such_dataset"])
    assert e.value.code == 2


def test_success_prints_counts_and_output_file_is_refused(tmp_path, capsys):
    src = make_mosmed(tmp_path / "src")
    assert main(["mosmed", "--src", str(src), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "mosmed: converted 7, reused 0, skipped 0" in out and "datalist:" in out
    assert main(["mosmed", "--src", str(src), "--out", str(tmp_path / "out")]) == 0
    assert "mosmed: converted 0, reused 7, skipped 0" in capsys.readouterr().out
    (tmp_path / "file").write_text("x")
    assert main(["mosmed", "--src", str(src), "--out", str(tmp_path / "file")]) == 1
    assert "exists and is not a folder" in capsys.readouterr().err
    assert main(["mosmed", "--src", str(src), "--out", str(tmp_path / "o2"), "--limit", "0"]) == 1
    assert "--limit 0" in capsys.readouterr().err
