"""Semi-supervised overlays under torchrun (``multi_gpu_train.json`` last): 2 CPU processes (gloo).

Run by pytest, the module fixture starts ``torchrun --standalone --nproc_per_node=2`` on this file; run as a
script it is the worker. Each process trains the mean teacher, DALE on pseudo-labels and GapMatch on its shard of
the labelled and of the unlabelled set; every network (and teacher) must end identical on both ranks, and the
unlabelled loader must be sharded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "synthetic2d_unet" / "configs"
RUNS = {"meanteacher": ("meanteacher_train.json", ("network", "teacher")),
        "dalepl": ("dalepl_train.json", ("network", "teacher")),
        "gapmatch": ("gapmatch_train.json", ("network",))}

pytestmark = pytest.mark.usefixtures("one_thread")


def _overrides(bundle_root: Path, dataset_dir: Path) -> dict:
    """Deterministic apart from the shuffles: SGD, instance norm (BatchNorm statistics are per process), no
    augmentation, no validation, no Wasserstein term."""
    return {"bundle_root": str(bundle_root), "dataset_dir": str(dataset_dir), "spatial_size": [32, 32],
            "batch_size": 1, "num_epochs": 2, "val_interval": 100, "learning_rate": 0.05,
            "optimizer#_target_": "torch.optim.SGD", "train#random_transforms": [], "unlabeled#random_transforms": [],
            "network_def#norm": "instance", "dale#omega_reduction": "sum"}


def _worker(out: str, dataset_dir: str) -> None:
    from monai.bundle import ConfigWorkflow

    from dale_monai.feature_layers import unwrap_model

    rank = int(os.environ["RANK"])
    for i, (name, (overlay, modules)) in enumerate(RUNS.items()):
        files = [str(BUNDLE / "train.json"), str(BUNDLE / overlay), str(BUNDLE / "multi_gpu_train.json")]
        workflow = ConfigWorkflow(config_file=files, workflow_type="train",
                                  **_overrides(Path(out) / name, Path(dataset_dir)))
        workflow.initialize()
        sampler = workflow.trainer.unlabeled_data_loader.sampler
        shard = sorted(int(j) for j in sampler) if isinstance(sampler, torch.utils.data.DistributedSampler) else []
        workflow.run()
        state = {"shard": torch.tensor(shard)}
        for module in modules:
            net = unwrap_model(workflow.parser.get_parsed_content(module))
            state.update({f"{module}.{k}": v.detach().clone() for k, v in net.state_dict().items()})
        torch.save(state, Path(out) / f"{name}_rank{rank}.pt")
        if i == len(RUNS) - 1:  # one process group for all runs: the last finalize destroys it
            workflow.finalize()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    from data_prep.synthetic import make_synthetic_dataset

    data = tmp_path_factory.mktemp("ddp_semi_data")
    make_synthetic_dataset(data, dims=2, n_train=8, n_val=2, n_test=1, size=32, labeled_fraction=0.5, verbose=False)
    out = tmp_path_factory.mktemp("ddp_semi_runs")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
           str(out), str(data)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    result: dict = {"dir": out, "n_unlabeled": len(json.loads((data / "datalist.json").read_text())["unlabeled"])}
    for name in RUNS:
        for rank in (0, 1):
            result[name, rank] = torch.load(out / f"{name}_rank{rank}.pt", weights_only=True)
    return result


@pytest.mark.parametrize("name", list(RUNS))
def test_ranks_end_identical_and_the_unlabelled_set_is_sharded(runs, name):
    rank0, rank1 = runs[name, 0], runs[name, 1]
    shard0, shard1 = rank0.pop("shard"), rank1.pop("shard")
    # each process draws its own half of the unlabelled images
    assert len(shard0) == len(shard1) == runs["n_unlabeled"] // 2
    assert sorted(shard0.tolist() + shard1.tolist()) == list(range(runs["n_unlabeled"]))
    assert rank0.keys() == rank1.keys() and any(k.startswith("network.") for k in rank0)
    for k in rank0:
        assert torch.equal(rank0[k], rank1[k]), f"{name}: ranks diverged at {k}"
    ckpt = torch.load(runs["dir"] / name / "models" / "checkpoint_last.pt", weights_only=True)
    assert ckpt["trainer"]["iteration"] == 4  # 2 epochs of the 2 labelled images of each rank, batch 1
    assert not any(k.startswith("module.") for k in ckpt["model"])


if __name__ == "__main__":
    _worker(*sys.argv[1:3])
