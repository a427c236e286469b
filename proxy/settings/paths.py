"""Where the files the config names live: the state file, the audit log, admin token files, the
preview secret file, registered migration files.

A relative path in the config is relative to the config file's directory (so the same config
works whatever the working directory is); without a config file, to the working directory.
Every path read from the config goes through `resolve` (or `beside_config`), in the master and
in the workers alike (they are given the master's config path).
"""

from __future__ import annotations

from pathlib import Path


def resolve(raw: str, config_path: Path | None) -> Path:
    path = Path(raw).expanduser()
    if path.is_absolute() or config_path is None:
        return path
    return config_path.parent / path


def beside_config(configured: str, config_path: Path | None, suffix: str) -> Path | None:
    """`configured` if set; else `<config stem><suffix>` next to the config file; else None
    (no config file: in memory only)."""
    if configured:
        return resolve(configured, config_path)
    if config_path is None:
        return None
    return config_path.with_name(config_path.stem + suffix)
