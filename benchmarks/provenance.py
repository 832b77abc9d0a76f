"""Where a benchmark's numbers came from: the checked-out commit and whether the code differed from it.

Every benchmark writes the commit its results were measured at, and says so when the code differed from it.
Only changes to the code (:data:`CODE_PATHS`), tracked or new, count: the results being written
(``benchmarks/results``), the data, a symlinked virtual environment or editor files in the checkout are not the
code.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

__all__ = ["CODE_PATHS", "SOURCE_SUFFIXES", "git", "commit", "code_changed", "commit_label", "source_hash"]

REPO = Path(__file__).resolve().parents[1]

#: the folders whose content decides a benchmark's result (the library, the converters, the benchmarks, bundles)
CODE_PATHS: tuple[str, ...] = ("dale_monai", "data_prep", "benchmarks", "bundles", "scripts")
#: inside CODE_PATHS but written by the benchmarks themselves
_NOT_CODE: tuple[str, ...] = ("benchmarks/results",)
#: the files :func:`source_hash` reads: Python sources and the configurations bundles are made of
SOURCE_SUFFIXES: tuple[str, ...] = (".py", ".json", ".yaml", ".yml", ".conf")


def git(*args: str, repo: Path = REPO) -> str:
    """``git <args>`` in ``repo``; its stripped stdout, or ``""`` when git or the repository is missing."""
    try:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def commit(short: bool = False, repo: Path = REPO) -> str:
    """The checked-out commit (40 hex digits, or 7+ with ``short``), ``"unknown"`` outside a git checkout."""
    return git("rev-parse", *(["--short"] if short else []), "HEAD", repo=repo) or "unknown"


def code_changed(paths: tuple[str, ...] = CODE_PATHS, repo: Path = REPO) -> bool:
    """Whether files under ``paths`` differ from the commit: modified, staged, deleted or new (not ignored).

    Args:
        paths: folders or files relative to the repository root; ``benchmarks/results`` is always excluded.
        repo: the repository root.
    """
    excludes = [f":(exclude){p}" for p in _NOT_CODE]
    return bool(git("status", "--porcelain", "--", *paths, *excludes, repo=repo))


def commit_label(short: bool = False, paths: tuple[str, ...] = CODE_PATHS, repo: Path = REPO) -> str:
    """The commit as a report states it: ``"<sha>"``, or ``"<sha> (with uncommitted changes in <paths>)"`` (``paths``
    joined by ", ") when :func:`code_changed`."""
    sha = commit(short, repo)
    if sha != "unknown" and code_changed(paths, repo):
        return f"{sha} (with uncommitted changes in {', '.join(paths)})"
    return sha


def source_hash(paths: tuple[str, ...], repo: Path = REPO) -> str:
    """SHA-1 (12 hex digits) of the source files (:data:`SOURCE_SUFFIXES`) under ``paths``, names and contents.

    A cache keyed by it retrains when the code a run executes changes, committed or not, and only then: it reads the
    files themselves, so it needs no git and is the same in every checkout of the same code.

    Args:
        paths: folders or files relative to ``repo``; ``__pycache__`` folders are skipped.
        repo: the repository root.

    Raises:
        FileNotFoundError: a path does not exist under ``repo`` (a renamed folder must not hash as "no code").
    """
    h = hashlib.sha1()
    for rel in paths:
        root = repo / rel
        if not root.exists():
            raise FileNotFoundError(f"source_hash: {rel!r} does not exist under {repo}")
        files = [root] if root.is_file() else sorted(
            f for f in root.rglob("*") if f.is_file() and f.suffix in SOURCE_SUFFIXES and "__pycache__" not in f.parts)
        for f in files:
            h.update(f.relative_to(repo).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:12]
