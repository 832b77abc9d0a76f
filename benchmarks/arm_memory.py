#!/usr/bin/env python
"""Peak training memory of the accuracy benchmarks' arms, side by side (the one-leaderboard issue).

Each arm trains with its exact benchmark configuration: the ``RunConfig`` that ``accuracy.py`` builds from
``ARMS`` (and ``ARM_DATASETS``) for the profile and dataset, trained by ``accuracy_core.train_and_evaluate``, so
the trainer, its networks and optimizers, the loaders (the labelled one, and the meta or unlabelled one where
the paradigm uses it), the batch, resolution and network are the harness's own. Only two things differ, and
neither is part of training:

* no validation or test cases are passed (empty lists), so no evaluation runs while the peak is measured;
* the paradigm is wrapped (registered under ``<paradigm>[arm_memory]``, in the measuring process only) so that
  a probe is attached to the trainer it builds: the probe resets the peak mark when the trainer starts (after the
  data are loaded and the networks, optimizers and loaders built), reads it after every iteration, and stops
  the trainer after ``iterations`` iterations (default :data:`ITERATIONS`). The probe fires after every handler
  the paradigm attached (EMA teachers, statistics), so the iterations are measured whole.

Every arm runs in a fresh subprocess (one at a time), so no arm inherits another's allocator state; with
``--repeats k`` each arm is measured k times, the k-th measurements of all arms one after the other, and the
median is reported with the range. On the CPU the result is the peak resident set size over the set-up's
(``VmHWM`` after a ``/proc/self/clear_refs`` reset; see ``peak_memory.py``, which says how it falls back where
the reset is unavailable); with a CUDA profile it is
``torch.cuda.max_memory_allocated`` over ``memory_allocated`` at the same point. Both are in MiB, and each arm's
ratio is to ``standard`` of the same command (always measured). The early iterations are the run's steady state
as far as memory goes, with one exception: CLCS's warm-up epochs select every pixel, but compute the same loss
maps as after them.

Results are cached per (arm's ``RunConfig`` including the profile's fields and the dataset, the code version of
its paradigm as ``accuracy_core.code_version`` hashes it, this file and ``peak_memory.py``, iterations, repeat) in
``<work>/arm_memory/``, so a re-run measures only what is missing. ``<out>/arm_memory_<profile>_<dataset>.{json,md}``
hold the table, the command and the commit (rewritten only with ``--overwrite``).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/arm_memory.py --profile short --dataset ph2 \\
        --arms standard,gce,trinet,dale --work /work/main/data/bench
    python benchmarks/arm_memory.py --profile semi --dataset ph2_l25 --arms meanteacher,cps --overwrite

Python::

    from arm_memory import measure
    rows = measure("short", "ph2", ["standard", "trinet"], work=Path("data/bench"))
    rows["trinet"]["increment_mib"], rows["trinet"]["ratio_to_standard"]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy import ARM_DATASETS, ARMS, _commit, _profile_with  # noqa: E402
from accuracy_core import (  # noqa: E402
    LABELED_FRACTIONS,
    PROFILES,
    REPO,
    Profile,
    RunConfig,
    data_dir,
    load_split,
    paradigm,
    prepare_dataset,
    profile_fields,
    code_version,
    register_paradigm,
    train_and_evaluate,
)
from peak_memory import PeakMemory  # noqa: E402

__all__ = ["ITERATIONS", "resolve_profile", "arm_config", "measure", "markdown", "write_report", "main"]

#: training iterations measured per arm
ITERATIONS = 5

#: the sources the measurement itself depends on besides the arm's (part of every cache key)
_TOOL_FILES = ("benchmarks/arm_memory.py", "benchmarks/peak_memory.py")


def resolve_profile(profile: str | Profile, settings: Sequence[str] = ()) -> Profile:
    """A profile by name (or as given) with ``accuracy.py``'s ``--set field=value`` settings applied.

    Raises:
        ValueError: an unknown profile name or a bad setting.
    """
    if isinstance(profile, str):
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; choose from {sorted(PROFILES)}")
        profile = PROFILES[profile]
    return _profile_with(profile, list(settings))


def arm_config(arm: str, dataset: str, profile: Profile, seed: int = 0) -> RunConfig:
    """The ``RunConfig`` ``accuracy.py`` trains for ``arm`` in the rows of ``dataset`` (``ARM_DATASETS``: the
    ``full`` arm of ``ph2_l25`` trains on ``ph2``).

    Raises:
        ValueError: an unknown arm, or an arm the harness leaves out of ``dataset``.
    """
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; choose from {list(ARMS)}")
    if arm in ARM_DATASETS and dataset not in ARM_DATASETS[arm]:
        raise ValueError(f"arm {arm!r} has no run on dataset {dataset!r} (accuracy.ARM_DATASETS: it is reported "
                         f"only for {sorted(ARM_DATASETS[arm])})")
    train_ds = ARM_DATASETS.get(arm, {}).get(dataset, dataset)
    return RunConfig(dataset=train_ds, seed=seed, profile=profile.name,
                     profile_fields=profile_fields(profile, train_ds), **ARMS[arm])


def _datalist(dataset: str, profile: Profile, work: Path, src: Path) -> Path:
    """The prepared dataset's datalist (converting it once into ``work`` as ``accuracy.py`` does)."""
    levels = {lv.name: lv for lv in profile.noise_levels}
    noise = levels.get(dataset[len("ph2_"):]) if dataset.startswith("ph2_") else None
    if dataset.startswith("ph2_") and noise is None and dataset not in LABELED_FRACTIONS:
        raise ValueError(f"dataset {dataset!r}: the {profile.name} profile's noise levels are {list(levels)}")
    return prepare_dataset(dataset, src, work, noise)


def _tool_version() -> str:
    h = hashlib.sha1()
    for rel in _TOOL_FILES:
        h.update((REPO / rel).read_bytes())
    return h.hexdigest()[:12]


def _key(cfg: RunConfig, iterations: int, device: str, repeat: int) -> str:
    text = json.dumps({"run": cfg.key(), "iterations": iterations, "device": device, "repeat": repeat,
                       "tool": _tool_version()}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- the measuring process


class _Probe:
    """Ignite handler: resets the peak mark when the trainer starts, reads it after each iteration up to
    ``iterations``, then stops the trainer. Attached after the paradigm's own handlers, so it sees whole iterations."""

    def __init__(self, iterations: int, device: str) -> None:
        self.iterations, self.memory = iterations, PeakMemory(device)
        self.result: dict | None = None

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self.start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def start(self, engine) -> None:
        self.memory.reset()

    def __call__(self, engine) -> None:
        self.result = {**self.memory.read(), "iterations": engine.state.iteration}
        if engine.state.iteration >= self.iterations:
            engine.terminate()


def _measure_here(spec: dict) -> dict:
    """In a fresh process: load the arm's training data, train ``spec["iterations"]`` iterations with the
    harness's trainer and return the probe's reading."""
    import torch

    profile = resolve_profile(spec["profile"], spec["settings"])
    cfg = RunConfig(**spec["config"])
    par = paradigm(cfg.paradigm)
    datalist = Path(spec["datalist"])
    subset = profile.covid_subset if cfg.dataset.startswith("covid") else None
    train = load_split(datalist, "training", profile.size, subset)
    unlabeled = None
    if par.unlabeled and "unlabeled" in json.loads(datalist.read_text()):
        unlabeled = load_split(datalist, "unlabeled", profile.size, subset)

    probe = _Probe(spec["iterations"], profile.device)

    def build(cfg_, common, extras):
        trainer, stats = par.build(cfg_, common, extras)
        probe.attach(trainer)
        return trainer, stats

    wrapped = f"{cfg.paradigm}[arm_memory]"
    register_paradigm(wrapped, files=par.files, partition=par.partition, unlabeled=par.unlabeled)(build)
    t0 = time.perf_counter()
    # no validation or test cases: only training runs (train_and_evaluate scores empty lists as NaN)
    record, _, _ = train_and_evaluate(dataclasses.replace(cfg, paradigm=wrapped), profile, train, [], [], unlabeled)
    if probe.result is None:
        raise RuntimeError(f"arm {spec['arm']!r}: the trainer ran no iteration (training set of {len(train)} cases, "
                           f"batch {profile.batch}, last partial batch dropped)")
    return {"arm": spec["arm"], "dataset": spec["dataset"], "trained_dataset": cfg.dataset, "profile": profile.name,
            "paradigm": cfg.paradigm, "run_key": cfg.key(), "code_version": spec["code_version"],
            "iterations_requested": spec["iterations"], "repeat": spec["repeat"], **probe.result,
            "total_iterations": record["iterations"], "n_train": len(train), "n_unlabeled": len(unlabeled or []),
            "device": profile.device, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "process_s": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------- the driver


def measure(profile: str, dataset: str, arms: Sequence[str], work: Path | str, *,
            iterations: int = ITERATIONS, repeats: int = 1, settings: Sequence[str] = (),
            data: Path | str | None = None, use_cache: bool = True,
            log: Callable[[str], None] = print) -> dict[str, dict]:
    """Peak training memory of each arm, one fresh subprocess per arm not yet in the cache.

    Args:
        profile: a profile name of ``accuracy_profiles.PROFILES`` (the measuring processes rebuild it from its
            name and ``settings``).
        dataset: the dataset whose rows the arms are reported in (``ph2``, ``ph2_l25``, ``covid_both``, ...),
            prepared into ``work`` as ``accuracy.py`` prepares it (reused when already there).
        arms: arm names of ``accuracy.ARMS``; ``standard`` is added first when absent (the ratios' reference).
        work: the benchmarks' work folder (converted datasets); results are cached in ``work/arm_memory``.
        iterations: training iterations per arm (fewer when a run has fewer).
        repeats: measurements per arm, each in its own process (the result is their median).
        settings: ``accuracy.py``'s ``--set field=value`` profile changes.
        data: real-data folder (default ``$DALE_DATA_DIR``, else ``../shared/data``).
        use_cache: read cached results (False re-measures and replaces them).
        log: progress lines.

    Returns:
        arm → result: ``increment_mib`` (peak over the use at the start of training, MiB), ``peak_mib``,
        ``before_mib`` (medians over the repeats), ``increment_min_mib`` / ``increment_max_mib``, ``method``,
        ``iterations`` (measured), ``ratio_to_standard`` (of the medians), ``measurements`` (each repeat's
        record) and the run's identity (``run_key``: the key of the benchmark run it stands for,
        ``code_version``, ``trained_dataset``).

    Raises:
        ValueError: an unknown profile, arm or dataset, or ``iterations`` < 1 (before anything is measured).
        accuracy_core.DataMissing: the dataset is neither prepared in ``work`` nor found in the data folder.
        RuntimeError: an arm's measuring process failed (its stderr's tail in the message).
    """
    if iterations < 1 or repeats < 1:
        raise ValueError(f"iterations and repeats must be at least 1, got {iterations} and {repeats}")
    prof = resolve_profile(profile, settings)
    arms = list(dict.fromkeys(["standard", *arms]))
    configs = {arm: arm_config(arm, dataset, prof) for arm in arms}  # every name checked before any work
    work = Path(work)
    src = data_dir(data)
    datalists = {ds: _datalist(ds, prof, work, src) for ds in dict.fromkeys(c.dataset for c in configs.values())}
    cache = work / "arm_memory"
    cache.mkdir(parents=True, exist_ok=True)
    paths = {(arm, r): cache / f"{_key(cfg, iterations, prof.device, r)}.json"
             for arm, cfg in configs.items() for r in range(repeats)}
    # repeats outermost: every arm's k-th measurement lies close in time to the others' (side by side)
    for r in range(repeats):
        for arm, cfg in configs.items():
            path = paths[arm, r]
            if use_cache and path.is_file():
                log(f"{arm:>14} #{r}: {json.loads(path.read_text())['increment_mib']:8.1f} MiB (cached {path.name})")
                continue
            spec = {"arm": arm, "dataset": dataset, "profile": profile, "settings": list(settings),
                    "config": dataclasses.asdict(cfg), "datalist": str(datalists[cfg.dataset]),
                    "iterations": iterations, "repeat": r, "code_version": code_version(cfg.paradigm),
                    "out": str(path)}
            _run_child(spec)
            got = json.loads(path.read_text())
            log(f"{arm:>14} #{r}: {got['increment_mib']:8.1f} MiB ({got['iterations']} iterations, {got['method']})")
    results = {arm: _summary([json.loads(paths[arm, r].read_text()) for r in range(repeats)]) for arm in configs}
    std = results["standard"]["increment_mib"]
    for res in results.values():
        res["ratio_to_standard"] = res["increment_mib"] / std if std > 0 else float("nan")
    return results


def _summary(measurements: list[dict]) -> dict:
    """One arm's result: the median over its repeats of each memory figure, the increments' range and the
    repeats' own records."""
    import statistics

    out = {k: v for k, v in measurements[0].items() if k not in ("increment_mib", "peak_mib", "before_mib",
                                                                 "process_s", "repeat")}
    for k in ("increment_mib", "peak_mib", "before_mib"):
        out[k] = statistics.median(m[k] for m in measurements)
    incs = [m["increment_mib"] for m in measurements]
    out.update(repeats=len(measurements), increment_min_mib=min(incs), increment_max_mib=max(incs),
               measurements=measurements)
    return out


def _run_child(spec: dict) -> None:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    if proc.returncode != 0 or not Path(spec["out"]).is_file():
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:]) or "no output"
        raise RuntimeError(f"arm {spec['arm']!r} on {spec['dataset']!r}: measuring process failed "
                           f"(exit {proc.returncode}):\n{tail}")


def _child_main(spec_json: str) -> int:
    spec = json.loads(spec_json)
    result = _measure_here(spec)
    out = Path(spec["out"])
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out)  # a process killed while writing leaves no half-written result
    return 0


# ---------------------------------------------------------------------------------------------- report


def markdown(results: dict[str, dict], profile: Profile, dataset: str, command: str, commit: str) -> str:
    """The results as a Markdown section: one row per arm, MiB and ratio to ``standard``."""
    first = next(iter(results.values()))
    lines = [f"# Peak training memory per arm: profile `{profile.name}`, dataset `{dataset}`", "",
             f"Peak memory of {first['iterations_requested']} training iterations of each arm's exact benchmark "
             f"configuration (its `accuracy.py` trainer, networks, loaders, batch {profile.batch}, "
             f"{profile.size} px), each arm in a fresh process, all in one command. Increment: peak over the "
             "memory in use when training starts (data, networks, optimizers and loaders built), i.e. the training "
             f"iterations' working memory. Method: {first['method']}. Median over {first['repeats']} "
             "measurement(s) per arm (each a fresh process; the repeats interleaved across the arms), range in "
             "brackets.", "",
             f"Profile: {profile.describe()}", "",
             "| arm | paradigm | trained on | iterations | increment MiB [range] | vs standard | peak MiB | "
             "at start MiB |", "|---|---|---|---|---|---|---|---|"]
    for arm, r in results.items():
        span = f" [{r['increment_min_mib']:.1f}–{r['increment_max_mib']:.1f}]" if r["repeats"] > 1 else ""
        lines.append(f"| {arm} | {r['paradigm']} | {r['trained_dataset']} | {r['iterations']} | "
                     f"{r['increment_mib']:.1f}{span} | {r['ratio_to_standard']:.2f} | {r['peak_mib']:.1f} | "
                     f"{r['before_mib']:.1f} |")
    lines += ["", f"Command: `{command}`", "", f"Commit: {commit}", ""]
    return "\n".join(lines)


def write_report(results: dict[str, dict], profile: Profile, dataset: str, out: Path, command: str,
                 overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``<out>/arm_memory_<profile>_<dataset>.json`` and ``.md``.

    Raises:
        FileExistsError: either file exists and ``overwrite`` is False.
    """
    out.mkdir(parents=True, exist_ok=True)
    js, md = (out / f"arm_memory_{profile.name}_{dataset}.{ext}" for ext in ("json", "md"))
    existing = [str(p) for p in (js, md) if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)} exist; pass --overwrite to replace them")
    commit = _commit()
    js.write_text(json.dumps({"profile": profile.name, "profile_fields": profile_fields(profile, dataset),
                              "dataset": dataset, "command": command, "commit": commit, "arms": results}, indent=1))
    md.write_text(markdown(results, profile, dataset, command, commit))
    return js, md


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return _child_main(argv[1])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", required=True, help=f"one of {sorted(PROFILES)}")
    parser.add_argument("--dataset", required=True, help="dataset of the rows (ph2, ph2_l25, covid_both, ...)")
    parser.add_argument("--arms", required=True, help="comma-separated arms of accuracy.ARMS (standard is added)")
    parser.add_argument("--iterations", type=int, default=ITERATIONS, help="training iterations per arm")
    parser.add_argument("--repeats", type=int, default=1,
                        help="measurements per arm, each in a fresh process (median reported)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="change a profile field")
    parser.add_argument("--work", default=str(REPO / "data" / "bench"),
                        help="benchmark work folder (converted data; cache in <work>/arm_memory)")
    parser.add_argument("--data-dir", default=None, help="real-data folder (default $DALE_DATA_DIR or ../shared/data)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="report folder")
    parser.add_argument("--no-cache", action="store_true", help="re-measure every arm")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report")
    args = parser.parse_args(argv)
    arms = [a for a in args.arms.split(",") if a]
    try:
        profile = resolve_profile(args.profile, args.set)
        for arm in arms:
            arm_config(arm, args.dataset, profile)
    except ValueError as e:
        parser.error(str(e))
    out = Path(args.out)
    names = (f"arm_memory_{profile.name}_{args.dataset}.{ext}" for ext in ("json", "md"))
    existing = [out / n for n in names if (out / n).exists()]
    if existing and not args.overwrite:
        parser.error(f"{existing[0]} exists; pass --overwrite to replace it")
    results = measure(args.profile, args.dataset, arms, Path(args.work), iterations=args.iterations,
                      repeats=args.repeats, settings=args.set, data=args.data_dir, use_cache=not args.no_cache)
    command = "python benchmarks/arm_memory.py " + " ".join(shlex.quote(a) for a in argv)
    js, md = write_report(results, profile, args.dataset, out, command, overwrite=args.overwrite)
    print(f"wrote {js} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
