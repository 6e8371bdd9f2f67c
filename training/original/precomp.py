"""The authors' precomputed test features (data.tar): `{split}_ims.npy`, `{split}_caps.txt`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vsepp.evaluation import CAPTIONS_PER_IMAGE


def read_precomp_split(
    data_dir: str | os.PathLike[str], split: str
) -> tuple[np.ndarray, list[str]]:
    """(features [N, F], captions [5N]) of a split, read as the original's PrecompDataset
    reads them: one caption a line, stripped; the features hold one row per image or, as
    the 10-crop files do, one per caption (rows 5i..5i+4 are image i: its first is kept)."""
    root = Path(data_dir)
    ims_path, caps_path = root / f"{split}_ims.npy", root / f"{split}_caps.txt"
    for path in (ims_path, caps_path):
        if not path.is_file():
            raise FileNotFoundError(f"--precomp_data {root}: no {path.name}")
    try:
        features = np.load(ims_path, allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{ims_path}: not a numpy array file ({e})") from e
    with caps_path.open("rb") as f:
        captions = [line.strip().decode("utf-8", errors="replace") for line in f]
    if features.ndim != 2:
        raise ValueError(f"{ims_path}: expected [rows, features], got shape {features.shape}")
    rows, n_caps = features.shape[0], len(captions)
    if rows == n_caps:
        features = features[::CAPTIONS_PER_IMAGE]
    elif rows * CAPTIONS_PER_IMAGE != n_caps:
        raise ValueError(
            f"{ims_path} has {rows} rows and {caps_path.name} {n_caps} captions: expected one "
            f"row per image ({n_caps // CAPTIONS_PER_IMAGE}) or one per caption ({n_caps})"
        )
    return np.asarray(features, np.float32), captions
