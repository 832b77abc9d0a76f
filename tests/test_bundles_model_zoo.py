"""The MONAI model zoo's CI steps on every bundle, in a tree without any dataset.

What the model zoo runs on a submitted bundle (Project-MONAI/model-zoo ``ci/verify_bundle.py``, ``verify(bundle,
mode="full")``), replicated step by step:

1. ``verify_bundle_directory``: ``configs/metadata.json`` and ``LICENSE`` must exist, and the preferred
   ``models/model.pt`` and ``configs/inference.json``. These bundles ship no weights, so the state dict of the
   bundle's own ``network_def`` is saved as ``models/model.pt`` first, as the model zoo's ``_produce_fake_weights``
   does;
2. ``verify_version_changes``: ``version`` and ``changelog`` in the metadata, the version listed in the changelog;
3. ``verify_metadata_format``: ``monai.bundle.verify_metadata`` against the metadata schema, offline here (the
   schema the metadata names, shipped in ``bundles/schema/``; identical to ``../shared/reference/`` when present);
4. ``verify_bundle_properties``: ``create_workflow(workflow_type="inference", bundle_root=..., config_file=
   inference.json, logging_file=..., meta_file=...)`` then ``check_properties()`` must list nothing (MONAI's own
   ``InferProperties`` and ``MetaProperties``; the model zoo swaps in the supported apps' property tables);
5. ``verify_data_shape``: ``monai.bundle.verify_net_in_out(net_id="network_def", ...)`` at the metadata's shapes;
6. ``verify_torchscript``: ``monai.bundle.ckpt_export`` into ``models/verify_model.ts``, then ``torch.jit.load``.
   The model zoo lists bundles that TorchScript cannot compile in ``exclude_verify_torchscript_list`` (SwinUNETR
   among them); this project's SwinUNETR and U-Net++ bundles are exported by tracing instead, as their README
   documents (``--use_trace True --input_shape ...``), here without ``torch.jit.trace``'s ``check_trace`` re-runs
   (two more forward passes at the full shape): traced and eager outputs are compared in
   ``tests/test_bundles_run.py``.

No step may need the dataset: a clinician's pipeline that loads an inference config has no training data. Reading
the test set happens only when inference runs without ``--input_dir`` (tested at the end).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
SCHEMA = BUNDLES / "schema" / "meta_schema_20240725.json"
REFERENCE_SCHEMA = REPO.parent / "shared" / "reference" / "meta_schema_20240725.json"
MATRIX = yaml.safe_load((BUNDLES / "matrix.yaml").read_text())
NAMES = [f"{row['dataset']}_{row['backbone']}" for row in MATRIX["bundles"]]
EXPORT = {f"{r['dataset']}_{r['backbone']}": MATRIX["backbones"][r["backbone"]].get("export", "script")
          for r in MATRIX["bundles"]}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _keep_logging():
    """The workflow applies the bundle's logging.conf (a stdout handler on the root logger): undo it afterwards."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def _copy_without_data(name: str, tmp_path: Path) -> Path:
    """``<tmp>/models/<name>`` as in the model zoo's checkout: no ``data/`` anywhere above it."""
    bundle = tmp_path / "models" / name
    shutil.copytree(BUNDLES / name, bundle, ignore=shutil.ignore_patterns("models", "eval", "logs"))
    return bundle


def test_the_shipped_schema_is_the_reference_one():
    meta = json.loads((BUNDLES / "synthetic2d_unet" / "configs" / "metadata.json").read_text())
    assert meta["schema"].endswith("/" + SCHEMA.name)
    if not REFERENCE_SCHEMA.is_file():
        pytest.skip(f"no reference copy at {REFERENCE_SCHEMA}")
    assert SCHEMA.read_bytes() == REFERENCE_SCHEMA.read_bytes()


@pytest.mark.parametrize("name", NAMES)
def test_model_zoo_ci_steps_without_a_dataset(name, tmp_path):
    from monai.bundle import ConfigParser, ckpt_export, create_workflow, verify_metadata, verify_net_in_out

    from dale_monai.bundle import DeferredList

    bundle = _copy_without_data(name, tmp_path)
    configs = bundle / "configs"
    meta_file, config_file = str(configs / "metadata.json"), str(configs / "inference.json")
    # _produce_fake_weights
    parser = ConfigParser()
    parser.read_config(config_file)
    parser.read_meta(meta_file)
    parser["bundle_root"] = str(bundle)
    assert not Path(parser.get_parsed_content("dataset_dir")).exists()  # really no dataset
    (bundle / "models").mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")

    # 1. verify_bundle_directory, 2. verify_version_changes
    for rel in ("configs/metadata.json", "LICENSE", "models/model.pt", "configs/inference.json"):
        assert (bundle / rel).is_file(), rel
    metadata = json.loads((configs / "metadata.json").read_text())
    assert metadata["version"] in metadata["changelog"]

    # 3. verify_metadata_format
    verify_metadata(meta_file=meta_file, filepath=str(SCHEMA))

    # 4. verify_bundle_properties
    workflow = create_workflow(workflow_type="inference", bundle_root=str(bundle), config_file=config_file,
                               logging_file=str(configs / "logging.conf"), meta_file=meta_file)
    assert workflow.check_properties() == []
    # the properties were built, the dataset was not read
    assert isinstance(workflow.dataset.data, DeferredList) and not workflow.dataset.data.resolved
    assert workflow.evaluator.state.epoch_length is None  # left to the run, which lists the inputs

    # 5. verify_data_shape
    verify_net_in_out(net_id="network_def", meta_file=meta_file, config_file=config_file, bundle_root=str(bundle))

    # 6. verify_torchscript
    fmt = metadata["network_data_format"]["inputs"]["image"]
    shape = [1, fmt["num_channels"], *fmt["spatial_shape"]]
    trace = ({"use_trace": True, "input_shape": shape, "converter_kwargs": {"check_trace": False}}
             if EXPORT[name] == "trace" else {})
    exported = bundle / "models" / "verify_model.ts"
    ckpt_export(net_id="network_def", filepath=str(exported), ckpt_file=str(bundle / "models" / "model.pt"),
                meta_file=meta_file, config_file=config_file, bundle_root=str(bundle), **trace)
    assert isinstance(torch.jit.load(str(exported)), torch.jit.ScriptModule)


@pytest.mark.parametrize("name", ["synthetic2d_unet", "synthetic3d_unet", "synapse_unet"])
def test_inference_without_input_dir_reports_the_missing_dataset_when_it_runs(name, tmp_path):
    """The dataset is needed only by a run that predicts its test set: the error comes then, with the command."""
    from monai.bundle import ConfigWorkflow

    from dale_monai.bundle import DatasetNotFoundError

    bundle = _copy_without_data(name, tmp_path)
    config_file = str(bundle / "configs" / "inference.json")
    workflow = ConfigWorkflow(config_file=config_file, workflow_type="inference", bundle_root=str(bundle),
                              device="$torch.device('cpu')")
    workflow.initialize()
    assert workflow.check_properties() == []
    (bundle / "models").mkdir()
    torch.save(workflow.network_def.state_dict(), bundle / "models" / "model.pt")
    with pytest.raises(Exception) as err:
        workflow.run()
    cause = err.value
    while cause is not None and not isinstance(cause, DatasetNotFoundError):
        cause = cause.__cause__
    assert cause is not None, repr(err.value)
    converter = MATRIX["datasets"][name.rsplit("_", 1)[0]]["prepare"].split()[3]
    assert f"python -m data_prep {converter}" in str(cause)
    assert "--dataset_dir" in str(cause)
