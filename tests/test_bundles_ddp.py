"""multi_gpu_train.json under torchrun: 2 CPU processes (gloo) against one process on the same global batch.

Run by pytest, the module fixture starts ``torchrun --standalone --nproc_per_node=2`` on this file; run as a
script it is the worker. Each process trains twice on its shard of the same tiny synthetic data: once without
the ω meta step (``omega_step: null``, the real DALE steps only) and once with DALE as shipped; then with the
Co-teaching, MW-Net and CLCS overlays (several networks, a weight network, the class curriculum), whose ranks must end
identical too.
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
TRAIN = [str(BUNDLE / "train.json")]
MULTI = TRAIN + [str(BUNDLE / "multi_gpu_train.json")]
GLOBAL_BATCH = 4
N_TRAIN = 8  # two iterations of the global batch
LR = 0.05
VARIANTS = {"no_omega": {"train#trainer#omega_step": None}, "dale": {},
            # v = the non-fuzzy step's gradient, which DDP's backward has already averaged over the ranks
            "dale_first_order": {"dale#omega_method": "first_order"}}
# paradigm overlays run under torchrun: (overlay, overrides, the config ids of every trained module)
PARADIGM_RUNS = {
    "coteaching": ("coteaching_train.json", {"coteaching#ramp_start": 0, "coteaching#ramp_end": 1},
                   ("network", "network_1")),
    "mwnet": ("mwnet_train.json", {}, ("network", "mwnet#weight_net")),
    # two epochs: the second selects with thresholds from the first's counts, summed over the ranks
    "clcs": ("clcs_train.json", {"num_epochs": 2, "clcs#warmup_epochs": 1, "clcs#tau": 0.6,
                                 "clcs#threshold_warmup": False}, ("network", "network_1")),
}

pytestmark = pytest.mark.usefixtures("one_thread")



def _overrides(bundle_root: Path, dataset_dir: Path, batch_size: int, variant: str, lr: float = LR) -> dict:
    """A deterministic run: no augmentation, fixed order, no validation, SGD (Adam's normalisation would turn
    float noise on the zero gradients of the biases before instance norm into full steps), instance norm
    (BatchNorm statistics are per process under DDP), Wasserstein weight 0 (its Gaussian statistics are per
    process too), ω with the 'sum' reduction (independent of the pixel count)."""
    return {
        "bundle_root": str(bundle_root),
        "dataset_dir": str(dataset_dir),
        "spatial_size": [32, 32],
        "batch_size": batch_size,
        "num_epochs": 1,
        "val_interval": 100,
        "learning_rate": lr,
        "optimizer#_target_": "torch.optim.SGD",
        "train#random_transforms": [],
        "train#dataloader#shuffle": False,
        "network_def#norm": "instance",
        "dale#alpha": 0.0,
        "dale#omega_reduction": "sum",
        **VARIANTS[variant],
    }


def _train(config_files: list[str], overrides: dict, finalize: bool = True, modules=("network",)) -> dict:
    """The trained state of ``network`` (keys as they are), or of several modules (keys prefixed by their id)."""
    from monai.bundle import ConfigWorkflow

    from dale_monai.feature_layers import unwrap_model

    workflow = ConfigWorkflow(config_file=config_files, workflow_type="train", **overrides)
    workflow.initialize()
    workflow.run()
    state = {}
    for module in modules:
        net = unwrap_model(workflow.parser.get_parsed_content(module))
        prefix = "" if modules == ("network",) else f"{module}."
        state.update({prefix + k: v.detach().cpu().clone() for k, v in net.state_dict().items()})
    if finalize:
        workflow.finalize()
    return state


def _worker(out: str, dataset_dir: str) -> None:
    rank = int(os.environ["RANK"])
    for variant in VARIANTS:
        overrides = _overrides(Path(out) / variant, Path(dataset_dir), GLOBAL_BATCH // 2, variant)
        overrides["train#sampler#shuffle"] = False  # rank r gets samples r, r+2, ...: the global batch in order
        # one process group for all runs: the last run's finalize destroys it (gloo cannot re-initialise here)
        state = _train(MULTI, overrides, finalize=False)
        torch.save(state, Path(out) / f"{variant}_rank{rank}.pt")
    for i, (paradigm, (overlay, extra, modules)) in enumerate(PARADIGM_RUNS.items()):
        overrides = {**_overrides(Path(out) / paradigm, Path(dataset_dir), GLOBAL_BATCH // 2, "dale"), **extra}
        files = TRAIN + [str(BUNDLE / overlay), str(BUNDLE / "multi_gpu_train.json")]  # multi-GPU overlay last
        state = _train(files, overrides, finalize=i == len(PARADIGM_RUNS) - 1, modules=modules)
        torch.save(state, Path(out) / f"{paradigm}_rank{rank}.pt")


def _norm_diff(a: dict, b: dict) -> float:
    return float(sum(((a[k].double() - b[k].double()) ** 2).sum() for k in a if a[k].is_floating_point()) ** 0.5)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Weights of every run: ``(variant, 'rank0'|'rank1'|'single'|'half'|'init')``, and the run folder."""
    from data_prep.synthetic import make_synthetic_dataset

    data = tmp_path_factory.mktemp("ddp_data")
    make_synthetic_dataset(data, dims=2, n_train=N_TRAIN, n_val=2, n_test=1, size=32, n_meta=2, verbose=False)
    out = tmp_path_factory.mktemp("ddp_runs")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
           str(out), str(data)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    result: dict = {"dir": out}
    shard = [{k: str(data / v) for k, v in item.items()}
             for item in json.loads((data / "datalist.json").read_text())["training"][::2]]
    for variant in [*VARIANTS, *PARADIGM_RUNS]:
        for rank in (0, 1):
            result[variant, f"rank{rank}"] = torch.load(out / f"{variant}_rank{rank}.pt", weights_only=True)
    for variant in VARIANTS:
        result[variant, "single"] = _train(TRAIN, _overrides(out / f"{variant}_single", data, GLOBAL_BATCH, variant))
    result["init"] = _train(TRAIN, _overrides(out / "init", data, GLOBAL_BATCH, "no_omega", lr=0.0))
    # one process on rank 0's shard alone: what a missing gradient all-reduce would give
    result["half"] = _train(TRAIN, {**_overrides(out / "half", data, GLOBAL_BATCH // 2, "no_omega"),
                                    "train#dataset#data": shard})
    return result


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_ranks_end_with_identical_weights(runs, variant):
    rank0, rank1 = runs[variant, "rank0"], runs[variant, "rank1"]
    assert rank0.keys() == rank1.keys()
    for k in rank0:
        assert torch.equal(rank0[k], rank1[k]), f"{variant}: ranks diverged at {k}"
    assert _norm_diff(rank0, runs["init"]) > 0, "nothing was trained"


@pytest.mark.parametrize("paradigm", list(PARADIGM_RUNS))
def test_paradigm_ranks_end_with_identical_networks(runs, paradigm):
    """Every network of the paradigm (Co-teaching's two, MW-Net's network and weight network) is the same on both
    ranks: DDP averages each network's gradients, MW-Net sums its weight network's meta gradient over the ranks."""
    rank0, rank1 = runs[paradigm, "rank0"], runs[paradigm, "rank1"]
    _, _, modules = PARADIGM_RUNS[paradigm]
    assert rank0.keys() == rank1.keys() and all(any(k.startswith(m + ".") for k in rank0) for m in modules)
    for k in rank0:
        assert torch.equal(rank0[k], rank1[k]), f"{paradigm}: ranks diverged at {k}"
    trained = {k[len("network."):]: v for k, v in rank0.items() if k.startswith("network.")}
    assert _norm_diff(trained, runs["init"]) > 0, "nothing was trained"
    ckpt = torch.load(runs["dir"] / paradigm / "models" / "checkpoint_last.pt", weights_only=True)
    assert set(ckpt["model"]) == set(runs["init"])  # written by rank 0, no "module." prefix
    if paradigm in ("coteaching", "clcs"):
        assert set(ckpt["model_1"]) == set(runs["init"]) and "optimizer_1" in ckpt
    if paradigm == "clcs":
        # rank 0's curriculum holds the counts of the whole global batch (every pixel of the 8 cases, epoch 2)
        assert float(ckpt["clcs_curriculum"]["counts"][0].sum()) == N_TRAIN * 32 * 32
        assert float(ckpt["clcs_curriculum"]["thresholds"].max()) > 0


def test_only_rank0_writes_checkpoints_without_ddp_prefix(runs):
    ckpt = torch.load(runs["dir"] / "dale" / "models" / "checkpoint_last.pt", weights_only=True)
    assert set(ckpt["model"]) == set(runs["dale", "rank0"])  # no "module." prefix
    assert ckpt["trainer"]["iteration"] == N_TRAIN // GLOBAL_BATCH  # two iterations of the global batch


def test_real_steps_match_one_process_on_the_global_batch(runs):
    update = _norm_diff(runs["no_omega", "single"], runs["init"])
    gap = _norm_diff(runs["no_omega", "rank0"], runs["no_omega", "single"])
    assert gap < 1e-4 * update, f"DDP differs from one process by {gap:.3g} (update {update:.3g})"
    # the check can fail: training on one shard without averaging is far off
    assert _norm_diff(runs["half"], runs["no_omega", "single"]) > 0.05 * update


@pytest.mark.parametrize("variant", ["dale", "dale_first_order"])
def test_dale_matches_one_process_exactly(runs, variant):
    """With ω: the meta step all-reduces the virtual step's gradient and v = ∇L_n(θ_p) (first_order: v is the
    non-fuzzy step's gradient, all-reduced by DDP) and uses the global pixel count, so DDP computes the ω of one
    process holding the global batch."""
    update = _norm_diff(runs[variant, "single"], runs["init"])
    assert _norm_diff(runs[variant, "rank0"], runs[variant, "single"]) < 1e-4 * update


if __name__ == "__main__":
    _worker(*sys.argv[1:3])
