"""Read torch checkpoints into numpy without torch and without running the file.

Why a reader of our own: torch is a multi-GB dependency for reading one file, and the
PyPI readers that work without it (ptloader, pt-safe-loader: months old, one author, no
record of use) would still need our own allowlist for what VSE++ checkpoints hold besides
tensors (`argparse.Namespace`, the pickled `Vocabulary`); `fickling` and `picklescan`
analyse pickles but load nothing. Both of torch's layouts are small:

- legacy (torch <= 1.5, and torch 0.3 under Python 2 as the authors wrote theirs): five
  pickles in a row (magic number, protocol 1001, system info, the object with storages as
  persistent ids, the sorted storage keys), then each storage as an int64 element count
  and its raw little-endian bytes, in key order;
- zip (torch >= 1.6): `PREFIX/data.pkl` with the same persistent ids, each storage in
  `PREFIX/data/KEY`.

`pickle.load` never touches the file: `SafeUnpickler.find_class` hands out only the names
of `ALLOWED` (tensor rebuilds, storage types, plain containers, `argparse.Namespace`, the
vocabulary class), each mapped to an inert stand-in, and refuses anything else naming it.
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import pickle
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# torch storage class name -> numpy dtype of its elements (little-endian on disk).
STORAGE_DTYPES: dict[str, str] = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


class CheckpointError(ValueError):
    """The file is not a torch checkpoint this reader can use; the message says why."""


class UnsafePickleError(CheckpointError):
    """The pickle names something outside the allowlist (it would run code if loaded)."""


@dataclass(frozen=True)
class StorageType:
    """Stand-in for a torch storage class (`torch.FloatStorage`, `torch.cuda.FloatStorage`)."""

    name: str
    dtype: str


@dataclass
class LazyStorage:
    """A storage named by a persistent id; its bytes are read after the pickle (legacy)."""

    key: str
    dtype: str
    numel: int
    view: tuple[str, int, int] | None = None  # (view key, element offset, size) of old torch
    data: np.ndarray | None = None


@dataclass
class LazyTensor:
    """`torch._utils._rebuild_tensor*` arguments, made an array once storages are read."""

    storage: LazyStorage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> LazyTensor:
    if not isinstance(storage, LazyStorage):
        raise CheckpointError(f"a tensor is built from {type(storage).__name__}, not a storage")
    return LazyTensor(
        storage, int(offset), tuple(int(s) for s in size), tuple(int(s) for s in stride)
    )


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    return data


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafePickleError(f"numpy scalar of dtype {dtype!r} refused")
    raw = data.encode("latin1") if isinstance(data, str) else bytes(data or b"")
    return np.frombuffer(raw, dtype=dtype, count=1)[0].item()


def _numpy_dtype(name: Any, *_: Any) -> np.dtype:
    dtype = np.dtype(name.decode() if isinstance(name, bytes) else str(name))
    if dtype.hasobject:
        raise UnsafePickleError("numpy dtype object refused")
    return dtype


class OriginalVocabulary:
    """Stand-in for the original's `vocab.Vocabulary`: its attributes only, no methods run."""

    def __init__(self) -> None:
        self.word2idx: dict[Any, Any] = {}
        self.idx2word: dict[Any, Any] = {}
        self.idx = 0

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise CheckpointError("vocabulary state is not a dict")
        for key, value in state.items():
            name = key.decode("latin1") if isinstance(key, bytes) else str(key)
            if name in ("word2idx", "idx2word", "idx"):
                setattr(self, name, value)


def _storage_names() -> dict[tuple[str, str], object]:
    names: dict[tuple[str, str], object] = {}
    for cls, dtype in STORAGE_DTYPES.items():
        names[("torch", cls)] = StorageType(cls, dtype)
        names[("torch.cuda", cls)] = StorageType(cls, dtype)
    return names


# (module, name) -> what the unpickler gets instead of the real object. Nothing here runs
# code chosen by the file: the callables build only data.
ALLOWED: dict[tuple[str, str], object] = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("argparse", "Namespace"): argparse.Namespace,
    ("builtins", "object"): object,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _numpy_dtype,
    **_storage_names(),
}
# The vocabulary class as vocab.py pickles it: imported (`vocab`) or run as a script.
VOCABULARY_NAMES = {("vocab", "Vocabulary"), ("__main__", "Vocabulary")}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that knows only `ALLOWED` (plus the vocabulary class when asked)."""

    def __init__(self, file: IO[bytes], *, vocabulary: bool = False, encoding: str = "latin1"):
        super().__init__(file, encoding=encoding)
        self._vocabulary = vocabulary
        self.storages: dict[str, LazyStorage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED:
            return ALLOWED[(module, name)]
        if self._vocabulary and (module, name) in VOCABULARY_NAMES:
            return OriginalVocabulary
        raise UnsafePickleError(f"refused to load {module}.{name}: it is not on the allowlist")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UnsafePickleError(f"unknown persistent id {str(pid)[:80]!r}")
        kind, key, numel = pid[1], str(pid[2]), int(pid[4])
        if not isinstance(kind, StorageType):
            raise UnsafePickleError(f"persistent id names {kind!r}, not a storage type")
        view = None
        if len(pid) > 5 and pid[5] is not None:
            view_key, offset, size = pid[5]
            view = (str(view_key), int(offset), int(size))
        storage = self.storages.get(key)
        if storage is None:
            storage = self.storages[key] = LazyStorage(key, kind.dtype, numel)
        if view is None:
            return storage
        # Old torch pickled views of a storage: the view is its own key over the root's bytes.
        return LazyStorage(view[0], kind.dtype, view[2], view=(key, view[1], view[2]))


def safe_loads(data: bytes, *, vocabulary: bool = False, encoding: str = "latin1") -> Any:
    """Unpickle `data` through the allowlist (no storages expected)."""
    return SafeUnpickler(io.BytesIO(data), vocabulary=vocabulary, encoding=encoding).load()


def read_checkpoint(path: str | os.PathLike[str]) -> Any:
    """The object a torch checkpoint holds, its tensors as float/int numpy arrays.

    Raises CheckpointError (UnsafePickleError for a refused name) naming the file.
    """
    p = Path(path)
    try:
        if zipfile.is_zipfile(p):
            return _read_zip(p)
        with p.open("rb") as f:
            if f.read(4) == b"PK\x03\x04":
                raise CheckpointError("a truncated or damaged zip checkpoint (no zip directory)")
            f.seek(0)
            return _read_legacy(f)
    except CheckpointError as e:
        raise type(e)(f"{p}: {e}") from e
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, struct.error) as e:
        raise CheckpointError(
            f"{p}: not a readable torch checkpoint ({e or type(e).__name__})"
        ) from e
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError) as e:
        # Whatever a malformed pickle makes the stand-ins trip over.
        raise CheckpointError(f"{p}: not a readable torch checkpoint ({e})") from e


def _read_legacy(f: IO[bytes]) -> Any:
    head = f.read(2)
    f.seek(0)
    if head[:1] != b"\x80":
        raise CheckpointError("not a torch checkpoint: it does not start with a pickle")
    try:
        magic = SafeUnpickler(f).load()
    except UnsafePickleError as e:
        # A pickle, but not torch's: say so first (nothing of it was run).
        raise CheckpointError(
            f"not a torch checkpoint: a pickle that starts otherwise ({e})"
        ) from e
    if magic != LEGACY_MAGIC:
        raise CheckpointError("not a torch checkpoint: wrong magic number")
    protocol = SafeUnpickler(f).load()
    if protocol != LEGACY_PROTOCOL:
        raise CheckpointError(f"unsupported torch legacy protocol {protocol!r}")
    sys_info = SafeUnpickler(f).load()
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise CheckpointError("big-endian checkpoints are not supported")
    unpickler = SafeUnpickler(f)
    obj = unpickler.load()
    keys = SafeUnpickler(f).load()
    if not isinstance(keys, list):
        raise CheckpointError("storage key list missing")
    for key in keys:
        storage = unpickler.storages.get(str(key))
        count = struct.unpack("<q", _read_exact(f, 8))[0]
        itemsize = np.dtype(storage.dtype if storage else "u1").itemsize
        raw = _read_exact(f, count * itemsize)
        if storage is not None:
            if count != storage.numel:
                raise CheckpointError(
                    f"storage {key}: {count} elements, the pickle says {storage.numel}"
                )
            storage.data = np.frombuffer(raw, dtype=storage.dtype)
    return _materialise(obj, unpickler.storages)


def _read_exact(f: IO[bytes], n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise CheckpointError(f"truncated: expected {n} more bytes, found {len(data)}")
    return data


def _read_zip(p: Path) -> Any:
    with zipfile.ZipFile(p) as z:
        names = z.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise CheckpointError("a zip file without one PREFIX/data.pkl: not a torch checkpoint")
        prefix = pkl[0][: -len("data.pkl")]
        byteorder = prefix + "byteorder"
        if byteorder in names and z.read(byteorder).strip() != b"little":
            raise CheckpointError("big-endian checkpoints are not supported")
        unpickler = SafeUnpickler(io.BytesIO(z.read(pkl[0])))
        obj = unpickler.load()
        for key, storage in unpickler.storages.items():
            member = f"{prefix}data/{key}"
            if member not in names:
                raise CheckpointError(f"storage {key} missing ({member})")
            need = storage.numel * np.dtype(storage.dtype).itemsize
            with z.open(member) as f:
                raw = f.read(need)  # never more than the pickle's element count asks for
            if len(raw) < need:
                raise CheckpointError(f"storage {key}: {len(raw)} bytes, needs {need}")
            storage.data = np.frombuffer(raw[:need], dtype=storage.dtype)
    return _materialise(obj, unpickler.storages)


def _tensor(t: LazyTensor, storages: dict[str, LazyStorage]) -> np.ndarray:
    storage, base = t.storage, 0
    if storage.view is not None:
        root_key, base, _ = storage.view
        storage = storages[root_key]
    if storage.data is None:
        raise CheckpointError(f"storage {storage.key} has no data")
    flat = storage.data
    start = base + t.offset
    if any(s == 0 for s in t.size):
        return np.zeros(t.size, flat.dtype)
    last = start + sum((s - 1) * st for s, st in zip(t.size, t.stride, strict=True))
    if start < 0 or last >= flat.size or any(st < 0 for st in t.stride):
        raise CheckpointError(f"a tensor reaches outside its storage {storage.key}")
    item = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[start:], shape=t.size, strides=tuple(st * item for st in t.stride), writeable=False
    )
    return np.array(view, dtype=flat.dtype.newbyteorder("="))


def _materialise(obj: Any, storages: dict[str, LazyStorage]) -> Any:
    """`obj` with every LazyTensor replaced by its array (containers rebuilt in place)."""
    convert: Callable[[Any], Any] = lambda x: _materialise(x, storages)  # noqa: E731
    if isinstance(obj, LazyTensor):
        return _tensor(obj, storages)
    if isinstance(obj, LazyStorage):
        raise CheckpointError("a bare storage where a tensor was expected")
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, convert(v)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: convert(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [convert(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(convert(v) for v in obj)
    return obj
