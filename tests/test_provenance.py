"""benchmarks/provenance.py: the commit a report states, what counts as an uncommitted code change, and the hash
of the sources a cached run depends on."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import provenance  # noqa: E402


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository with one commit holding code and a results file, and the usual ignore rules."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    root = tmp_path / "checkout"
    (root / "dale_monai").mkdir(parents=True)
    (root / "benchmarks" / "results").mkdir(parents=True)
    (root / "dale_monai" / "x.py").write_text("x = 1\n")
    (root / "benchmarks" / "results" / "old.md").write_text("old\n")
    (root / ".gitignore").write_text(".venv/\n/data/\n")
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    return root


def test_clean_checkout_states_the_commit_alone(repo):
    sha = _git(repo, "rev-parse", "HEAD")
    assert provenance.commit(repo=repo) == sha
    assert provenance.commit(short=True, repo=repo) == _git(repo, "rev-parse", "--short", "HEAD")
    assert not provenance.code_changed(repo=repo)
    assert provenance.commit_label(repo=repo) == sha


@pytest.mark.parametrize("change", ["modified", "new_module", "deleted", "staged"])
def test_code_changes_are_stated(repo, change):
    code = repo / "dale_monai" / "x.py"
    if change == "modified":
        code.write_text("x = 2\n")
    elif change == "new_module":
        (repo / "dale_monai" / "y.py").write_text("y = 1\n")
    elif change == "deleted":
        code.unlink()
    else:
        code.write_text("x = 3\n")
        _git(repo, "add", "dale_monai/x.py")
    assert provenance.code_changed(repo=repo)
    label = provenance.commit_label(repo=repo)
    assert label.startswith(_git(repo, "rev-parse", "HEAD")) and "uncommitted changes in dale_monai" in label


@pytest.mark.parametrize("not_code", ["benchmarks/results/new/README.md", "benchmarks/results/old.md", ".venv",
                                      "data/x.npy", "notes.txt"])
def test_results_data_and_a_symlinked_venv_are_not_code(repo, not_code, tmp_path):
    path = repo / not_code
    path.parent.mkdir(parents=True, exist_ok=True)
    if not_code == ".venv":  # a symlink is not matched by the ".venv/" ignore rule
        (tmp_path / "venv").mkdir()
        path.symlink_to(tmp_path / "venv")
    else:
        path.write_text("written by a benchmark\n")
    assert not provenance.code_changed(repo=repo)
    assert provenance.commit_label(repo=repo) == _git(repo, "rev-parse", "HEAD")


def test_paths_restrict_what_counts(repo):
    (repo / "dale_monai" / "x.py").write_text("x = 2\n")
    assert not provenance.code_changed(("benchmarks/partition_noise.py",), repo=repo)
    assert provenance.code_changed(("dale_monai", "benchmarks/partition_noise.py"), repo=repo)


def test_outside_a_checkout_the_commit_is_unknown(tmp_path):
    assert provenance.git("rev-parse", "HEAD", repo=tmp_path) == ""
    assert provenance.commit(repo=tmp_path) == "unknown"
    assert provenance.commit_label(repo=tmp_path) == "unknown"


def _sources(root: Path) -> Path:
    for rel, text in {"lib/a.py": "a = 1\n", "lib/sub/b.py": "b = 2\n", "bundle/configs/train.json": "{}\n",
                      "bundle/docs/README.md": "docs\n", "other/c.py": "c = 3\n"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_source_hash_follows_the_code_under_its_paths_only(tmp_path):
    root = _sources(tmp_path)
    paths = ("lib", "bundle")
    before = provenance.source_hash(paths, repo=root)
    assert len(before) == 12 and provenance.source_hash(paths, repo=root) == before
    # outside the paths, documentation, bytecode: not the code
    (root / "other" / "c.py").write_text("c = 4\n")
    (root / "bundle" / "docs" / "README.md").write_text("new docs\n")
    (root / "lib" / "__pycache__").mkdir()
    (root / "lib" / "__pycache__" / "a.cpython-312.pyc").write_bytes(b"\x00")
    assert provenance.source_hash(paths, repo=root) == before
    # an edited module, a changed config, a new module, a renamed one: each is another code
    seen = {before}
    for change in (lambda: (root / "lib" / "a.py").write_text("a = 2\n"),
                   lambda: (root / "bundle" / "configs" / "train.json").write_text('{"lr": 1}\n'),
                   lambda: (root / "lib" / "sub" / "new.py").write_text("n = 0\n"),
                   lambda: (root / "lib" / "sub" / "new.py").rename(root / "lib" / "sub" / "renamed.py")):
        change()
        seen.add(provenance.source_hash(paths, repo=root))
    assert len(seen) == 5


def test_source_hash_is_the_same_in_another_checkout_and_refuses_a_missing_path(tmp_path):
    a, b = _sources(tmp_path / "a"), _sources(tmp_path / "b")
    assert provenance.source_hash(("lib", "bundle/configs/train.json"), repo=a) == \
        provenance.source_hash(("lib", "bundle/configs/train.json"), repo=b)
    with pytest.raises(FileNotFoundError, match="'gone'"):
        provenance.source_hash(("lib", "gone"), repo=a)
