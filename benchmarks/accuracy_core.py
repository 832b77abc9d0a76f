"""Data, training and evaluation of one accuracy-benchmark run (used by ``benchmarks/accuracy.py``).

A *run* is one (dataset, paradigm, variant, seed) training of the profile's network for the profile's
epochs, followed by an evaluation on the dataset's test section of the **final** weights and of the weights at
the **best validation Dice** (the validation section selects; the test set tunes nothing). Both sets of
weights are kept, so any other test datalist can score the same runs later without retraining. Standard and DALE runs of the same seed share the network
initialisation, the data order and the augmentations (the partition transform consumes no random
numbers), which makes them pairs for the paired t-test.

Every run is stored in a cache folder under a key hashed from its full configuration, so that the
protocols that share runs (protocol 3 reuses protocol 2's clean PH2 runs, protocols 4 and 5 reuse
protocol 1's) train each only once; ``--no-cache`` in ``accuracy.py`` retrains.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import inspect
import json
import math
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO))
if str(REPO / "benchmarks") not in sys.path:  # accuracy_paradigms.py beside this file
    sys.path.insert(0, str(REPO / "benchmarks"))

from ignite.engine import Events  # noqa: E402
from monai.data import DataLoader, Dataset, load_decathlon_datalist  # noqa: E402
from monai.engines import SupervisedTrainer  # noqa: E402
from monai.networks.nets import UNet  # noqa: E402
from monai.transforms import Compose, RandFlipd, RandRotate90d  # noqa: E402
from monai.utils import set_determinism  # noqa: E402
from PIL import Image  # noqa: E402

from dale_monai.engines import DALETrainer  # noqa: E402
from dale_monai.engines.dale_events import DALEKeys  # noqa: E402
from dale_monai.handlers import WassersteinAlignment  # noqa: E402
from dale_monai.losses import DALELoss  # noqa: E402
from dale_monai.meta import OmegaMetaStep  # noqa: E402
from dale_monai.metrics import case_metrics, dice  # noqa: E402
from dale_monai.transforms import FuzzyPartition, FuzzyPartitiond  # noqa: E402

# the profiles live outside the hashed core: a run depends on its profile's fields, which its key holds
# (profile_fields), not on the other profiles defined beside it
from accuracy_profiles import PROFILES, NoiseLevel, Profile, dataset_kind  # noqa: E402,F401

__all__ = [
    "Profile",
    "PROFILES",
    "NoiseLevel",
    "RunConfig",
    "DataMissing",
    "data_dir",
    "dataset_kind",
    "LABELED_FRACTIONS",
    "profile_fields",
    "prepare_dataset",
    "load_split",
    "run_cached",
    "Paradigm",
    "PARADIGMS",
    "register_paradigm",
    "paradigm",
    "code_version",
    "CORE_FILES",
    "evaluate",
    "score_external",
    "METRICS",
    "DALE_STATS",
]

#: per-run test metrics (means over the test cases)
METRICS = ("dice", "miou", "hd95", "asd", "fuzzy_dice")
#: DALE diagnostics, means over the iterations of a run (see :class:`_DALEStats`)
DALE_STATS = (
    "fuzzy_fraction",
    "omega_mean",
    "omega_abs_dev",
    "omega_frac_below_1",
    "omega_frac_small_grad",
    "loss_w",
    "noisy_in_fuzzy",
    "mask_f_noisy",
    "mask_f_clean",
    "omega_below1_noisy",
    "omega_below1_clean",
    "omega_mean_noisy",
    "omega_mean_clean",
)


class DataMissing(RuntimeError):
    """A real dataset the protocol needs is not where ``DALE_DATA_DIR`` says."""


@dataclass(frozen=True)
class RunConfig:
    """Everything one run depends on (hashed into its cache key).

    Args:
        dataset: prepared dataset name (``covid_pseudo``, ``covid_both``, ``covid_doctor``, ``ph2``,
            ``ph2_<noise>``, and for protocol 6 ``covid_semi``, ``ph2_l10``, ``ph2_l25``).
        paradigm: a registered paradigm (:data:`PARADIGMS`): ``"standard"`` (MONAI ``SupervisedTrainer``),
            ``"dale"`` (``DALETrainer``) or one of ``accuracy_paradigms.py`` (``gce``, ``sce``, ``coteaching``,
            ``trinet``).
        omega: ``None`` (ω = 1, the ablation without ω) or the ``OmegaMetaStep`` reduction.
        wasserstein: attach ``WassersteinAlignment`` (α = 0.05).
        use_entropy, use_edges, entropy: partition options (ablation).
        mask_mode, mask_inputs: ``DALETrainer`` options (how the partition masks enter the two steps).
        partition_opts: JSON object of further ``FuzzyPartitiond`` options (e.g. ``{"mode": "band",
            "band_width": 4}``); empty for the defaults.
        omega_opts: JSON object of further ``OmegaMetaStep`` options (e.g. ``{"method": "first_order"}``);
            empty for the defaults (``method="jvp"``).
        alpha: weight α of L_W when ``wasserstein`` is set.
        seed: seed of initialisation, data order and augmentation.
        profile: the profile name (for the record).
        profile_fields: :func:`profile_fields` of the profile for this dataset (the key depends on it).
    """

    dataset: str
    paradigm: str
    seed: int
    profile: str
    profile_fields: str
    omega: str | None = "mean"
    wasserstein: bool = True
    use_entropy: bool = True
    use_edges: bool = True
    entropy: str = "paper"
    mask_mode: str = "paper"
    mask_inputs: bool = True
    partition_opts: str = ""
    omega_opts: str = ""
    alpha: float = 0.05

    def key(self) -> str:
        # the code version is part of the key: a cached run never stands for a result of other code
        text = json.dumps(dataclasses.asdict(self), sort_keys=True) + code_version(self.paradigm)
        return hashlib.sha1(text.encode()).hexdigest()[:16]


#: the sources every run's result depends on (data, network, loss, training loop, evaluation): a change in any
#: of them gives every run a new cache key
CORE_FILES = ("dale_monai/partition.py", "dale_monai/transforms.py", "dale_monai/losses.py", "dale_monai/metrics.py",
              "benchmarks/accuracy_core.py")


@dataclass(frozen=True)
class Paradigm:
    """How a benchmark arm's paradigm builds its trainer, and the sources its runs depend on besides the core.

    Args:
        build: ``build(cfg, common, extras) -> (trainer, stats)``: the Ignite trainer for the run and an optional
            diagnostics handler with ``means()`` (or None). ``common`` holds the keyword arguments every MONAI
            trainer takes (device, max_epochs, train_data_loader, network, optimizer, loss_function,
            ``decollate=False``); ``extras`` holds ``make_network`` (a fresh, freshly initialised network of the
            profile on the device, for paradigms that train several), ``lr`` (the profile's Adam rate),
            ``profile`` (the :class:`Profile`), ``meta_loader`` (a function returning a loader of
            :func:`meta_split`'s clean cases, batches of the profile's size, no augmentation) and, for
            ``unlabeled`` paradigms, ``unlabeled_loader``.
        files: repository paths of the library sources the paradigm uses beyond :data:`CORE_FILES`.
        partition: the training pipeline ends with ``FuzzyPartitiond`` (the run's partition options).
        unlabeled: the paradigm is semi-supervised: it trains on the dataset's ``unlabeled`` section too, and
            ``extras["unlabeled_loader"]`` holds a loader of those images (the training flips and rotations, the
            profile's batch size, shuffled, last partial batch dropped), built after the labelled loader and the
            network so that a paradigm's labelled data order and initialisation stay those of ``standard``.
    """

    build: Callable[[Any, dict, dict], tuple[Any, Any]]
    files: tuple[str, ...] = ()
    partition: bool = False
    unlabeled: bool = False


#: registered paradigms; ``standard`` and ``dale`` here, the others in ``accuracy_paradigms.py``
PARADIGMS: dict[str, Paradigm] = {}


def register_paradigm(name: str, files: Sequence[str] = (), partition: bool = False, unlabeled: bool = False):
    """Decorator registering ``build`` as the paradigm ``name`` (see :class:`Paradigm`)."""

    def deco(build):
        if name in PARADIGMS:
            raise ValueError(f"paradigm {name!r} is registered twice")
        PARADIGMS[name] = Paradigm(build, tuple(files), partition, unlabeled)
        return build

    return deco


def paradigm(name: str) -> Paradigm:
    """The registered paradigm ``name`` (loading ``accuracy_paradigms.py`` for those outside the core)."""
    if name not in PARADIGMS:
        import accuracy_paradigms  # noqa: F401  (registers the other paradigms)
    if name not in PARADIGMS:
        raise ValueError(f"unknown paradigm {name!r}; registered: {sorted(PARADIGMS)}")
    return PARADIGMS[name]


def code_version(paradigm_name: str | None = None) -> str:
    """SHA-1 (12 hex digits) of the sources a run depends on: :data:`CORE_FILES`, and for a paradigm its own
    library files and the source of its build function. A change in the core retrains every run; a change in one
    paradigm's code (or a new paradigm) leaves the cached runs of the others valid."""
    h = hashlib.sha1()
    files = list(CORE_FILES)
    if paradigm_name is not None:
        par = paradigm(paradigm_name)
        files += [f for f in par.files if f not in files]
    for path in (REPO / f for f in files):
        h.update(path.relative_to(REPO).as_posix().encode())
        h.update(_code_text(path.read_text()).encode())
    if paradigm_name is not None:
        h.update(_code_text(textwrap.dedent(inspect.getsource(paradigm(paradigm_name).build))).encode())
    return h.hexdigest()[:12]


def _code_text(source: str) -> str:
    """The code of a Python source without its docstrings and comments (``ast.dump``), so that editing the
    documentation does not retrain cached runs."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(
                    first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False)


def profile_fields(profile: Profile, dataset: str) -> str:
    """The profile's fields one run of ``dataset`` depends on, as JSON (part of the run's cache key)."""
    d = dataclasses.asdict(profile)
    for k in ("seeds", "noise_levels", "name", "epochs_scale"):  # none of these changes a single run but by epochs
        d.pop(k)
    d["epochs"] = profile.epochs_for(dataset)
    return json.dumps(d, sort_keys=True, default=str)


# ---------------------------------------------------------------------------------------------- data


def data_dir(override: str | os.PathLike | None = None) -> Path:
    """The real-data folder: ``override``, else ``$DALE_DATA_DIR``, else ``<repo>/../shared/data``."""
    if override is not None:
        return Path(override)
    return Path(os.environ.get("DALE_DATA_DIR", REPO.parent / "shared" / "data"))


def _data_prep(args: Sequence[str]) -> None:
    cmd = [sys.executable, "-m", "data_prep", *map(str, args)]
    print("+", " ".join(cmd), flush=True)
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"data_prep failed ({' '.join(cmd)}):\n{res.stdout}\n{res.stderr}")


def prepare_dataset(name: str, src_root: Path, work: Path, noise: NoiseLevel | None = None) -> Path:
    """Convert (once) a dataset with ``python -m data_prep`` into ``work/<name>``; return its datalist path.

    Args:
        name: ``covid_pseudo`` (train on the 1,600 pseudo-labels, validate on the 50 doctor-labelled slices,
            test on the radiologists' test masks), ``covid_both`` (train on the pseudo-labels and 40 of the
            doctor-labelled slices, validate on the other 10, same test), ``covid_doctor`` (train/validate on
            the same 40/10 split of the doctor-labelled slices, same test), ``covid_semi`` (``covid_doctor``'s
            sections plus the 1,600 pseudo-labelled images without their masks as ``unlabeled``: ``--unlabeled
            pseudo``), ``ph2`` (fixed seed-0 70/10/20 split), ``ph2_l10``/``ph2_l25`` (the same split with 10 % /
            25 % of the training labels kept, the other training images ``unlabeled``: ``--labeled-fraction``) or
            a PH2 noise level.
        src_root: the real-data folder (holding ``covid_semiseg/`` and ``ph2/``).
        work: folder of the converted data (gitignored; never inside the repository's tracked tree).
        noise: for a noisy PH2 copy, the level.

    Raises:
        DataMissing: when the source dataset folder is absent.
    """
    out = work / name
    datalist = out / "datalist.json"
    if datalist.is_file():
        return datalist
    if name.startswith("covid"):
        src = src_root / "covid_semiseg"
        if not src.is_dir():
            raise DataMissing(f"COVID-SemiSeg not found at {src} (set DALE_DATA_DIR or --data-dir)")
        if name == "covid_semi":
            _data_prep(["covid_semiseg", "--src", src, "--out", out, "--unlabeled", "pseudo", "--seed", 0])
            return datalist
        labels = {"covid_pseudo": "pseudo", "covid_both": "both", "covid_doctor": "doctor"}.get(name)
        if labels is None:
            raise ValueError(f"unknown benchmark dataset {name!r}")
        _data_prep(["covid_semiseg", "--src", src, "--out", out, "--train-labels", labels, "--seed", 0])
    elif name == "ph2" or name in LABELED_FRACTIONS:
        src = src_root / "ph2"
        if not src.is_dir():
            raise DataMissing(f"PH2 not found at {src} (set DALE_DATA_DIR or --data-dir)")
        fraction = ["--labeled-fraction", LABELED_FRACTIONS[name]] if name in LABELED_FRACTIONS else []
        _data_prep(["ph2", "--src", src, "--out", out, "--seed", 0, *fraction])
    elif noise is not None:
        clean = prepare_dataset("ph2", src_root, work)
        _data_prep(["noise", "--datalist", clean, "--out", out, "--protocol", noise.protocol, "--k", noise.k,
                    "--seed", 0])
    else:
        raise ValueError(f"unknown benchmark dataset {name!r}")
    return datalist


#: the semi-supervised PH2 datasets of protocol 6 and the share of the training labels each keeps
LABELED_FRACTIONS = {"ph2_l10": 0.1, "ph2_l25": 0.25}


def _read_image(path: str, size: int) -> np.ndarray:
    """(C, size, size) float32: grayscale or RGB, min-max scaled to [0, 1], resized bilinear (antialiased)."""
    arr = np.asarray(Image.open(path))
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = np.moveaxis(arr[..., :3], -1, 0)
    t = torch.as_tensor(arr.astype(np.float32))
    lo, hi = float(t.min()), float(t.max())
    t = (t - lo) / (hi - lo) if hi > lo else torch.zeros_like(t)
    t = F.interpolate(t[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    return t.clamp_(0, 1).numpy()


def _read_label(path: str, size: int) -> np.ndarray:
    """(1, size, size) float32 in {0, 1}: any non-zero value is foreground, resized nearest."""
    arr = np.asarray(Image.open(path))
    if arr.ndim == 3:
        arr = arr[..., 0]
    t = torch.as_tensor((arr > 0).astype(np.float32))[None, None]
    return F.interpolate(t, size=(size, size), mode="nearest")[0].numpy()


def load_split(datalist: Path, section: str, size: int, subset: int | None = None) -> list[dict]:
    """Load a datalist section into memory at the benchmark resolution.

    Args:
        datalist: the MONAI datalist JSON.
        section: ``training``, ``validation``, ``test`` or ``unlabeled``.
        size: side of the square benchmark resolution.
        subset: keep this many of the entries under a ``pseudo`` folder (drawn with seed 0), and all others.

    Returns:
        dicts with ``image`` (C, S, S), ``label`` (1, S, S; absent for entries without one, as in ``unlabeled``),
        ``name``, ``trusted`` (False for the entries under a ``pseudo`` folder: model-generated labels) and
        ``label_clean`` when the entry has one (injected-noise training sets keep the clean label there).
    """
    entries = load_decathlon_datalist(str(datalist), data_list_key=section)
    pool = [i for i, e in enumerate(entries) if "pseudo" in Path(e["image"]).parts]
    if subset is not None and subset < len(pool):  # draw among the pseudo-labelled slices only
        keep = set(np.random.default_rng(0).choice(pool, subset, replace=False).tolist())
        entries = [e for i, e in enumerate(entries) if i in keep or i not in set(pool)]
    items = []
    for e in entries:
        item = {"image": _read_image(e["image"], size), "name": Path(e["image"]).stem,
                "trusted": "pseudo" not in Path(e["image"]).parts}
        if "label" in e:
            item["label"] = _read_label(e["label"], size)
        if "label_clean" in e:
            item["label_clean"] = _read_label(e["label_clean"], size)
        items.append(item)
    return items


def meta_split(train: list[dict], n: int, seed: int = 0) -> list[dict]:
    """The clean meta set of a training set: ``n`` of its trusted cases (drawn with ``seed``), with their clean
    reference label where the set has one (injected noise) and their own label otherwise.

    The profiles use ``n`` = 10 (``Profile.meta_size``): about 12 % of PH2's 84 training cases and a quarter of
    COVID's 40 radiologist-labelled training slices (MW-Net's CIFAR experiments used 1,000 clean images, 2 %).

    The cases stay in the training set with their training labels, so every arm trains on the same data and the
    meta re-weighting arms get only the extra knowledge the method needs: which few labels are clean.

    Raises:
        ValueError: when the training set has fewer than ``n`` trusted cases (e.g. ``covid_pseudo``: only
            model-generated labels).
    """
    pool = [i for i, it in enumerate(train) if it.get("trusted", True) or "label_clean" in it]
    if len(pool) < n:
        raise ValueError(f"the meta re-weighting arms need {n} trusted training cases; this training set has "
                         f"{len(pool)} (model-generated labels are not trusted)")
    pick = sorted(np.random.default_rng(seed).choice(pool, n, replace=False).tolist())
    return [{"image": train[i]["image"], "label": train[i].get("label_clean", train[i]["label"]),
             "name": train[i]["name"]} for i in pick]


# ---------------------------------------------------------------------------------------------- training


def _network(profile: Profile, in_channels: int) -> torch.nn.Module:
    return UNet(2, in_channels, 1, channels=profile.channels, strides=profile.strides,
                num_res_units=profile.res_units, norm=profile.norm)


def _train_transform(cfg: RunConfig, profile: Profile, keys: tuple[str, ...]) -> Compose:
    xs = [RandFlipd(keys, prob=0.5, spatial_axis=0), RandFlipd(keys, prob=0.5, spatial_axis=1),
          RandRotate90d(keys, prob=0.5, spatial_axes=(0, 1))]
    if paradigm(cfg.paradigm).partition:
        xs.append(FuzzyPartitiond(("image", "label"), patch_size=profile.patch, tau=0.9, entropy=cfg.entropy,
                                  use_entropy=cfg.use_entropy, use_edges=cfg.use_edges,
                                  **json.loads(cfg.partition_opts or "{}")))
    return Compose(xs)


@torch.no_grad()
def _predict(net: torch.nn.Module, items: list[dict], device: torch.device, chunk: int = 16) -> np.ndarray:
    """Binary predictions (N, S, S) uint8 of the network in eval mode."""
    net.eval()
    out = []
    for i in range(0, len(items), chunk):
        x = torch.as_tensor(np.stack([it["image"] for it in items[i:i + chunk]])).to(device)
        out.append((net(x)[:, 0] > 0).to(torch.uint8).cpu().numpy())
    net.train()
    return np.concatenate(out) if out else np.zeros((0,), np.uint8)


class _Curve:
    """Validation Dice every ``every`` iterations, against iterations, training wall time and training CPU time
    (validation time excluded from both clocks), and a copy of the weights at the best validation Dice
    (the first point that reaches it; the validation set only ever selects, the test set never does)."""

    def __init__(self, net, val_items: list[dict], device, every: int) -> None:
        self.net, self.val, self.device, self.every = net, val_items, device, max(1, every)
        self.points: list[dict] = []
        self.wall = self.cpu = 0.0
        self._t0 = self._c0 = None
        self.best_dice, self.best_iteration, self.best_state = -math.inf, 0, None

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._stop)

    def _start(self, engine) -> None:
        self._t0, self._c0 = time.perf_counter(), time.process_time()

    def _stop(self, engine) -> None:
        self.wall += time.perf_counter() - self._t0
        self.cpu += time.process_time() - self._c0
        it = engine.state.iteration
        if self.val and (it % self.every == 0 or it == engine.state.max_epochs * engine.state.epoch_length):
            pred = _predict(self.net, self.val, self.device)
            d = float(np.mean([dice(p, v["label"][0] > 0) for p, v in zip(pred, self.val)]))
            self.points.append({"iteration": it, "wall_s": self.wall, "cpu_s": self.cpu, "val_dice": d})
            if d > self.best_dice:
                self.best_dice, self.best_iteration = d, it
                self.best_state = {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}


class _DALEStats:
    """Per-iteration DALE diagnostics, averaged over the run, and a snapshot of the last batch.

    ``omega_*`` are over the fuzzy pixels (M^f ≥ 0.9, the fuzzy patches); ``omega_abs_dev`` is mean |ω* − 1|
    there (how much the meta step re-weights at all). With a clean reference label in the batch (injected
    noise), pixels whose training label differs from it are "noisy": ``noisy_in_fuzzy`` is the share of them
    that the partition puts in the fuzzy patches, ``mask_f_noisy`` / ``mask_f_clean`` the mean soft M^f of noisy
    / clean pixels, ``omega_below1_noisy`` / ``_clean`` the share of fuzzy noisy /
    clean pixels that got ω* < 1 (DALE should down-weight the noisy ones), ``omega_mean_noisy`` / ``_clean``
    their mean ω*.
    """

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.snapshot: dict[str, np.ndarray] = {}

    def _add(self, key: str, value: float) -> None:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return
        self.sums[key] = self.sums.get(key, 0.0) + float(value)
        self.counts[key] = self.counts.get(key, 0) + 1

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine) -> None:
        out, batch = engine.state.output, engine.state.batch
        omega = out[DALEKeys.OMEGA].detach().float().cpu()
        mask_f = out[DALEKeys.MASK_F].detach().float().cpu()
        fuzzy = mask_f >= 0.9
        self._add("fuzzy_fraction", out[DALEKeys.FUZZY_FRACTION])
        self._add("omega_frac_small_grad", out.get(DALEKeys.OMEGA_SMALL_GRAD))
        if DALEKeys.LOSS_W in out:
            self._add("loss_w", float(out[DALEKeys.LOSS_W]))
        if fuzzy.any():
            w = omega[fuzzy]
            self._add("omega_mean", float(w.mean()))
            self._add("omega_abs_dev", float((w - 1).abs().mean()))
            self._add("omega_frac_below_1", float((w < 1).float().mean()))
        label = out["label"].detach().float().cpu()
        if "label_clean" in batch:
            clean = torch.as_tensor(batch["label_clean"]).float()
            noisy = (label > 0.5) != (clean > 0.5)
            if noisy.any():
                self._add("noisy_in_fuzzy", float((noisy & fuzzy).sum() / noisy.sum()))
                self._add("mask_f_noisy", float(mask_f[noisy].mean()))
            if (~noisy).any():
                self._add("mask_f_clean", float(mask_f[~noisy].mean()))
            for name, sel in (("noisy", noisy & fuzzy), ("clean", ~noisy & fuzzy)):
                if sel.any():
                    self._add(f"omega_below1_{name}", float((omega[sel] < 1).float().mean()))
                    self._add(f"omega_mean_{name}", float(omega[sel].mean()))
        if engine.state.iteration == engine.state.max_epochs * engine.state.epoch_length:
            n = min(4, omega.shape[0])
            self.snapshot = {"image": out["image"][:n].detach().cpu().numpy(), "label": label[:n].numpy(),
                             "mask_f": mask_f[:n].numpy(), "omega": omega[:n].numpy()}
            if "label_clean" in batch:
                self.snapshot["label_clean"] = torch.as_tensor(batch["label_clean"])[:n].float().numpy()

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums}


def evaluate(net: torch.nn.Module, test: list[dict], profile: Profile,
             device: torch.device | str = "cpu") -> tuple[dict[str, float], list[dict], np.ndarray]:
    """Score a network on test items (from :func:`load_split`) at the profile's resolution.

    Returns:
        the means over the cases of :data:`METRICS`, the per-case rows and the binary predictions (N, S, S).
    """
    pred = _predict(net, test, torch.device(device))
    part = FuzzyPartition(patch_size=profile.patch, tau=0.9)
    rows = []
    for p, it in zip(pred, test):
        mask_f = part(it["image"], it["label"])[1][0]
        row = case_metrics(p, (it["label"][0] > 0).astype(np.uint8), fuzzy_mask=mask_f)
        rows.append({"case": it["name"], **row})
    metrics = {m: float(np.nanmean([r[m] for r in rows])) if rows else math.nan for m in METRICS}
    return metrics, rows, pred


@register_paradigm("standard")
def _build_standard(cfg: RunConfig, common: dict, extras: dict) -> tuple[Any, None]:
    """MONAI's ``SupervisedTrainer``: the baseline every arm is compared with."""
    return SupervisedTrainer(**common), None


@register_paradigm("dale", files=("dale_monai/meta.py", "dale_monai/wasserstein.py", "dale_monai/feature_layers.py",
                                  "dale_monai/engines/dale.py", "dale_monai/engines/dale_events.py",
                                  "dale_monai/handlers/wasserstein.py"), partition=True)
def _build_dale(cfg: RunConfig, common: dict, extras: dict) -> tuple[Any, "_DALEStats"]:
    """``DALETrainer`` with the run's ω options, mask handling and (optionally) ``WassersteinAlignment``."""
    omega_kw = {"method": "jvp", **json.loads(cfg.omega_opts or "{}")}
    omega = None if cfg.omega is None else OmegaMetaStep(reduction=cfg.omega, **omega_kw)
    trainer = DALETrainer(**common, omega_step=omega, mask_mode=cfg.mask_mode, mask_inputs=cfg.mask_inputs)
    if cfg.wasserstein:
        WassersteinAlignment(alpha=cfg.alpha, seed=cfg.seed).attach(trainer)
    stats = _DALEStats()
    stats.attach(trainer)
    return trainer, stats


def train_and_evaluate(cfg: RunConfig, profile: Profile, train: list[dict], val: list[dict],
                       test: list[dict], unlabeled: list[dict] | None = None
                       ) -> tuple[dict, dict[str, np.ndarray], dict[str, Any]]:
    """Train one run and score its final and its best-validation weights on ``test``.

    ``unlabeled`` (items without labels) feeds the paradigms registered with ``unlabeled=True``; the others
    ignore it.

    Raises:
        ValueError: a semi-supervised paradigm without unlabelled items.

    Returns:
        the run record (config, metrics of the final weights, ``metrics_best`` of the weights at the best
        validation Dice, per-case rows, curve, DALE diagnostics, timings), arrays (test predictions, partition
        snapshot) for the figures, and the weights (``final``, ``best`` state dicts).
    """
    if profile.threads:
        torch.set_num_threads(profile.threads)
    device = torch.device(profile.device)
    set_determinism(cfg.seed)
    torch.manual_seed(cfg.seed)
    in_channels = int(train[0]["image"].shape[0])
    net = _network(profile, in_channels).to(device)
    keys = ("image", "label", "label_clean") if "label_clean" in train[0] else ("image", "label")
    data = [{k: torch.as_tensor(it[k]) for k in keys} for it in train]
    loader = DataLoader(Dataset(data, transform=_train_transform(cfg, profile, keys)), batch_size=profile.batch,
                        shuffle=True, num_workers=0, drop_last=True)
    epochs = profile.epochs_for(cfg.dataset)
    opt = torch.optim.Adam(net.parameters(), lr=profile.lr)
    loss = DALELoss(ce_weight=1.0, dice_weight=profile.dice_weight, batch=profile.dice_batch)
    common = dict(device=device, max_epochs=epochs, train_data_loader=loader, network=net, optimizer=opt,
                  loss_function=loss, decollate=False)
    def meta_loader() -> DataLoader:
        meta = [{k: torch.as_tensor(it[k]) for k in ("image", "label")} for it in meta_split(train, profile.meta_size)]
        return DataLoader(meta, batch_size=min(profile.batch, len(meta)), shuffle=True, num_workers=0)

    extras = {"make_network": lambda: _network(profile, in_channels).to(device), "lr": profile.lr,
              "profile": profile, "meta_loader": meta_loader}
    par = paradigm(cfg.paradigm)
    if par.unlabeled:
        if not unlabeled:
            raise ValueError(f"paradigm {cfg.paradigm!r} is semi-supervised and dataset {cfg.dataset!r} has no "
                             "unlabelled images (an 'unlabeled' datalist section: covid_semi, ph2_l10, ph2_l25)")
        images = [{"image": torch.as_tensor(it["image"])} for it in unlabeled]
        extras["unlabeled_loader"] = DataLoader(
            Dataset(images, transform=_train_transform(cfg, profile, ("image",))), batch_size=profile.batch,
            shuffle=True, num_workers=0, drop_last=len(images) >= profile.batch)
    trainer, stats = par.build(cfg, common, extras)
    iterations = epochs * len(loader)
    curve = _Curve(net, val, device, every=max(1, iterations // max(1, profile.val_points)))
    curve.attach(trainer)
    trainer.run()

    final_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    metrics, rows, pred = evaluate(net, test, profile, device)
    best_state = curve.best_state if curve.best_state is not None else final_state
    net.load_state_dict(best_state)
    metrics_best, rows_best, _ = evaluate(net, test, profile, device)
    record = {
        "key": cfg.key(),
        "code_version": code_version(cfg.paradigm),
        "config": dataclasses.asdict(cfg),
        "metrics": metrics,
        "metrics_best": metrics_best,
        "best_iteration": curve.best_iteration,
        "best_val_dice": curve.best_dice if curve.points else math.nan,
        "cases": rows,
        "cases_best": rows_best,
        "curve": curve.points,
        "dale_stats": stats.means() if stats is not None else {},
        "iterations": iterations,
        "epochs": epochs,
        "train_wall_s": curve.wall,
        "train_cpu_s": curve.cpu,
        "n_train": len(train),
        "n_unlabeled": len(unlabeled) if par.unlabeled and unlabeled else 0,
        "n_test": len(test),
        "in_channels": in_channels,
    }
    arrays = {"pred": pred}
    if stats is not None:
        arrays.update({f"snap_{k}": v for k, v in stats.snapshot.items()})
    return record, arrays, {"final": final_state, "best": best_state}


def score_external(record: dict, weights: dict[str, Any], profile: Profile, test: list[dict]) -> dict:
    """A cached run's record re-scored on another test set (``accuracy.py --test-datalist``).

    ``metrics``/``cases`` and ``metrics_best``/``cases_best`` are replaced by the scores of the final and the
    best-validation weights on ``test``; everything else (curve, timings, diagnostics) is the run's own.
    """
    net = _network(profile, int(record.get("in_channels", test[0]["image"].shape[0])))
    out = dict(record)
    for which, mkey, ckey in (("final", "metrics", "cases"), ("best", "metrics_best", "cases_best")):
        net.load_state_dict(weights[which])
        out[mkey], out[ckey], _ = evaluate(net, test, profile, profile.device)
    out["n_test"] = len(test)
    return out


def run_cached(cfg: RunConfig, profile: Profile, splits: dict[str, list[dict]], cache: Path,
               use_cache: bool = True) -> tuple[dict, dict[str, np.ndarray], dict[str, Any]]:
    """:func:`train_and_evaluate`, or its stored result when this exact configuration ran before.

    A run is stored as ``<key>.json`` (record), ``<key>.npz`` (arrays) and ``<key>.pt`` (final and
    best-validation weights), each written to a temporary name and renamed, the weights last, so a run killed
    while being stored is trained again rather than read half-written.
    """
    cache.mkdir(parents=True, exist_ok=True)
    js, npz, pt = cache / f"{cfg.key()}.json", cache / f"{cfg.key()}.npz", cache / f"{cfg.key()}.pt"
    if use_cache and js.is_file() and npz.is_file() and pt.is_file():
        with np.load(npz) as z:
            arrays = {k: z[k] for k in z.files}
        return json.loads(js.read_text()), arrays, torch.load(pt, weights_only=True)
    t0 = time.perf_counter()
    record, arrays, weights = train_and_evaluate(cfg, profile, splits["training"], splits["validation"],
                                                 splits["test"], splits.get("unlabeled"))
    record["total_s"] = time.perf_counter() - t0
    for path, write in ((npz, lambda f: np.savez_compressed(f, **arrays)),
                        (js, lambda f: f.write(json.dumps(record, indent=1, default=float).encode())),
                        (pt, lambda f: torch.save(weights, f))):
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    return record, arrays, weights
