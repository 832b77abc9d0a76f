from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """Real datasets: ``$DALE_DATA_DIR``, else ``../shared/data`` beside the repository."""
    return Path(os.environ.get("DALE_DATA_DIR", REPO.parent / "shared" / "data"))


@pytest.fixture
def data_dir() -> Path:
    return shared_data_dir()


@pytest.fixture
def real_dataset(data_dir):
    """Return a function giving the path of a real dataset, skipping the test when it is absent."""

    def _get(name: str) -> Path:
        path = data_dir / name
        if not path.is_dir():
            pytest.skip(f"real dataset {name!r} not found at {path} (set DALE_DATA_DIR to the folder holding it)")
        return path

    return _get


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a module: on a shared 2-core machine OpenMP's spinning threads slow tiny
    networks down many times."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
