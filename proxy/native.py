"""Which build of the data path runs: the modules compiled with mypyc, or their Python source.

`pip install` compiles the modules in COMPILED with mypyc (setup.py) and writes STAMP, the hash of
each source it compiled. Importing `proxy` calls `select()` once, before any of them is imported.

Invariants:
- All of COMPILED run compiled, or none does: compiled modules call each other's classes directly
  and cannot be mixed with source ones.
- A compiled module runs only while its source is byte for byte the one it was compiled from, so
  an edited .py is never shadowed by a stale build (it runs from source, with a warning logged at
  start-up, until `pip install -e .` compiles it again).
- SLOTSWITCH_PURE_PYTHON=1 runs the source, and at build time skips the compiler.

This module is also run on its own by setup.py (runpy), so it imports nothing from the package.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

# Every module of the two folders that run per request, proxy/datapath/ and proxy/routing/ (the snapshot
# and the per-slot stats the data path reads and records): the tree shows what is compiled, and
# tests/test_native.py checks that this list is exactly those folders' modules. Everything else stays
# interpreted. The order is the one mypyc is given: starting from proxy.datapath.wire, mypy 2.4 fails
# on the import cycle ("Cannot determine type of VIA").
COMPILED = (
    "proxy.datapath.client",
    "proxy.datapath.tlsconn",
    "proxy.datapath.llhttp",
    "proxy.datapath.exchange",
    "proxy.datapath.scan",
    "proxy.datapath.tls",
    "proxy.datapath.upstream",
    "proxy.datapath.relay",
    "proxy.datapath.headers",
    "proxy.datapath.pool",
    "proxy.routing.stats",
    "proxy.datapath.balance",
    "proxy.datapath.wire",
    "proxy.routing.state",
    "proxy.datapath.server",
    "proxy.datapath.accesslog",
    "proxy.datapath.ratelog",
    "proxy.datapath.logformat",
    "proxy.datapath.logjson",
    "proxy.datapath.shadow",
    "proxy.datapath.mirror",
)
COMPILED_DIRS = ("datapath", "routing")
STAMP = "_native_stamp.json"
PURE_ENV = "SLOTSWITCH_PURE_PYTHON"
SCAN_ENV = "SLOTSWITCH_SCAN_HEADS"
PACKAGE_DIR = Path(__file__).resolve().parent

# Set by select(): "compiled" or "python", and why it is "python".
mode = "python"
reason = "not selected yet"


def pure_requested() -> bool:
    return os.environ.get(PURE_ENV, "") not in ("", "0")


def source_path(module: str, package_dir: Path = PACKAGE_DIR) -> Path:
    """proxy.datapath.wire -> <package_dir>/datapath/wire.py"""
    return package_dir.joinpath(*module.split(".")[1:]).with_suffix(".py")


def source_hashes(package_dir: Path = PACKAGE_DIR) -> dict[str, str]:
    return {m: hashlib.sha256(source_path(m, package_dir).read_bytes()).hexdigest() for m in COMPILED}


def write_stamp(package_dir: Path) -> None:
    """Called by setup.py when it compiles: records the sources the build is made of."""
    (package_dir / STAMP).write_text(json.dumps(source_hashes(package_dir), indent=1, sort_keys=True) + "\n")


def _compiled_present(package_dir: Path) -> bool:
    stem = source_path(COMPILED[-1], package_dir).with_suffix("")
    return any(stem.with_name(stem.name + suffix).exists() for suffix in importlib.machinery.EXTENSION_SUFFIXES)


def _check(package_dir: Path) -> str:
    """Why the compiled build cannot run, or "" if it can."""
    if pure_requested():
        return f"{PURE_ENV} is set"
    if not _compiled_present(package_dir):
        return f"not compiled (installed with {PURE_ENV}=1, or the C compiler failed at install)"
    try:
        stamp = json.loads((package_dir / STAMP).read_text())
    except (OSError, ValueError):
        return f"{STAMP} is missing or unreadable"
    changed = [m for m, digest in source_hashes(package_dir).items() if stamp.get(m) != digest]
    if changed:
        files = ", ".join(str(source_path(m).relative_to(PACKAGE_DIR)) for m in changed)
        return f"changed since compiled: {files} (`pip install -e .` compiles again)"
    return ""


class _SourceFinder:
    """A meta path finder that imports COMPILED from their .py files, ahead of the extension modules."""

    def __init__(self, package_dir: Path) -> None:
        self.package_dir = package_dir

    def find_spec(self, name: str, path: Sequence[str] | None, target: ModuleType | None = None) -> ModuleSpec | None:
        if name not in COMPILED:
            return None
        return importlib.util.spec_from_file_location(name, source_path(name, self.package_dir))


def select() -> None:
    """Decide once per process, before the first of COMPILED is imported."""
    global mode, reason
    why = _check(PACKAGE_DIR)
    if not why:
        mode, reason = "compiled", ""
        return
    mode, reason = "python", why
    if _compiled_present(PACKAGE_DIR) and not any(isinstance(f, _SourceFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _SourceFinder(PACKAGE_DIR))


def scan_heads() -> bool:
    """Whether whole plain heads take proxy.datapath.scan's fast path: only compiled (from source, its work costs
    more than llhttp's callbacks), and not with SLOTSWITCH_SCAN_HEADS=0 (a switch to rule it out, and
    to measure it)."""
    return mode == "compiled" and os.environ.get(SCAN_ENV, "1") != "0"


def describe() -> str:
    """One line for the start-up log."""
    if mode != "compiled":
        return f"data path: Python source ({reason})"
    return "data path: compiled (mypyc)" + ("" if scan_heads() else f", whole-head fast path off ({SCAN_ENV}=0)")
