"""Drive a real MONAI Label server with bundles of this project and check its REST answers.

Run through ``bash scripts/monailabel_check.sh`` (which creates the MONAI Label environment first); in that
environment, directly::

    .venv-monailabel/bin/python scripts/monailabel_check.py [--bundles NAME_OR_PATH ...] [--workdir DIR]
        [--skip-multi-gpu] [--no-record] [--keep]

For each bundle, in ``<workdir>/<bundle>/``:

1. ``monailabel apps --download --name monaibundle`` (the sample app ships inside the monailabel wheel);
2. a copy of the bundle (configs, docs, LICENSE) in the app's ``model/`` folder, which is where monaibundle looks
   for a local bundle named by ``--conf models NAME`` (with ``--conf zoo_source github``: the default source,
   ``monaihosting``, first asks the model zoo's server, which needs the internet);
3. a tiny synthetic dataset (``python -m data_prep synthetic``) and a short training of the copy with the bundle's own
   ``train.json``, for the ``models/model.pt`` that MONAI Label requires before it offers inference;
4. a studies folder: labelled training images (``labels/final/``) and unlabelled test images; for a 2D bundle also
   a NIfTI volume stacked from the test images;
5. ``monailabel start_server`` on 127.0.0.1 at a free port, then GET ``/info/``, POST ``/infer/<model>`` on each
   unlabelled study (the label must have the study's shape, values in {0, 1}, and equal the bundle's own
   ``inference.json`` run on the same file), POST ``/train/<model>`` (MONAI Label's single-process path: it
   overrides ``train#dataset#data`` etc. and prepends a ``CheckpointLoader``), POST
   ``/train/<model>?run_sync=true`` with ``force_multi_gpu`` (MONAI Label's ``torchrun`` path with
   ``multi_gpu_train.json``; 2 CPU processes here), and an inference with the retrained weights;
6. the server (its whole process group) is stopped in all cases.

PASS/FAIL is printed per step; the exit status is non-zero when a step failed. The outcome is written into the
"Measured outcome" section of ``docs/monailabel.md`` unless ``--no-record``.

Standard library only for the server and HTTP side; numpy, nibabel and PIL (dependencies of the project, installed
in the same environment) read the returned labels.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["StepResult", "BundleCheck", "project_requirements", "main"]

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "monailabel.md"
RECORD_BEGIN = "<!-- monailabel-check:begin (written by scripts/monailabel_check.py) -->"
RECORD_END = "<!-- monailabel-check:end -->"
DEFAULT_BUNDLES = ("synthetic3d_unet", "synthetic2d_unet")
# pydicom-seg 0.4.1 (a monailabel dependency) needs jsonschema<4; jsonschema is used by `verify_metadata` only
SKIPPED_REQUIREMENTS = ("jsonschema",)


def project_requirements() -> list[str]:
    """dale-monai's ``install_requires`` from setup.cfg, less torch (pinned separately) and jsonschema."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    reqs = [r.strip() for r in cfg["options"]["install_requires"].splitlines() if r.strip()]
    names = [re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower() for r in reqs]
    return [r for r, n in zip(reqs, names) if n != "torch" and n not in SKIPPED_REQUIREMENTS]


# --------------------------------------------------------------------------------------------- small helpers
@dataclass
class StepResult:
    """One checked step: its name, outcome, a one-line detail and its duration."""

    bundle: str
    name: str
    ok: bool
    detail: str
    seconds: float

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'}  {self.bundle}: {self.name} ({self.seconds:.0f} s): {self.detail}"


class CheckFailed(Exception):
    """A step's answer was not what it must be."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(method: str, url: str, body: bytes | None = None, headers: dict | None = None,
          timeout: float = 600.0) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers or {}), e.read()


def _run(cmd: list[str], log: Path, env: dict, cwd: Path = REPO, timeout: float = 1800) -> None:
    """Run ``cmd``; its output goes to ``log``; a non-zero exit raises with the log's tail."""
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd, timeout=timeout)
    if proc.returncode:
        raise CheckFailed(f"`{' '.join(cmd)}` exited {proc.returncode}; last lines of {log}:\n{_tail(log)}")


def _tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(lines[-n:])


def _load_label(path: Path):
    """A label file as a numpy array in the file's index order, with its affine (None for PNG)."""
    import numpy as np

    if path.suffix == ".png":
        from PIL import Image

        return np.asarray(Image.open(path)).T, None  # PIL is (rows, cols); MONAI's PILReader gives (x, y)
    import nibabel as nib

    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine


# --------------------------------------------------------------------------------------------- one bundle
@dataclass
class BundleCheck:
    """The workspace, server and steps for one bundle."""

    source: Path
    root: Path
    python: str
    env: dict
    multi_gpu: bool = True
    start_timeout: float = 600.0
    train_timeout: float = 1800.0
    pidfile: Path | None = None
    results: list[StepResult] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    port: int = 0

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def app(self) -> Path:
        return self.root / "apps" / "monaibundle"

    @property
    def bundle(self) -> Path:
        return self.app / "model" / self.name

    @property
    def studies(self) -> Path:
        return self.root / "studies"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def train_config(self) -> dict:
        return json.loads((self.source / "configs" / "train.json").read_text())

    @property
    def dims(self) -> int:
        return int(self.train_config()["spatial_dims"])

    def step(self, name: str, func) -> bool:
        """Run ``func`` (returns the detail line, raises on failure) and record a PASS or FAIL."""
        t0 = time.monotonic()
        try:
            detail, ok = func(), True
        except Exception as e:  # noqa: BLE001 - every failure is reported as this step's FAIL
            detail, ok = f"{type(e).__name__}: {e}" if not isinstance(e, CheckFailed) else str(e), False
        result = StepResult(self.name, name, ok, detail, time.monotonic() - t0)
        self.results.append(result)
        print(result.line(), flush=True)
        return ok

    # ----------------------------------------------------------------------------------------- preparation
    def prepare(self) -> str:
        if self.root.exists():
            shutil.rmtree(self.root)
        (self.root / "logs").mkdir(parents=True)
        _run([self.python, "-m", "monailabel.main", "apps", "--download", "--name", "monaibundle", "--output",
              str(self.root / "apps")], self.root / "logs" / "apps.log", self.env)
        if not (self.app / "main.py").is_file():
            raise CheckFailed(f"monailabel did not copy the monaibundle app to {self.app}")
        # the bundle as published: configs, docs, licence; no weights, logs or results of a local run
        shutil.copytree(self.source, self.bundle, ignore=shutil.ignore_patterns("models", "eval", "logs"))
        config = self.train_config()
        dims = int(config["spatial_dims"])
        data = self.root / "data"
        counts = ["--n-train", "6", "--n-val", "2", "--n-test", "2"]
        _run([self.python, "-m", "data_prep", "synthetic", "--dims", str(dims), "--out", str(data), *counts,
              "--size", "48" if dims == 3 else "96"], self.root / "logs" / "data.log", self.env)
        # "a trained bundle": one epoch of its own train.json, validating once so that models/model.pt exists
        _run([self.python, "-m", "monai.bundle", "run", "training", "--config_file",
              str(self.bundle / "configs" / "train.json"), "--bundle_root", str(self.bundle), "--dataset_dir",
              str(data), "--num_epochs", "1", "--val_interval", "1"], self.root / "logs" / "pretrain.log", self.env)
        if not (self.bundle / "models" / "model.pt").is_file():
            raise CheckFailed(f"the bundle's training wrote no {self.bundle / 'models' / 'model.pt'}")
        for sub in ("eval", "logs"):  # only weights travel with a trained bundle
            shutil.rmtree(self.bundle / sub, ignore_errors=True)
        (self.bundle / "models" / "checkpoint_last.pt").unlink(missing_ok=True)

        datalist = json.loads((data / "datalist.json").read_text())
        (self.studies / "labels" / "final").mkdir(parents=True)
        for item in datalist["training"]:
            image = data / item["image"]
            shutil.copy(image, self.studies / image.name)
            shutil.copy(data / item["label"], self.studies / "labels" / "final" / image.name)
        for item in datalist["test"]:
            shutil.copy(data / item["image"], self.studies / Path(item["image"]).name)
        extra = ""
        if dims == 2:
            self._stack_volume([data / item["image"] for item in datalist["test"]], self.studies / "volume.nii.gz")
            extra = " + volume.nii.gz (test images stacked)"
        return (f"{len(datalist['training'])} labelled + {len(datalist['test'])} unlabelled {dims}D studies{extra}; "
                f"bundle copied to {self.bundle.relative_to(REPO) if self.bundle.is_relative_to(REPO) else self.bundle}"
                " and trained 1 epoch for models/model.pt")

    @staticmethod
    def _stack_volume(images: list[Path], out: Path) -> None:
        import nibabel as nib
        import numpy as np
        from PIL import Image

        slices = [np.asarray(Image.open(p), dtype=np.float32).T for p in images]  # (x, y) as MONAI reads PNG
        nib.save(nib.Nifti1Image(np.stack(slices, -1), np.diag([0.8, 0.8, 2.5, 1.0])), str(out))

    # ----------------------------------------------------------------------------------------- server
    def start(self) -> str:
        self.port = _free_port()
        cmd = [self.python, "-m", "monailabel.main", "start_server", "--app", str(self.app), "--studies",
               str(self.studies), "--conf", "models", self.name, "--conf", "zoo_source", "github",
               "--conf", "sam2", "false", "--host", "127.0.0.1", "--port", str(self.port)]
        self.log = self.root / "logs" / "server.log"
        self._log_file = open(self.log, "w")
        # a session of its own: stopping the group also stops MONAI Label's training subprocesses and torchrun
        self.proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT, env=self.env,
                                     cwd=self.root, start_new_session=True)
        if self.pidfile:
            self.pidfile.write_text(str(self.proc.pid))
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CheckFailed(f"the server exited with {self.proc.returncode}; last lines of {self.log}:\n"
                                  f"{_tail(self.log)}")
            with contextlib.suppress(OSError):
                status, _, _ = _http("GET", f"{self.url}/info/", timeout=10)
                if status == 200:
                    return f"`monailabel start_server --app {self.app.name} --conf models {self.name}` on {self.url}"
            time.sleep(2)
        raise CheckFailed(f"the server did not answer /info/ within {self.start_timeout:.0f} s; see {self.log}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):  # training subprocesses left in the group
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log_file.close()
        if self.pidfile:
            self.pidfile.unlink(missing_ok=True)
        self.proc = None

    # ----------------------------------------------------------------------------------------- REST steps
    def info(self) -> str:
        status, _, body = _http("GET", f"{self.url}/info/")
        if status != 200:
            raise CheckFailed(f"GET /info/ answered {status}: {body[:300]!r}")
        info = json.loads(body)
        model = info.get("models", {}).get(self.name)
        if model is None:
            raise CheckFailed(f"/info/ lists models {sorted(info.get('models', {}))}, not {self.name}")
        if self.name not in info.get("trainers", {}):
            raise CheckFailed(f"/info/ lists trainers {sorted(info.get('trainers', {}))}, not {self.name}")
        meta = json.loads((self.source / "configs" / "metadata.json").read_text())
        channels = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
        want = {v.lower(): int(k) for k, v in channels.items() if v.lower() != "background"}
        if model.get("labels") != want:
            raise CheckFailed(f"/info/ labels {model.get('labels')}, metadata.json says {want}")
        if model.get("dimension") != self.dims:
            raise CheckFailed(f"/info/ dimension {model.get('dimension')}, the bundle is {self.dims}D")
        return f"model and trainer listed; labels {model['labels']}; dimension {model['dimension']}"

    def unlabelled(self) -> list[Path]:
        labelled = {p.name for p in (self.studies / "labels" / "final").iterdir()}
        return sorted(p for p in self.studies.iterdir()
                      if p.name.endswith((".png", ".nii.gz")) and p.name not in labelled)

    def infer(self, study: Path, out_dir: Path) -> Path:
        image_id = study.name.split(".")[0]
        since = self.log.stat().st_size
        status, _, body = _http("POST", f"{self.url}/infer/{self.name}?image={image_id}&output=image",
                                      body=b"")
        if status != 200:
            time.sleep(1)  # the traceback reaches the log just after the answer
            # the exception line and, for a message on two lines (ITK's), the next one unless a new log record
            errors = re.findall(r"^(?:\w+\.)*\w*(?:Error|Exception): .*(?:\n[^\[\s].*)?", self._log_since(since),
                                re.MULTILINE)
            cause = f"; the server logged: {' '.join(errors[-1].split())}" if errors else ""
            raise CheckFailed(f"POST /infer/{self.name}?image={image_id} answered {status}: "
                              f"{body[:120].decode(errors='replace')}{cause} (server log: {self.log})")
        out_dir.mkdir(parents=True, exist_ok=True)
        suffix = ".png" if study.suffix == ".png" else ".nii.gz"
        out = out_dir / (image_id + suffix)
        out.write_bytes(body)
        return out

    def own_inference(self, studies: list[Path], out_dir: Path) -> None:
        """The bundle's own inference.json on the same files, with the same weights."""
        _run([self.python, "-m", "monai.bundle", "run", "--config_file",
              str(self.bundle / "configs" / "inference.json"), "--bundle_root", str(self.bundle),
              "--datalist", json.dumps([str(p) for p in studies]), "--output_dir", str(out_dir)],
             self.root / "logs" / f"own_inference_{out_dir.name}.log", self.env)

    def check_inference(self, tag: str, volumes: bool) -> str:
        """Infer every unlabelled volume (``volumes``) or 2D image and compare with the bundle's own inference."""
        import numpy as np

        studies = [p for p in self.unlabelled() if p.name.endswith(".nii.gz") == volumes]
        own = self.root / f"own_{tag}"
        self.own_inference(studies, own)
        details, failures = [], []
        for study in studies:
            try:
                label_path = self.infer(study, self.root / f"labels_{tag}")
            except CheckFailed as e:
                failures.append(str(e))
                continue
            label, label_affine = _load_label(label_path)
            image, image_affine = _load_label(study)
            stem = study.name.split(".")[0]
            reference, _ = _load_label(next(own.glob(f"{stem}_seg.*")))
            values = set(np.unique(label).tolist())
            problems = []
            if label.shape != image.shape:
                problems.append(f"shape {label.shape} != the study's {image.shape}")
            if not values <= {0, 1}:
                problems.append(f"values {sorted(values)} not in {{0, 1}}")
            if label.shape == reference.shape and not np.array_equal(label, reference):
                problems.append(f"differs from the bundle's own inference in {int((label != reference).sum())} voxels")
            if label_affine is not None and image_affine is not None and not np.allclose(label_affine, image_affine,
                                                                                         atol=1e-4):
                problems.append("affine differs from the study's")
            if problems:
                failures.append(f"{study.name}: " + "; ".join(problems))
            else:
                details.append(f"{study.name} -> {label_path.name} {label.shape} {label.dtype}, "
                               f"{int((label > 0).sum())} foreground")
        if failures:
            raise CheckFailed(" | ".join(failures))
        return "; ".join(details) + " (= the bundle's own inference.json, same grid)"

    def _log_since(self, offset: int) -> str:
        return self.log.read_bytes()[offset:].decode(errors="replace")

    def _models(self) -> dict[str, float]:
        return {p.name: p.stat().st_mtime for p in (self.bundle / "models").glob("*.pt")}

    def _check_trained(self, before: dict[str, float], epochs: int, since: int) -> str:
        import torch

        after = self._models()
        if after.get("model.pt", 0) <= before.get("model.pt", 0):
            raise CheckFailed("models/model.pt was not rewritten (no validation ran, or training failed)")
        last = torch.load(self.bundle / "models" / "checkpoint_last.pt", map_location="cpu", weights_only=True)
        if last["trainer"]["max_epochs"] != epochs or last["trainer"]["iteration"] <= 0:
            raise CheckFailed(f"checkpoint_last.pt: max_epochs {last['trainer']['max_epochs']}, iteration "
                              f"{last['trainer']['iteration']}; asked for {epochs} epochs")
        log = self._log_since(since)
        loaded = f"Restored all variables from {self.bundle / 'models' / 'model.pt'}"
        if loaded not in log:
            raise CheckFailed("the server log does not show MONAI Label's CheckpointLoader loading models/model.pt")
        return (f"{epochs} epoch(s) from the pretrained models/model.pt (MONAI Label's CheckpointLoader), "
                f"model.pt and checkpoint_last.pt rewritten")

    def train(self) -> str:
        epochs = int(self.train_config()["val_interval"])  # one validation: model.pt is rewritten
        before, since = self._models(), self.log.stat().st_size
        request = {"max_epochs": epochs, "device": "cpu", "val_split": 0.34, "multi_gpu": False}
        status, _, body = _http("POST", f"{self.url}/train/{self.name}", json.dumps(request).encode(),
                                {"Content-Type": "application/json"})
        if status != 200:
            raise CheckFailed(f"POST /train/{self.name} answered {status}: {body[:300]!r}")
        deadline = time.monotonic() + self.train_timeout
        task: dict = {}
        while time.monotonic() < deadline:
            time.sleep(3)
            status, _, body = _http("GET", f"{self.url}/train/")
            task = json.loads(body) if status == 200 else {}
            if task.get("status") in ("DONE", "ERROR"):
                break
        else:
            raise CheckFailed(f"training did not finish within {self.train_timeout:.0f} s")
        if task["status"] != "DONE":
            details = " / ".join(task.get("details", []))[-800:]
            raise CheckFailed(f"the training task ended {task['status']}: {details}")
        return self._check_trained(before, epochs, since)

    def train_multi_gpu(self) -> str:
        epochs = int(self.train_config()["val_interval"])
        before, since = self._models(), self.log.stat().st_size
        # MONAI Label's torchrun path: it writes configs/monailabel_train.json with its overrides and runs
        # `torchrun -m monai.bundle run run --config_file [that, multi_gpu_train.json]`; "gpus" sets the process
        # count (CUDA_VISIBLE_DEVICES means nothing on a CPU-only machine: each process uses the CPU and gloo)
        request = {"max_epochs": epochs, "device": "cpu", "val_split": 0.34, "force_multi_gpu": True, "gpus": "0,1"}
        status, _, body = _http("POST", f"{self.url}/train/{self.name}?run_sync=true", json.dumps(request).encode(),
                                {"Content-Type": "application/json"}, timeout=self.train_timeout)
        if status != 200:
            raise CheckFailed(f"POST /train/{self.name}?run_sync=true answered {status}: {body[:300]!r}")
        log = self._log_since(since)
        if "RUNNING COMMAND:: ['torchrun'" not in log:
            raise CheckFailed("MONAI Label did not take its torchrun path (no 'RUNNING COMMAND:: [torchrun' logged)")
        codes = re.findall(r"monailabel\.tasks\.train\.bundle:\d+\) - Return code: (-?\d+)", log)
        if codes != ["0"]:  # MONAI Label logs torchrun's exit status but answers 200 whatever it is
            raise CheckFailed(f"torchrun exited {codes or 'with no logged status'}; see {self.log}")
        if not (self.bundle / "configs" / "monailabel_train.json").is_file():
            raise CheckFailed("MONAI Label wrote no configs/monailabel_train.json")
        return "torchrun --nproc_per_node=2 (gloo on the CPU): " + self._check_trained(before, epochs, since)

    # ----------------------------------------------------------------------------------------- all steps
    def run(self) -> bool:
        if not self.step("prepare workspace", self.prepare):
            return False
        try:
            if not self.step("start server", self.start):
                return False
            self.step("GET /info/", self.info)
            kinds = [("volumes", True)] + ([("2D images", False)] if self.dims == 2 else [])
            for kind, volumes in kinds:
                self.step(f"POST /infer on {kind} (pretrained)",
                          lambda v=volumes, k=kind: self.check_inference(f"pretrained_{k[0]}", v))
            trained = self.step("POST /train (single process)", self.train)
            if self.multi_gpu:
                trained = self.step("POST /train (torchrun, multi_gpu_train.json)", self.train_multi_gpu) or trained
            if trained:
                for kind, volumes in kinds:
                    self.step(f"POST /infer on {kind} (retrained weights)",
                              lambda v=volumes, k=kind: self.check_inference(f"retrained_{k[0]}", v))
        finally:
            self.stop()
        return all(r.ok for r in self.results)


# --------------------------------------------------------------------------------------------- record
def _versions(python: str) -> str:
    code = ("import importlib.metadata as m, torch; print(', '.join(f'{p} {m.version(p)}' for p in "
            "('monailabel', 'monai', 'torch', 'torchvision', 'numpy', 'pytorch-ignite', 'dale-monai')) + '; GPUs: ' "
            "+ str(torch.cuda.device_count()))")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return out.stdout.strip() or f"(versions unavailable: {out.stderr.strip()[-200:]})"


def record(results: list[StepResult], versions: str, seconds: float, argv: list[str]) -> None:
    """Replace the measured-outcome block of docs/monailabel.md."""
    ok = all(r.ok for r in results)
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    rows = "\n".join(f"| {r.bundle} | {r.name} | {'PASS' if r.ok else 'FAIL'} | {r.seconds:.0f} | "
                     f"{r.detail.replace('|', '/').replace(chr(10), ' ')} |" for r in results)
    block = (f"{RECORD_BEGIN}\n"
             f"Last run: {when}, `bash scripts/monailabel_check.sh{' ' + ' '.join(argv) if argv else ''}`, "
             f"{'**PASS**' if ok else '**FAIL**'} ({sum(r.ok for r in results)}/{len(results)} steps, "
             f"{seconds / 60:.1f} min in all, {os.cpu_count()} CPU cores, "
             f"Python {platform.python_version()}).\n\n"
             f"Versions: {versions}.\n\n"
             "| bundle | step | result | seconds | detail |\n|---|---|---|---|---|\n"
             f"{rows}\n{RECORD_END}")
    text = DOC.read_text() if DOC.is_file() else ""
    if RECORD_BEGIN not in text or RECORD_END not in text:
        raise SystemExit(f"{DOC}: the markers {RECORD_BEGIN!r} and {RECORD_END!r} are missing; not recording")
    head, rest = text.split(RECORD_BEGIN, 1)
    tail = rest.split(RECORD_END, 1)[1]
    DOC.write_text(head + block + tail)
    print(f"recorded in {DOC}")


# --------------------------------------------------------------------------------------------- main
def _resolve_bundle(spec: str) -> Path:
    path = Path(spec)
    candidates = [path] if path.is_dir() else [REPO / "bundles" / spec]
    for p in candidates:
        if (p / "configs" / "train.json").is_file() and (p / "configs" / "inference.json").is_file():
            return p.resolve()
    raise SystemExit(f"--bundles {spec}: neither a bundle folder nor a bundle name under {REPO / 'bundles'} "
                     "(a bundle has configs/train.json and configs/inference.json)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundles", nargs="+", default=list(DEFAULT_BUNDLES),
                        help="bundle names under bundles/ or bundle folders (default: %(default)s)")
    parser.add_argument("--workdir", default="runs/monailabel", help="workspace root (default: %(default)s)")
    parser.add_argument("--pidfile", default=None, help="where the server's process-group id is written")
    parser.add_argument("--skip-multi-gpu", action="store_true", help="skip the torchrun training step")
    parser.add_argument("--start-timeout", type=float, default=600.0, help="seconds to wait for the server")
    parser.add_argument("--train-timeout", type=float, default=1800.0, help="seconds to wait for one training")
    parser.add_argument("--no-record", action="store_true", help="do not write the outcome into docs/monailabel.md")
    parser.add_argument("--keep", action="store_true", help="keep the workspace (default: removed after a PASS)")
    parser.add_argument("--print-project-requirements", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.print_project_requirements:
        print(" ".join(project_requirements()))
        return 0

    try:
        import monailabel  # noqa: F401
    except ImportError:
        raise SystemExit("monailabel is not installed in this Python; run `bash scripts/monailabel_check.sh`")
    bundles = [_resolve_bundle(b) for b in args.bundles]
    workdir = (REPO / args.workdir).resolve() if not Path(args.workdir).is_absolute() else Path(args.workdir)
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ,
           # MONAI Label starts `python` (the `monailabel` script), subprocesses and `torchrun` from PATH
           "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           # two processes under torchrun on a small CPU: more OpenMP threads than cores slow each down
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "PYTHONUNBUFFERED": "1"}

    def _terminate(signum, frame):  # SIGTERM/SIGHUP → the finally blocks below stop the server
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)

    t0 = time.monotonic()
    results: list[StepResult] = []
    for source in bundles:
        check = BundleCheck(source=source, root=workdir / source.name, python=sys.executable, env=env,
                            multi_gpu=not args.skip_multi_gpu, start_timeout=args.start_timeout,
                            train_timeout=args.train_timeout,
                            pidfile=Path(args.pidfile) if args.pidfile else None)
        print(f"== {source.name} ({source})", flush=True)
        try:
            ok = check.run()
        finally:
            results.extend(check.results)
        if ok and not args.keep:
            shutil.rmtree(check.root, ignore_errors=True)
        elif not ok:
            print(f"   workspace kept for inspection: {check.root} (server log: {check.root / 'logs' / 'server.log'})")
    ok = all(r.ok for r in results)
    print(f"\n{'PASS' if ok else 'FAIL'}: {sum(r.ok for r in results)} of {len(results)} steps passed "
          f"({(time.monotonic() - t0) / 60:.1f} min)")
    if not args.no_record:
        record(results, _versions(sys.executable), time.monotonic() - t0,
               _strip_paths(argv if argv is not None else sys.argv[1:]))
    return 0 if ok else 1


def _strip_paths(argv: list[str]) -> list[str]:
    """The command line as recorded: without the values of --workdir/--pidfile (set by the shell script)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--workdir", "--pidfile"):
            skip = True
            continue
        out.append(a)
    return out


if __name__ == "__main__":
    sys.exit(main())
