#!/usr/bin/env python
"""Speed and memory of a DALE iteration against a standard MONAI iteration (issue 3, "Speed").

One process, the same batches for every variant, the variants interleaved round-robin over the
repeats (round r runs every variant once on batch r), so that machine noise hits all of them alike;
medians and ratios to the standard iteration are reported. Variants:

- ``standard``: :class:`monai.engines.SupervisedTrainer`, :class:`dale_monai.losses.DALELoss`, Adam;
- ``dale_jvp``: :class:`dale_monai.engines.DALETrainer` with ``OmegaMetaStep("jvp")``;
- ``dale_jvp_w``: the same with the :class:`dale_monai.handlers.WassersteinAlignment` handler (L_W);
- ``dale_double_backward``: ``OmegaMetaStep("double_backward")``, the reference;
- ``dale_first_order``: ``OmegaMetaStep("first_order")``, the approximate method (v = the non-fuzzy step's
  gradient at θ; no virtual step, no v pass);
- ``dale_first_order_head``: ``OmegaMetaStep("first_order", scope="head")``, the same over the segmentation
  head's parameters only (the Jacobian-vector product runs through the head alone);
- ``dale_jvp_fwad`` (opt-in, ``--variants``; equal to ``dale_jvp`` since ``dale_monai.meta`` uses dual tensors itself): ``jvp`` with the Jacobian-vector product taken by
  :mod:`torch.autograd.forward_ad` dual tensors instead of :func:`torch.func.jvp` (a local
  monkeypatch, see :func:`_use_forward_ad`); it computes the same ω (checked at start-up).

Agreement of the approximate ω with the exact one: after the timing rounds, on the weights the ``dale_jvp``
variant has reached and on every distinct batch, one iteration of each method runs from identical copies of
that network and optimizer (so θ, θ_n and the batch are the same) and their meta gradients g are compared
with ``jvp``'s: sign agreement on the pixels where ``|g_jvp| > --agreement-rel-eps · max |g_jvp|``, over all
pixels and within the fuzzy patches (M^f ≥ 0.9), and Spearman's rank correlation
(:func:`scipy.stats.spearmanr`). ``jvp`` restricted to the head (``scope="head"``) is compared too, which
separates the error of the head restriction from that of the first-order v.

An iteration is timed from Ignite's ``ITERATION_STARTED`` to ``ITERATION_COMPLETED`` (the trainer's
``_iteration`` and every handler on it); DALE iterations are split into phases with timestamps at the
trainer's ``DALEEvents`` and timers around the meta step's internals. The partition transform
(:class:`dale_monai.transforms.FuzzyPartition`) is timed per sample, on the samples of each round.

Peak memory: each (backbone, variant) runs in a fresh subprocess; it resets the kernel's peak-RSS
mark (``/proc/self/clear_refs``) after setup and reads ``VmHWM`` after the iterations, so the increment
``peak − RSS before the first iteration`` is the iteration's working memory (activations, gradients,
optimizer state, allocator slack), free of the import and set-up peaks that ``ru_maxrss`` would carry.

Usage::

    python benchmarks/bench_speed.py                        # full run, writes benchmarks/results/speed.{md,json}
    python benchmarks/bench_speed.py --size 32 --batch 1 --repeats 1 --out /tmp/bench   # smoke
    python benchmarks/bench_speed.py --backbones unet --name speed_fast_omega           # writes speed_fast_omega.*
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO))
if str(REPO / "benchmarks") not in sys.path:  # imported by file path (tests), not run as a script
    sys.path.insert(0, str(REPO / "benchmarks"))

import provenance  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from ignite.engine import Events  # noqa: E402
from monai.engines import SupervisedTrainer  # noqa: E402
from monai.engines.utils import IterationEvents  # noqa: E402
from torch import nn  # noqa: E402

from dale_monai.engines import DALEEvents, DALETrainer  # noqa: E402
from dale_monai.handlers import WassersteinAlignment  # noqa: E402
from dale_monai.losses import DALELoss  # noqa: E402
from dale_monai.meta import OmegaMetaStep  # noqa: E402
from dale_monai.transforms import FuzzyPartition  # noqa: E402

__all__ = ["BACKBONES", "VARIANTS", "DEFAULT_VARIANTS", "TARGETS", "main"]

BACKBONES = ("unet", "swinunetr")
VARIANTS = ("standard", "dale_jvp", "dale_jvp_w", "dale_double_backward", "dale_first_order", "dale_first_order_head",
            "dale_jvp_fwad")
DEFAULT_VARIANTS = ("standard", "dale_jvp", "dale_jvp_w", "dale_double_backward", "dale_first_order",
                    "dale_first_order_head")
#: the ω meta step of each DALE variant: OmegaMetaStep(method, scope=...)
VARIANT_STEPS = {
    "dale_jvp": ("jvp", "full"),
    "dale_jvp_w": ("jvp", "full"),
    "dale_double_backward": ("double_backward", "full"),
    "dale_first_order": ("first_order", "full"),
    "dale_first_order_head": ("first_order", "head"),
    "dale_jvp_fwad": ("jvp", "full"),
}
#: methods whose meta gradient is compared with jvp's (name, OmegaMetaStep arguments)
AGREEMENT_METHODS = (
    ("first_order", {"method": "first_order"}),
    ("first_order_head", {"method": "first_order", "scope": "head"}),
    ("jvp_head", {"method": "jvp", "scope": "head"}),
)
# (name, backbone, variant, quantity, limit) — issue 3 (jvp, partition, memory) and issue 14 (first_order)
TARGETS = (
    ("DALE(jvp) time <= 4.0x standard, UNet", "unet", "dale_jvp", "time_ratio", 4.0),
    ("partition < 2% of a DALE(jvp) iteration, UNet", "unet", "dale_jvp", "partition_share", 0.02),
    ("DALE(jvp) peak memory <= 2x standard, UNet", "unet", "dale_jvp", "memory_ratio", 2.0),
    ("DALE(first_order) time <= 2.7x standard, UNet", "unet", "dale_first_order", "time_ratio", 2.7),
    ("DALE(first_order, head) time <= 2.2x standard, UNet", "unet", "dale_first_order_head", "time_ratio", 2.2),
    ("first_order sign agreement with jvp >= 95%, UNet", "unet", "first_order", "sign_agreement", 0.95),
    ("first_order (head) sign agreement with jvp >= 95%, UNet", "unet", "first_order_head", "sign_agreement", 0.95),
)
LR = 3e-4  # the paper's Adam learning rate, also η of the virtual step

DALE_PHASES = ("nonfuzzy_step", "fuzzy_forward", "meta_virtual_grad", "meta_v_pass", "meta_jvp",
               "meta_second_backward", "meta_other", "fuzzy_step", "handlers_and_output")
STANDARD_PHASES = ("forward", "loss", "backward_and_step", "handlers_and_output")


# --------------------------------------------------------------------------------------------- set-up


def build_network(backbone: str, swin_feature_size: int) -> nn.Module:
    """The benchmarked network (one logit channel, 2D)."""
    from monai.networks.nets import SwinUNETR, UNet

    if backbone == "unet":
        return UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=(32, 64, 128, 256), strides=(2, 2, 2),
                    num_res_units=2)
    if backbone == "swinunetr":
        return SwinUNETR(in_channels=1, out_channels=1, feature_size=swin_feature_size, spatial_dims=2)
    raise ValueError(f"--backbones: unknown backbone {backbone!r}; choose from {BACKBONES}")


def network_config(backbone: str, swin_feature_size: int) -> str:
    if backbone == "unet":
        return "UNet(2D, 1->1, channels=(32,64,128,256), strides=(2,2,2), num_res_units=2, instance norm)"
    return f"SwinUNETR(2D, 1->1, feature_size={swin_feature_size}, depths=(2,2,2,2), heads=(3,6,12,24), window 7)"


def make_samples(size: int, count: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Synthetic CT-like images with one lesion and its noisy label (``data_prep.synthetic``)."""
    from data_prep.synthetic import generate_case

    samples = []
    for i in range(count):
        case = generate_case(np.random.default_rng([seed, i]), size=size, dims=2, n_lesions=1)
        samples.append({"image": torch.from_numpy(case.image)[None].float(),
                        "label": torch.from_numpy(case.label_noisy)[None].float()})
    return samples


def make_batches(samples: list[dict[str, torch.Tensor]], batch: int, partition: FuzzyPartition) -> list[dict]:
    """Consecutive samples collated into batches, with the partition masks computed per sample."""
    batches = []
    for start in range(0, len(samples) - batch + 1, batch):
        items = samples[start:start + batch]
        masks = [partition(s["image"], s["label"]) for s in items]
        batches.append({
            "image": torch.stack([s["image"] for s in items]),
            "label": torch.stack([s["label"] for s in items]),
            "mask_n": torch.stack([m[0] for m in masks]),
            "mask_f": torch.stack([m[1] for m in masks]),
        })
    return batches


class _PhaseClock:
    """Timestamps inside one iteration; ``phases`` turns them into durations."""

    def __init__(self) -> None:
        self.marks: dict[str, float] = {}
        self.inner: dict[str, float] = {}

    def mark(self, name: str) -> Callable[[Any], None]:
        def handler(_: Any) -> None:
            self.marks[name] = time.perf_counter()
        return handler

    def add(self, name: str, seconds: float) -> None:
        self.inner[name] = self.inner.get(name, 0.0) + seconds

    def reset(self) -> None:
        self.marks.clear()
        self.inner.clear()


def _timed(fn: Callable, clock: _PhaseClock, name: str) -> Callable:
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            clock.add(name, time.perf_counter() - t0)
    return wrapper


def _jvp_by_forward_ad(func: Callable, primals: tuple, tangents: tuple) -> tuple:
    """``torch.func.jvp(func, primals, tangents)`` computed with :mod:`torch.autograd.forward_ad` dual tensors.

    ``func`` is the meta step's ``functional_call`` closure, so the dual tensors simply replace the
    network's parameters for one forward; no functorch transform is involved.
    """
    import torch.autograd.forward_ad as fwad

    with fwad.dual_level():
        duals = [{k: fwad.make_dual(p[k], t[k]) for k in p} if isinstance(p, dict) else fwad.make_dual(p, t)
                 for p, t in zip(primals, tangents)]
        out = fwad.unpack_dual(func(*duals))
        return out.primal, out.tangent


def _use_forward_ad(step: OmegaMetaStep) -> None:
    """Make this meta step take its Jacobian-vector product with forward-mode AD (local monkeypatch).

    ``meta.py`` calls ``torch.func.jvp``; for the duration of this instance's ``_grad_jvp`` only, that
    name points to :func:`_jvp_by_forward_ad`. Everything else in the step is the library's own code.
    """
    original = step._grad_jvp

    def grad_jvp(*args, **kwargs):
        saved = torch.func.jvp
        torch.func.jvp = _jvp_by_forward_ad
        try:
            return original(*args, **kwargs)
        finally:
            torch.func.jvp = saved

    step._grad_jvp = grad_jvp


class Runner:
    """One variant: a trainer on its own copy of the network, run one iteration at a time."""

    def __init__(self, name: str, network: nn.Module, device: torch.device) -> None:
        self.name = name
        self.clock = _PhaseClock()
        net = copy.deepcopy(network).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=LR)
        loss = DALELoss()
        self.loader: list = [None]
        if name == "standard":
            self.trainer = SupervisedTrainer(device, 1, self.loader, net, opt, loss)
        else:
            method, scope = VARIANT_STEPS[name]
            step = OmegaMetaStep(method=method, scope=scope)
            if name == "dale_jvp_fwad":
                _use_forward_ad(step)
            self._instrument(step)
            self.trainer = DALETrainer(device, 1, self.loader, net, opt, loss, omega_step=step)
        t = self.trainer
        t.add_event_handler(Events.ITERATION_STARTED, self.clock.mark("start"))
        if name == "standard":
            for ev in (IterationEvents.FORWARD_COMPLETED, IterationEvents.LOSS_COMPLETED,
                       IterationEvents.BACKWARD_COMPLETED):
                t.add_event_handler(ev, self.clock.mark(ev.name))
        else:
            # registered before the Wasserstein handler: OMEGA_COMPLETED marks the end of the meta step,
            # and L_W (computed at OMEGA_COMPLETED) counts in the fuzzy step
            for ev in DALEEvents:
                t.add_event_handler(ev, self.clock.mark(ev.name))
            if name == "dale_jvp_w":
                WassersteinAlignment().attach(t)
        self.network, self.optimizer = net, opt

    def _instrument(self, step: OmegaMetaStep) -> None:
        clock = self.clock
        step._virtual_params = _timed(step._virtual_params, clock, "virtual")
        step._nonfuzzy_grad = _timed(step._nonfuzzy_grad, clock, "v_pass")
        step._grad_jvp = _timed(step._grad_jvp, clock, "grad_jvp")
        step._grad_double_backward = _timed(step._grad_double_backward, clock, "grad_db")
        step._grad_first_order = _timed(step._grad_first_order, clock, "grad_fo")

    def finish_setup(self) -> None:
        """Register the end-of-iteration timestamp after every other handler."""
        self.trainer.add_event_handler(Events.ITERATION_COMPLETED, self.clock.mark("end"))

    def __call__(self, batch: dict) -> dict[str, float]:
        self.loader[0] = batch
        self.clock.reset()
        self.trainer.run()
        return self.phases()

    def phases(self) -> dict[str, float]:
        m, inner = self.clock.marks, self.clock.inner
        out = {"total": m["end"] - m["start"]}
        if self.name == "standard":
            out["forward"] = m["FORWARD_COMPLETED"] - m["start"]
            out["loss"] = m["LOSS_COMPLETED"] - m["FORWARD_COMPLETED"]
            out["backward_and_step"] = m["BACKWARD_COMPLETED"] - m["LOSS_COMPLETED"]
            out["handlers_and_output"] = m["end"] - m["BACKWARD_COMPLETED"]
            return out
        meta = m["OMEGA_COMPLETED"] - m["FUZZY_FORWARD_COMPLETED"]
        virtual, v_pass = inner.get("virtual", 0.0), inner.get("v_pass", 0.0)
        grad = inner.get("grad_jvp", 0.0) + inner.get("grad_db", 0.0) + inner.get("grad_fo", 0.0)
        last = grad - virtual - v_pass  # the jvp, or the backward through the virtual step
        out["nonfuzzy_step"] = m["NONFUZZY_COMPLETED"] - m["start"]
        out["fuzzy_forward"] = m["FUZZY_FORWARD_COMPLETED"] - m["NONFUZZY_COMPLETED"]
        out["meta_virtual_grad"] = virtual
        out["meta_v_pass"] = v_pass
        out["meta_jvp"] = last if "grad_jvp" in inner or "grad_fo" in inner else 0.0
        out["meta_second_backward"] = last if "grad_db" in inner else 0.0
        out["meta_other"] = meta - grad
        out["fuzzy_step"] = m["FUZZY_COMPLETED"] - m["OMEGA_COMPLETED"]
        out["handlers_and_output"] = m["end"] - m["FUZZY_COMPLETED"]
        return out


class _GradRecorder:
    """Calls an ω meta step and keeps the meta gradient it saw; its options (scope, ...) read through."""

    def __init__(self, step: OmegaMetaStep) -> None:
        self.step, self.grad = step, None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.step, name)

    def __call__(self, *args, **kwargs):
        result = self.step(*args, **kwargs)
        self.grad = result.grad
        return result


def check_fwad_matches(network: nn.Module, batch: dict) -> float:
    """Max relative difference of ω's meta gradient between the ``torch.func.jvp`` and ``forward_ad`` paths."""
    grads = []
    for patched in (False, True):
        step = OmegaMetaStep(method="jvp")
        if patched:
            _use_forward_ad(step)
        recorder = _GradRecorder(step)
        net = copy.deepcopy(network)
        trainer = DALETrainer("cpu", 1, [batch], net, torch.optim.Adam(net.parameters(), lr=LR), DALELoss(),
                              omega_step=recorder)
        trainer.run()
        grads.append(recorder.grad)
    a, b = grads
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-30))


def _meta_grad(network: nn.Module, optimizer: torch.optim.Optimizer, batch: dict, **step_kwargs) -> torch.Tensor:
    """The meta gradient g of one DALE iteration on ``batch`` from a copy of ``network`` and ``optimizer``."""
    net = copy.deepcopy(network)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    opt.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # load_state_dict alone would share the tensors
    recorder = _GradRecorder(OmegaMetaStep(**step_kwargs))
    DALETrainer("cpu", 1, [batch], net, opt, DALELoss(), omega_step=recorder).run()
    return recorder.grad


def measure_agreement(network: nn.Module, optimizer: torch.optim.Optimizer, batches: list[dict], rel_eps: float,
                      tau: float = 0.9) -> dict:
    """Agreement of each :data:`AGREEMENT_METHODS` meta gradient with ``jvp``'s on the same weights and batches.

    Returns:
        ``per_batch`` rows and a ``summary`` per method (mean and minimum over batches) of: ``sign_agreement``
        (share of the pixels with ``|g_jvp| > rel_eps · max|g_jvp|`` where the signs agree), the same within the
        fuzzy patches (``M^f >= tau``) and over all pixels, ``spearman`` (rank correlation over all pixels) and
        ``selected_fraction`` (share of pixels above the threshold).
    """
    from scipy.stats import spearmanr

    rows = []
    for index, batch in enumerate(batches):
        ref = _meta_grad(network, optimizer, batch, method="jvp").flatten().double()
        fuzzy = (batch["mask_f"][:, :1] >= tau).flatten()
        selected = ref.abs() > rel_eps * ref.abs().max()
        for name, kwargs in AGREEMENT_METHODS:
            g = _meta_grad(network, optimizer, batch, **kwargs).flatten().double()
            same = (g.sign() == ref.sign()).double()
            rows.append({
                "batch": index,
                "method": name,
                "sign_agreement": float(same[selected].mean()),
                "sign_agreement_fuzzy": float(same[selected & fuzzy].mean()) if (selected & fuzzy).any() else None,
                "sign_agreement_all_pixels": float(same.mean()),
                "spearman": float(spearmanr(g.numpy(), ref.numpy())[0]),
                "selected_fraction": float(selected.double().mean()),
            })
            print(f"  agreement, batch {index}, {name}: sign {rows[-1]['sign_agreement']:.4f}, "
                  f"Spearman {rows[-1]['spearman']:.4f}", flush=True)
    summary = {}
    for name, _ in AGREEMENT_METHODS:
        mine = [r for r in rows if r["method"] == name]
        summary[name] = {}
        for key in ("sign_agreement", "sign_agreement_fuzzy", "sign_agreement_all_pixels", "spearman",
                    "selected_fraction"):
            values = [r[key] for r in mine if r[key] is not None]
            summary[name][key + "_mean"] = float(np.mean(values)) if values else None
            summary[name][key + "_min"] = float(np.min(values)) if values else None
    return {"rel_eps": rel_eps, "tau": tau, "batches": len(batches), "per_batch": rows, "summary": summary}


# --------------------------------------------------------------------------------------------- memory


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory_child(args: argparse.Namespace) -> dict:
    """In a fresh process: set up one (backbone, variant), run iterations, report RSS before and peak."""
    backbone, variant = args.memory_child.split(":")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    samples = make_samples(args.size, args.batch, args.seed)
    batch = make_batches(samples, args.batch, FuzzyPartition())[0]
    runner = Runner(variant, build_network(backbone, args.swin_feature_size), torch.device("cpu"))
    runner.finish_setup()
    del samples
    gc.collect()
    reset = _reset_peak()
    before = _status_kib("VmRSS")
    for _ in range(args.memory_iterations):
        runner(batch)
    peak = _status_kib("VmHWM") if reset else None
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    method = "VmHWM after clear_refs reset" if reset and peak is not None else "ru_maxrss (peak since start)"
    if peak is None:
        peak = maxrss
    return {"backbone": backbone, "variant": variant, "rss_before_mib": (before or 0) / 1024,
            "peak_rss_mib": peak / 1024, "increment_mib": (peak - (before or 0)) / 1024,
            "ru_maxrss_mib": maxrss / 1024, "method": method, "iterations": args.memory_iterations}


def measure_memory(args: argparse.Namespace, backbones: list[str], variants: list[str]) -> dict:
    """Run one fresh subprocess per (backbone, variant), ``--memory-jobs`` at a time."""
    jobs = [(b, v) for b in backbones for v in variants]
    results: dict[str, dict[str, dict]] = {b: {} for b in backbones}
    running: list[tuple[tuple[str, str], subprocess.Popen]] = []

    def collect(job, proc):
        out, err = proc.communicate()
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            # keep the timings already measured: record the failure instead of raising
            tail = err.strip().splitlines()[-1] if err.strip() else "no output"
            print(f"memory subprocess for {job} failed (exit {proc.returncode}): {tail}", file=sys.stderr)
            results[job[0]][job[1]] = {"error": f"exit {proc.returncode}: {tail}"}
            return
        results[job[0]][job[1]] = json.loads(lines[-1])

    for job in jobs:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", f"{job[0]}:{job[1]}",
               "--size", str(args.size), "--batch", str(args.batch), "--threads", str(args.threads),
               "--seed", str(args.seed), "--swin-feature-size", str(args.swin_feature_size),
               "--memory-iterations", str(args.memory_iterations)]
        running.append((job, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                              cwd=REPO)))
        if len(running) >= args.memory_jobs:
            collect(*running.pop(0))
    for job, proc in running:
        collect(job, proc)
    return results


# --------------------------------------------------------------------------------------------- timing


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def time_backbone(args: argparse.Namespace, backbone: str, variants: list[str], batches: list[dict],
                  partition: FuzzyPartition, samples: list[dict]) -> dict:
    torch.manual_seed(args.seed)
    network = build_network(backbone, args.swin_feature_size)
    runners = [Runner(v, network, torch.device("cpu")) for v in variants]
    for r in runners:
        r.finish_setup()
    for w in range(args.warmup):
        for r in runners:
            r(batches[w % len(batches)])
    per_variant: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    partition_s: list[float] = []
    for rep in range(args.repeats):
        batch_index = rep % len(batches)
        batch = batches[batch_index]
        order = runners[rep % len(runners):] + runners[:rep % len(runners)]  # rotate who goes first
        for r in order:
            per_variant[r.name].append(r(batch))
        for s in samples[batch_index * args.batch:(batch_index + 1) * args.batch]:
            t0 = time.perf_counter()
            partition(s["image"], s["label"])
            partition_s.append(time.perf_counter() - t0)
        std = per_variant["standard"][-1]["total"] if "standard" in per_variant else float("nan")
        line = "  ".join(f"{v}={per_variant[v][-1]['total']:.3f}s ({per_variant[v][-1]['total'] / std:.2f}x)"
                         for v in variants)
        print(f"[{backbone}] round {rep + 1}/{args.repeats}: {line}", flush=True)

    result: dict[str, Any] = {"network": network_config(backbone, args.swin_feature_size),
                              "parameters": sum(p.numel() for p in network.parameters()), "variants": {}}
    std_times = [x["total"] for x in per_variant.get("standard", [])]
    std_median = _median(std_times)
    for v in variants:
        totals = [x["total"] for x in per_variant[v]]
        keys = per_variant[v][0].keys()
        entry = {
            "times_s": totals,
            "median_s": _median(totals),
            "min_s": min(totals),
            "ratio": _median(totals) / std_median,
            "ratio_paired_median": _median([t / s for t, s in zip(totals, std_times)]),
            "ratio_of_minima": min(totals) / min(std_times),
            "breakdown_median_s": {k: _median([x[k] for x in per_variant[v]]) for k in keys if k != "total"},
            "breakdown_min_s": {k: min(x[k] for x in per_variant[v]) for k in keys if k != "total"},
            "breakdown_per_round_s": per_variant[v],
        }
        entry["breakdown_in_standard_iterations"] = {k: val / std_median
                                                     for k, val in entry["breakdown_median_s"].items()}
        result["variants"][v] = entry
    per_sample = _median(partition_s)
    result["partition"] = {"per_sample_s": per_sample, "times_s": partition_s}
    if "dale_jvp" in result["variants"]:
        result["partition"]["share_of_dale_jvp_iteration"] = (
            args.batch * per_sample / result["variants"]["dale_jvp"]["median_s"])
    if args.agreement_batches:
        # the weights the exact variant reached over the rounds (trained a little), else the initial ones
        source = next((r for r in runners if r.name == "dale_jvp"), None)
        net, opt = (source.network, source.optimizer) if source else (
            network, torch.optim.Adam(network.parameters(), lr=LR))
        print(f"[{backbone}] agreement with the exact jvp meta gradient on {args.agreement_batches} batch(es) ...",
              flush=True)
        result["agreement"] = measure_agreement(net, opt, batches[:args.agreement_batches], args.agreement_rel_eps)
        result["agreement"]["weights"] = ("dale_jvp after its warm-up and timing rounds" if source
                                          else "initial weights")
    return result


# --------------------------------------------------------------------------------------------- report


def environment(args: argparse.Namespace, argv: list[str]) -> dict:
    import ignite
    import monai

    cpu = "unknown"
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, "benchmarks/bench_speed.py", *argv]),
        "commit": provenance.commit(),
        "worktree_dirty": provenance.code_changed(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "ignite": ignite.__version__,
        "threads": torch.get_num_threads(),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "platform": platform.platform(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "size": args.size,
        "batch": args.batch,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "optimizer": f"Adam(lr={LR})",
        "loss": "DALELoss() (per-pixel BCE, mean)",
        "omega": "OmegaMetaStep(lr=0.1, eps=1e-8, steps=1, reduction='mean', rule='adam') with each variant's "
                 "method and scope, inner_lr = optimizer lr",
        "partition": "FuzzyPartition() defaults: 16x16 patches, tau 0.9, 256 bins, morph edges, paper entropy",
        "data": "data_prep.synthetic.generate_case (one lesion, noisy label), seed " + str(args.seed),
    }


def evaluate_targets(results: dict) -> list[dict]:
    out = []
    for name, backbone, variant, quantity, limit in TARGETS:
        b = results["backbones"].get(backbone)
        value = None
        if b is not None:
            if quantity == "time_ratio" and variant in b.get("variants", {}):
                value = b["variants"][variant]["ratio_paired_median"]
            elif quantity == "partition_share" and "partition" in b:
                value = b["partition"].get("share_of_dale_jvp_iteration")
            elif quantity == "memory_ratio" and "memory" in b:
                mem = b["memory"]
                if "increment_mib" in mem.get(variant, {}) and "increment_mib" in mem.get("standard", {}):
                    value = mem[variant]["increment_mib"] / max(mem["standard"]["increment_mib"], 1e-9)
            elif quantity == "sign_agreement" and "agreement" in b:
                value = b["agreement"]["summary"].get(variant, {}).get("sign_agreement_mean")
        if quantity == "partition_share":
            met = None if value is None else value < limit
        elif quantity == "sign_agreement":
            met = None if value is None else value >= limit
        else:
            met = None if value is None else value <= limit
        out.append({"target": name, "variant": variant, "quantity": quantity, "value": value, "limit": limit,
                    "met": met})
    return out


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def render_markdown(results: dict) -> str:
    env = results["environment"]
    lines = [
        "# DALE speed and memory benchmark",
        "",
        f"Command: `{env['command']}`  ",
        f"Commit: `{env['commit']}`{' (work tree had uncommitted changes)' if env['worktree_dirty'] else ''}, "
        f"{env['date_utc']}  ",
        f"torch {env['torch']}, MONAI {env['monai']}, Ignite {env['ignite']}, Python {env['python']}  ",
        f"Machine: {env['cpu']}, nproc {env['nproc']}, torch threads {env['threads']}, "
        f"load average at start {_fmt(env['load_average_at_start'][0]) if env['load_average_at_start'] else 'n/a'}  ",
        f"Input {env['size']}x{env['size']}, batch {env['batch']}, {env['repeats']} interleaved rounds after "
        f"{env['warmup']} warm-up round(s); {env['optimizer']}; {env['loss']}; {env['omega']}.  ",
        "Time ratios to the standard iteration: the headline (bold, and the one the targets use) is the median over "
        "rounds of the ratio within a round.",
        "",
        *([] if results.get("complete", True) else ["**Partial results: the run is still going or was stopped.**", ""]),
        "## Targets (issues 3 and 14)",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for t in results["targets"]:
        value = _fmt(t["value"], ".2%" if t["quantity"] in ("partition_share", "sign_agreement") else ".2f")
        lines.append(f"| {t['target']} | {value} | {'n/a' if t['met'] is None else ('yes' if t['met'] else 'NO')} |")
    for backbone, b in results["backbones"].items():
        lines += ["", f"## {backbone}: {b['network']}, {b['parameters']:,} parameters", "",
                  "| variant | median s/iter | min s/iter | median of paired ratios | ratio of medians "
                  "| ratio of minima |",
                  "|---|---|---|---|---|---|"]
        for v, e in b["variants"].items():
            lines.append(f"| {v} | {e['median_s']:.3f} | {e['min_s']:.3f} | **{e['ratio_paired_median']:.2f}x** "
                         f"| {e['ratio']:.2f}x | {e['ratio_of_minima']:.2f}x |")
        p = b["partition"]
        share = p.get("share_of_dale_jvp_iteration")
        lines += ["", f"Partition (FuzzyPartition, one sample): {p['per_sample_s'] * 1e3:.2f} ms median; "
                  f"batch of {env['batch']} = {_fmt(share, '.2%')} of a DALE(jvp) iteration."]
        if "memory" in b:
            lines += ["", "Peak memory (fresh process per variant; RSS before the first iteration, peak RSS "
                      "during the iterations, increment = peak - before):", "",
                      "| variant | RSS before MiB | peak RSS MiB | increment MiB | increment / standard |",
                      "|---|---|---|---|---|"]
            std = b["memory"].get("standard", {}).get("increment_mib")
            for v, m in b["memory"].items():
                if "error" in m:
                    lines.append(f"| {v} | failed: {m['error']} | | | |")
                    continue
                ratio = _fmt(m["increment_mib"] / std) + "x" if std else "n/a"
                lines.append(f"| {v} | {m['rss_before_mib']:.0f} | {m['peak_rss_mib']:.0f} | "
                             f"{m['increment_mib']:.0f} | {ratio} |")
        lines += ["", "Where the time goes: median (min) seconds per phase over the rounds; in brackets the median "
                  "in units of the median standard iteration:", ""]
        dale = [v for v in b["variants"] if v != "standard"]
        if dale:
            lines += ["| phase | " + " | ".join(dale) + " |", "|---|" + "---|" * len(dale)]
            for phase in DALE_PHASES:
                cells = []
                for v in dale:
                    e = b["variants"][v]
                    cells.append(f"{e['breakdown_median_s'][phase]:.3f} ({e['breakdown_min_s'][phase]:.3f}) "
                                 f"[{e['breakdown_in_standard_iterations'][phase]:.2f}]")
                lines.append(f"| {phase} | " + " | ".join(cells) + " |")
        if "agreement" in b:
            a = b["agreement"]
            lines += ["", f"Agreement of the meta gradient g with the exact `jvp` one, on the same batches and weights "
                      f"({a['weights']}; {a['batches']} batch(es); mean (min) over batches). Sign agreement on the "
                      f"pixels with |g_jvp| > {a['rel_eps']:g}·max|g_jvp|, within the fuzzy patches (M^f ≥ {a['tau']}) "
                      "and over all pixels; Spearman rank correlation over all pixels:", "",
                      "| method | sign agreement | in fuzzy patches | all pixels | Spearman | pixels above threshold |",
                      "|---|---|---|---|---|---|"]
            for name, m in a["summary"].items():
                cells = [f"{_fmt(m[k + '_mean'], '.2%' if k != 'spearman' else '.4f')} "
                         f"({_fmt(m[k + '_min'], '.2%' if k != 'spearman' else '.4f')})"
                         for k in ("sign_agreement", "sign_agreement_fuzzy", "sign_agreement_all_pixels", "spearman",
                                   "selected_fraction")]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if "standard" in b["variants"]:
            e = b["variants"]["standard"]
            lines += ["", "Standard iteration, median (min) s: " + ", ".join(
                f"{k} {e['breakdown_median_s'][k]:.3f} ({e['breakdown_min_s'][k]:.3f})" for k in STANDARD_PHASES) + "."]
    if results.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]
    return "\n".join(lines) + "\n"


NOTES = [
    "Every variant trains its own copy of the same initial network on the same batches; rounds are interleaved "
    "(round r runs each variant once on batch r, rotating which goes first), so load from other processes "
    "hits all variants alike. 'ratio of medians' = median(variant) / median(standard); 'median of paired "
    "ratios' = median over rounds of variant / standard in the same round (used for the targets: it cancels "
    "load that lasts a round); 'ratio of minima' = fastest variant iteration / fastest standard iteration "
    "(the least disturbed estimate).",
    "An iteration is timed from Ignite ITERATION_STARTED to ITERATION_COMPLETED (MONAI's _iteration and all "
    "handlers, including decollation of the output).",
    "Phases of a DALE iteration: nonfuzzy_step = forward, backward and Adam step on X^n; fuzzy_forward = forward "
    "on X^f at theta_n and the loss map (graph kept); meta_virtual_grad = backward of mean(omega*l) through the "
    "kept fuzzy graph (theta_p); meta_v_pass = forward+backward of L_n at theta_p (functional_call); meta_jvp = "
    "the Jacobian-vector product of the fuzzy loss map at theta_n along v (a forward with tangents); "
    "meta_second_backward = double_backward's backward through the virtual step to omega; meta_other = closures, "
    "norm-mode switch, Adam on omega, statistics; fuzzy_step = weighted fuzzy loss (with L_W when the "
    "Wasserstein handler is attached), backward through the kept graph, Adam step; handlers_and_output = "
    "MODEL_COMPLETED handlers (decollation) and the rest.",
    "Cost floor of the exact jvp method: a DALE(jvp) iteration runs the network forward four times (non-fuzzy "
    "step, fuzzy forward, v pass at theta_p, the primal half of the jvp) and backward four times (non-fuzzy step, "
    "virtual gradient, v pass, fuzzy step), against one forward and one backward for the standard iteration, plus "
    "the tangent half of the jvp (about one more forward's work, two for convolutions). Its ratio is therefore "
    "4 + (tangents - one Adam step) / standard iteration, above 4.0 for any network.",
    "first_order variants: meta_jvp is their whole meta gradient (one Jacobian-vector product along the non-fuzzy "
    "step's gradient, through the whole network or, for dale_first_order_head, through the head alone on the "
    "pre-head features recorded in the fuzzy forward); they have no virtual step and no v pass. Their iteration "
    "runs the network forward three times (non-fuzzy step, fuzzy forward, the primal half of the jvp; the head "
    "variant only the head a third time) and backward twice, plus the jvp's tangents and a copy of the "
    "non-fuzzy gradient.",
    "Memory: RSS of a fresh Python process per (backbone, variant), measured with the kernel's peak-RSS mark "
    "reset after set-up (/proc/self/clear_refs = 5, then VmHWM); the increment is the iteration's working "
    "memory. The memory target compares increments (absolute RSS includes ~0.3-0.5 GiB of libraries that "
    "both variants share). CPU allocator caching is included, as a user would see it.",
]


# --------------------------------------------------------------------------------------------- main


def write_results(results: dict, out_dir: Path, complete: bool, name: str = "speed") -> None:
    """Evaluate the targets on what was measured and write ``<name>.json`` and ``<name>.md``."""
    results["complete"] = complete
    results["targets"] = evaluate_targets(results)
    (out_dir / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / f"{name}.md").write_text(render_markdown(results))


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--size", type=int, default=224, help="image side (SwinUNETR: a multiple of 32, >= 64)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=7, help="interleaved timing rounds per backbone")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds before timing")
    p.add_argument("--batches", type=int, default=2, help="distinct batches, cycled over the rounds")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--backbones", default=",".join(BACKBONES), help=f"comma-separated, from {BACKBONES}")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"comma-separated, from {VARIANTS}")
    p.add_argument("--swin-feature-size", type=int, default=24, help="SwinUNETR feature_size (multiple of 12)")
    p.add_argument("--memory-backbones", default=None,
                   help="backbones whose peak memory is measured (default: --backbones; 'none' skips)")
    p.add_argument("--memory-variants", default=None,
                   help="variants whose peak memory is measured (default: the --variants among the default four)")
    p.add_argument("--memory-iterations", type=int, default=2, help="iterations per memory subprocess")
    p.add_argument("--memory-jobs", type=int, default=1, help="memory subprocesses run at once")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="folder for <name>.{md,json}")
    p.add_argument("--name", default="speed", help="file stem of the results (e.g. speed_fast_omega)")
    p.add_argument("--agreement-batches", type=int, default=None,
                   help="batches on which the approximate meta gradients are compared with jvp's (default: all "
                        "--batches; 0 skips)")
    p.add_argument("--agreement-rel-eps", type=float, default=1e-3,
                   help="sign agreement counts pixels with |g_jvp| above this fraction of max |g_jvp|")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in ("size", "batch", "repeats", "batches", "threads", "memory_iterations", "memory_jobs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.agreement_batches is None:
        args.agreement_batches = args.batches
    if not 0 <= args.agreement_batches <= args.batches:
        p.error(f"--agreement-batches must be in [0, --batches={args.batches}], got {args.agreement_batches}")
    if not 0 <= args.agreement_rel_eps < 1:
        p.error(f"--agreement-rel-eps must be in [0, 1), got {args.agreement_rel_eps}")
    if not args.name or "/" in args.name:
        p.error(f"--name must be a plain file stem, got {args.name!r}")
    return args


def _split(text: str, allowed: tuple[str, ...], option: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        raise SystemExit(f"{option}: unknown or empty entries {bad or text!r}; choose from {allowed}")
    return items


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.memory_child:
        print(json.dumps(memory_child(args)), flush=True)
        return 0
    backbones = _split(args.backbones, BACKBONES, "--backbones")
    variants = _split(args.variants, VARIANTS, "--variants")
    if "standard" not in variants:
        raise SystemExit("--variants must include 'standard': every ratio is to the standard iteration")
    if "swinunetr" in backbones and (args.size % 32 or args.size < 64):
        # below 64 its bottleneck is 1x1 and instance norm refuses a single spatial element in training
        raise SystemExit(f"--size {args.size}: SwinUNETR needs a multiple of 32, at least 64")
    mem_backbones = backbones if args.memory_backbones is None else (
        [] if args.memory_backbones == "none" else _split(args.memory_backbones, BACKBONES, "--memory-backbones"))
    mem_variants = [v for v in variants if v in DEFAULT_VARIANTS] if args.memory_variants is None else _split(
        args.memory_variants, VARIANTS, "--memory-variants")
    torch.set_num_threads(args.threads)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    results: dict[str, Any] = {"environment": environment(args, argv), "backbones": {}, "notes": list(NOTES)}
    print(f"threads {torch.get_num_threads()}, nproc {os.cpu_count()}, torch {torch.__version__}", flush=True)
    partition = FuzzyPartition()
    samples = make_samples(args.size, args.batch * args.batches, args.seed)
    batches = make_batches(samples, args.batch, partition)
    if "dale_jvp_fwad" in variants:
        torch.manual_seed(args.seed)
        small = build_network(backbones[0], args.swin_feature_size)
        diff = check_fwad_matches(small, batches[0])
        results["notes"].append(f"dale_jvp_fwad: max relative difference of the meta gradient to torch.func.jvp "
                                f"on {backbones[0]}: {diff:.2e} (float32).")
        print(f"forward_ad vs torch.func.jvp meta gradient, max relative difference: {diff:.2e}", flush=True)
    for backbone in backbones:
        results["backbones"][backbone] = time_backbone(args, backbone, variants, batches, partition, samples)
        write_results(results, out_dir, complete=False, name=args.name)  # a long run keeps what it measured so far
    if mem_backbones:
        print(f"peak memory: one fresh process per variant for {mem_backbones} ...", flush=True)
        memory = measure_memory(args, mem_backbones, mem_variants)
        for backbone, per_variant in memory.items():
            results["backbones"].setdefault(backbone, {})["memory"] = per_variant
    write_results(results, out_dir, complete=True, name=args.name)
    print()
    for backbone, b in results["backbones"].items():
        for v, e in b.get("variants", {}).items():
            print(f"{backbone:10s} {v:22s} {e['median_s']:.3f} s  {e['ratio']:.2f}x standard "
                  f"(paired {e['ratio_paired_median']:.2f}x)")
    for t in results["targets"]:
        print(f"target: {t['target']}: {t['value']} -> {'met' if t['met'] else 'NOT met' if t['met'] is not None else 'n/a'}")
    print(f"wrote {out_dir / (args.name + '.json')} and {out_dir / (args.name + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
