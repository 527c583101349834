"""What the kubelet does to a mounted ConfigMap or Secret volume, on a real directory: each update's
files go into a new timestamped folder, a `..data` link is swapped to it with one rename (atomic), and
every key is a link `name -> ..data/name` made once. A reader sees the old set or the new one whole."""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

_serial = itertools.count(1)


def kubelet_update(volume: Path, files: dict[str, str]) -> None:
    """Makes `files` ({key: text}) the volume's content, as the kubelet's atomic writer does."""
    volume.mkdir(parents=True, exist_ok=True)
    data = volume / "..data"
    old = os.readlink(data) if data.is_symlink() else None
    stamp = f"..2026_12_02_00_00_00.{next(_serial):09d}"
    (volume / stamp).mkdir()
    for name, text in files.items():
        (volume / stamp / name).write_text(text)
    tmp = volume / "..data_tmp"
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(stamp, tmp)
    os.rename(tmp, data)
    for name in files:
        link = volume / name
        if not link.is_symlink():
            os.symlink(os.path.join("..data", name), link)
    for entry in volume.iterdir():       # keys no longer in the ConfigMap
        if entry.is_symlink() and not entry.name.startswith(".") and entry.name not in files:
            entry.unlink()
    if old is not None:
        shutil.rmtree(volume / old)
