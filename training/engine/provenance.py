"""What software made a run: toolkit version, git commit of its source, torch, numpy, Python.

Recorded in every run's ``config.json`` so that a result can be traced to the code that made it.
Nothing here may fail: a value that cannot be found is ``None``.
"""
from __future__ import annotations

import platform
import re
from pathlib import Path
from typing import Optional

PACKAGE = "lth-toolkit"
SOURCE_ROOT = Path(__file__).resolve().parent.parent  # the folder holding training/, analysis/, ...
_HEX40 = re.compile(r"^[0-9a-f]{40}$")


def toolkit_version() -> Optional[str]:
    """The installed version of ``lth-toolkit`` (``None`` when it is not installed, e.g. run from a
    plain checkout)."""
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover - Python < 3.8
        return None
    try:
        return version(PACKAGE)
    except (PackageNotFoundError, ValueError):
        return None


def _git_dir(root: Path) -> Optional[Path]:
    dot_git = root / ".git"
    if dot_git.is_dir():
        return dot_git
    if dot_git.is_file():  # a worktree or submodule: "gitdir: PATH"
        text = dot_git.read_text(errors="replace").strip()
        if text.startswith("gitdir:"):
            target = Path(text[len("gitdir:"):].strip())
            return target if target.is_absolute() else (root / target).resolve()
    return None


def git_commit(root: Path = SOURCE_ROOT) -> Optional[str]:
    """The commit checked out in the git repository at ``root`` (40 hex digits), read from
    ``.git/HEAD`` and the refs without running git; ``None`` when there is no repository or the
    files cannot be read. Uncommitted changes are not detected."""
    try:
        git = _git_dir(Path(root))
        if git is None:
            return None
        head = (git / "HEAD").read_text().strip()
        if _HEX40.match(head):  # detached HEAD
            return head
        if not head.startswith("ref:"):
            return None
        ref = head[len("ref:"):].strip()
        common = git
        if (git / "commondir").is_file():  # worktrees keep branch refs in the main repository
            common = (git / (git / "commondir").read_text().strip()).resolve()
        for folder in (git, common):
            loose = folder / ref
            if loose.is_file():
                value = loose.read_text().strip()
                return value if _HEX40.match(value) else None
        for folder in (git, common):
            packed = folder / "packed-refs"
            if packed.is_file():
                for line in packed.read_text().splitlines():
                    parts = line.split()
                    if len(parts) == 2 and parts[1] == ref and _HEX40.match(parts[0]):
                        return parts[0]
    except (OSError, UnicodeDecodeError):
        return None
    return None


def _module_version(name: str) -> Optional[str]:
    try:
        module = __import__(name)
    except ImportError:
        return None
    value = getattr(module, "__version__", None)
    return None if value is None else str(value)  # torch's is a str subclass


def provenance() -> dict:
    """``{"toolkit", "git_commit", "torch", "numpy", "python"}``: version strings (``None`` when
    unknown) of the software running now."""
    return {
        "toolkit": toolkit_version(),
        "git_commit": git_commit(),
        "torch": _module_version("torch"),
        "numpy": _module_version("numpy"),
        "python": platform.python_version(),
    }
