"""Which build of the data path runs (proxy/native.py): compiled, or the source when asked or stale.

Each case imports the package in a fresh interpreter, from the checkout or from a copy of it made
under tmp_path, and reports where proxy.datapath.client came from.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from proxy import native

ROOT = Path(__file__).resolve().parent.parent
COMPILED = native._compiled_present(native.PACKAGE_DIR)
needs_build = pytest.mark.skipif(not COMPILED, reason="installed without compiling (SLOTSWITCH_PURE_PYTHON=1)")

PROBE = """
import json, proxy.datapath.client, proxy.native, proxy.datapath.server
print(json.dumps({"mode": proxy.native.mode, "reason": proxy.native.reason, "client": proxy.datapath.client.__file__,
                  "server": proxy.datapath.server.__file__, "line": proxy.native.describe(),
                  "scan": proxy.native.scan_heads()}))
"""


def probe(root: Path, **env: str) -> dict[str, Any]:
    environ = {k: v for k, v in os.environ.items() if k not in (native.PURE_ENV, native.SCAN_ENV)}
    environ.update(env, PYTHONPATH=str(root))
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=root, env=environ, capture_output=True, text=True, timeout=60, check=True
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def copy_build(dst: Path) -> Path:
    """The package and its compiled files (mypyc's shared library sits beside the package)."""
    shutil.copytree(ROOT / "proxy", dst / "proxy", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "admin", dst / "admin", ignore=shutil.ignore_patterns("__pycache__"))
    for lib in ROOT.glob("*__mypyc*"):
        shutil.copy2(lib, dst / lib.name)
    return dst


@needs_build
def test_a_compiled_install_runs_compiled() -> None:
    got = probe(ROOT)
    assert got["mode"] == "compiled", got
    assert not got["client"].endswith(".py") and not got["server"].endswith(".py")
    assert got["line"] == "data path: compiled (mypyc)"
    assert got["scan"] is True  # whole plain heads take proxy.datapath.scan's fast path


@needs_build
def test_the_fast_path_can_be_turned_off() -> None:
    got = probe(ROOT, SLOTSWITCH_SCAN_HEADS="0")
    assert got["mode"] == "compiled" and got["scan"] is False
    assert got["line"] == "data path: compiled (mypyc), whole-head fast path off (SLOTSWITCH_SCAN_HEADS=0)"


def test_the_environment_variable_runs_the_source() -> None:
    got = probe(ROOT, SLOTSWITCH_PURE_PYTHON="1")
    assert got["mode"] == "python"
    assert got["client"] == str(ROOT / "proxy" / "datapath" / "client.py")
    assert got["server"] == str(ROOT / "proxy" / "datapath" / "server.py")
    assert "SLOTSWITCH_PURE_PYTHON is set" in got["line"]
    assert got["scan"] is False  # from source, the fast path would cost more than it saves


@needs_build
def test_an_edited_source_runs_from_source_not_from_its_stale_build(tmp_path: Path) -> None:
    root = copy_build(tmp_path)
    assert probe(root)["mode"] == "compiled"  # the copy alone changes nothing
    with (root / "proxy" / "datapath" / "relay.py").open("a") as f:
        f.write("\n# edited after the build\n")
    got = probe(root)
    assert got["mode"] == "python"
    assert "changed since compiled: datapath/relay.py" in got["reason"]
    # All of them from source, the unedited ones too: compiled and source modules cannot mix.
    assert got["client"] == str(root / "proxy" / "datapath" / "client.py")
    assert got["server"] == str(root / "proxy" / "datapath" / "server.py")


@needs_build
def test_a_build_without_its_stamp_runs_from_source(tmp_path: Path) -> None:
    root = copy_build(tmp_path)
    (root / "proxy" / native.STAMP).unlink()
    got = probe(root)
    assert got["mode"] == "python"
    assert native.STAMP in got["reason"]


def test_the_stamp_lists_every_compiled_module(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "proxy", tmp_path / "proxy", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    native.write_stamp(tmp_path / "proxy")
    stamp = json.loads((tmp_path / "proxy" / native.STAMP).read_text())
    # Checked against hashes computed here, not with native.source_hashes, which write_stamp uses.
    files = {
        f"proxy.{folder}.{path.stem}": path
        for folder in native.COMPILED_DIRS
        for path in (tmp_path / "proxy" / folder).glob("*.py")
        if path.stem != "__init__"
    }
    assert stamp == {m: hashlib.sha256(files[m].read_bytes()).hexdigest() for m in native.COMPILED}


def test_exactly_the_compiled_folders_are_compiled() -> None:
    """The tree shows what is compiled: every module of proxy/datapath/ and proxy/routing/, nothing else."""
    modules = {
        f"proxy.{folder}.{path.stem}"
        for folder in native.COMPILED_DIRS
        for path in (ROOT / "proxy" / folder).glob("*.py")
        if path.stem != "__init__"
    }
    assert sorted(native.COMPILED) == sorted(modules)


def test_a_machine_whose_c_compiler_fails_gets_a_working_source_install(tmp_path: Path) -> None:
    """setup.py: the wheel builds with the data path as source, and says why; no half-compiled set."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for package in ("proxy", "admin"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.json"))
    env = {k: v for k, v in os.environ.items() if k != native.PURE_ENV}
    env["CC"] = "false"  # distutils compiles with $CC: a compiler that fails every time
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(tmp_path / "dist"), str(src)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "the data path could not be compiled" in done.stdout + done.stderr
    (wheel,) = (tmp_path / "dist").glob("slotswitch-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    assert "proxy/datapath/client.py" in names and "proxy/native.py" in names
    assert not [n for n in names if n.endswith(".so")], names
