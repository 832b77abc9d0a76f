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
              "mosmed", "synapse", "folder", "dicom", "nifti", "decathlon")


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


# every converter that reads 2D image files through list_files, and so accepts every suffix of IMAGE_EXTENSIONS
IMAGE_FILE_CONVERTERS = ("covid_semiseg", "ph2", "isic2016", "isic2016_ph2", "kvasir", "cvc_clinicdb",
                         "polyp_benchmark", "mosmed", "folder")


@pytest.mark.parametrize("name", IMAGE_FILE_CONVERTERS)
def test_help_names_every_accepted_image_suffix(name, capsys):
    from data_prep.io import IMAGE_EXTENSIONS

    with pytest.raises(SystemExit):
        main([name, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for suffix in IMAGE_EXTENSIONS:
        assert suffix in text, f"{name} --help does not mention {suffix}"
    assert "whatever the suffixes of the layout shown above" in text
    assert "JPEG-compressed, so" not in text  # no claim that only the distributed format is read


def test_kvasir_png_copy_converts_as_its_help_says(tmp_path, capsys):
    """Kvasir-SEG re-saved as PNG (images and 0/255 masks): the help promises it converts, and it does."""
    import numpy as np
    from fixtures_datasets import make_kvasir, read_png, save

    src = make_kvasir(tmp_path / "src", n=5)
    for jpg in (src / "Kvasir-SEG").rglob("*.jpg"):
        arr = read_png(jpg)
        if jpg.parent.name == "masks":  # a lossless copy of a mask is a clean 0/255 mask
            arr = np.where(arr[..., 0] >= 128, 255, 0).astype(np.uint8)
        save(jpg.with_suffix(".png"), arr)
        jpg.unlink()
    assert main(["kvasir", "--src", str(src), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "converted 5, reused 0, skipped 0" in out
