"""Files in the VSE++ authors' formats, written with numpy alone (no torch).

`legacy_checkpoint_bytes` writes what torch 0.3 under Python 2 wrote with `torch.save`:
pickle protocol 2, Python 2 strings as SHORT_BINSTRING, the legacy framing (magic number,
protocol 1001, system info, the object with storages as persistent ids, the storage keys,
then each storage as an int64 count and its bytes), `torch._utils._rebuild_tensor` with
four arguments and `torch.cuda.FloatStorage` on 'cuda:0'. `vocab_bytes` writes vocab.py's
pickled `Vocabulary`. tests/data/make_original_fixture.py and the tests share these.
"""

from __future__ import annotations

import argparse
import struct
from collections import OrderedDict
from typing import Any

import numpy as np

MAGIC = 0x1950A86A20F9469CFC6C
FIXTURE_IMAGE_SIDE = 256  # Resize(256) and the project's resize both leave it unchanged


class Py2Str(str):
    """A Python 2 byte string (pickled as SHORT_BINSTRING / BINSTRING)."""


class Global:
    """A GLOBAL opcode naming `module.name`, optionally called with `args` (REDUCE)."""

    def __init__(self, module: str, name: str, args: tuple[Any, ...] | None = None):
        self.module, self.name, self.args = module, name, args


class NewObj:
    """A new-style instance: NEWOBJ of `module.name`, then BUILD with `state`."""

    def __init__(self, module: str, name: str, state: dict[Any, Any]):
        self.module, self.name, self.state = module, name, state


class Storage:
    """A torch storage referenced by persistent id."""

    def __init__(self, key: str, data: np.ndarray, cls: str = "FloatStorage", cuda: bool = True):
        self.key, self.data, self.cls, self.cuda = key, data, cls, cuda


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _string(s: str) -> bytes:
    if isinstance(s, Py2Str):
        raw = s.encode("latin1")
        if len(raw) < 256:
            return b"U" + bytes([len(raw)]) + raw
        return b"T" + struct.pack("<i", len(raw)) + raw
    raw = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(raw)) + raw


def _int(v: int) -> bytes:
    if 0 <= v < 256:
        return b"K" + bytes([v])
    if -(2**31) <= v < 2**31:
        return b"J" + struct.pack("<i", v)
    raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def dumps2(obj: Any) -> bytes:
    """Protocol-2 pickle of `obj` as Python 2 would write it (no memo)."""
    return b"\x80\x02" + _emit(obj) + b"."


def _emit(obj: Any) -> bytes:
    if obj is None:
        return b"N"
    if obj is True or obj is False:
        return b"\x88" if obj else b"\x89"
    if isinstance(obj, int):
        return _int(obj)
    if isinstance(obj, float):
        return b"G" + struct.pack(">d", obj)
    if isinstance(obj, str):
        return _string(obj)
    if isinstance(obj, tuple):
        if not obj:
            return b")"
        return b"(" + b"".join(_emit(x) for x in obj) + b"t"
    if isinstance(obj, list):
        return b"](" + b"".join(_emit(x) for x in obj) + b"e" if obj else b"]"
    if isinstance(obj, OrderedDict):
        # Python 2's OrderedDict.__reduce__: the class called with a list of [key, value].
        pairs = [[k, v] for k, v in obj.items()]
        return _global("collections", "OrderedDict") + _emit((pairs,)) + b"R"
    if isinstance(obj, dict):
        items = b"".join(_emit(k) + _emit(v) for k, v in obj.items())
        return b"}(" + items + b"u" if obj else b"}"
    if isinstance(obj, NewObj):
        return _global(obj.module, obj.name) + b")\x81" + _emit(obj.state) + b"b"
    if isinstance(obj, Global):
        head = _global(obj.module, obj.name)
        return head if obj.args is None else head + _emit(obj.args) + b"R"
    if isinstance(obj, Storage):
        module = "torch.cuda" if obj.cuda else "torch"
        location = Py2Str("cuda:0" if obj.cuda else "cpu")
        pid = (
            Py2Str("storage"),
            Global(module, obj.cls),
            Py2Str(obj.key),
            location,
            obj.data.size,
            None,
        )
        return _emit(pid) + b"Q"
    raise TypeError(f"cannot emit {type(obj).__name__}")


def tensor(storage: Storage, shape: tuple[int, ...]) -> Global:
    """torch 0.3's reduction of a contiguous tensor: _rebuild_tensor(storage, 0, size, stride)."""
    stride = tuple(int(np.prod(shape[i + 1 :])) for i in range(len(shape)))
    return Global("torch._utils", "_rebuild_tensor", (storage, 0, tuple(shape), stride))


def legacy_checkpoint_bytes(checkpoint: dict[str, Any]) -> bytes:
    """torch 0.3 / Python 2 `torch.save` bytes of `checkpoint`, whose 'model' is a list of
    OrderedDicts of float32 arrays and whose 'opt' is a dict (pickled as a Namespace)."""
    storages: list[Storage] = []

    def convert(obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            s = Storage(str(140000000000 + len(storages)), np.ascontiguousarray(obj, "<f4"))
            storages.append(s)
            return tensor(s, obj.shape)
        if isinstance(obj, OrderedDict):
            return OrderedDict((Py2Str(k), convert(v)) for k, v in obj.items())
        if isinstance(obj, dict):
            return {Py2Str(k): convert(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [convert(v) for v in obj]
        if isinstance(obj, str):
            return Py2Str(obj)
        return obj

    body = dict(checkpoint)
    opt = {Py2Str(k): convert(v) for k, v in body.pop("opt").items()}
    obj = {Py2Str(k): convert(v) for k, v in body.items()}
    obj[Py2Str("opt")] = NewObj("argparse", "Namespace", opt)
    sys_info = {
        Py2Str("protocol_version"): 1001,
        Py2Str("little_endian"): True,
        Py2Str("type_sizes"): {Py2Str("short"): 2, Py2Str("int"): 4, Py2Str("long"): 8},
    }
    out = [dumps2(MAGIC), dumps2(1001), dumps2(sys_info), dumps2(obj)]
    keys = sorted(s.key for s in storages)
    out.append(dumps2([Py2Str(k) for k in keys]))
    by_key = {s.key: s for s in storages}
    for k in keys:
        data = by_key[k].data
        out.append(struct.pack("<q", data.size) + data.tobytes())
    return b"".join(out)


def vocab_bytes(words: list[str], module: str = "vocab") -> bytes:
    """vocab.py's pickled Vocabulary of `words` (ids in order), Python 2 protocol 2."""

    def word(w: str) -> str:
        return w if not w.isascii() else Py2Str(w)  # nltk gave unicode; specials were str

    state = {
        Py2Str("word2idx"): {word(w): i for i, w in enumerate(words)},
        Py2Str("idx2word"): {i: word(w) for i, w in enumerate(words)},
        Py2Str("idx"): len(words),
    }
    return dumps2(NewObj(module, "Vocabulary", state))


FIXTURE_WORDS = [
    "<pad>", "<start>", "<end>", "<unk>", "a", "dog", "'s", "ball", ".", "man", "is",
    "riding", "horse", "on", "the", "beach", "two", "children", "play", "with", "red", ",",
    "n't", "do", "café", "woman", "in", "white", "shirt", "runs",
]  # fmt: skip

FIXTURE_CAPTIONS = [
    "A dog's ball.",
    "A man is riding a horse on the beach.",
    "Two children play with a red ball, don't they?",
    "A woman in a white shirt runs.",
    "A café on the beach",
    "RED DOG",
    "a zebra",
    "the man's horse is riding two dogs on a red beach in white",
]


def fixture_images(n: int = 6, seed: int = 0) -> np.ndarray:
    """uint8 [n, 256, 256, 3]: smooth gradients plus noise (PNG-friendly, varied)."""
    rng = np.random.default_rng(seed)
    side = FIXTURE_IMAGE_SIDE
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64) / side
    out = np.empty((n, side, side, 3), np.uint8)
    for i in range(n):
        a, b, c = rng.uniform(0, 6, 3)
        chans = [np.sin(a * xx + b * yy + c * k) for k in range(3)]
        img = 127.5 + 100 * np.stack(chans, -1) + rng.normal(0, 12, (side, side, 3))
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def opt_dict(**overrides: Any) -> dict[str, Any]:
    """The original's `opt` as train.py's argparse made it (defaults of fartashf/vsepp)."""
    opt: dict[str, Any] = {
        "data_path": "/w/31/faghri/vsepp_data/", "data_name": "f30k", "vocab_path": "./vocab/",
        "margin": 0.2, "num_epochs": 30, "batch_size": 128, "word_dim": 300, "embed_size": 1024,
        "grad_clip": 2.0, "crop_size": 224, "num_layers": 1, "learning_rate": 0.0002,
        "lr_update": 15, "workers": 10, "log_step": 10, "val_step": 500,
        "logger_name": "runs/f30k_vse++", "resume": "", "max_violation": True, "img_dim": 4096,
        "finetune": True, "cnn_type": "resnet152", "use_restval": False, "measure": "cosine",
        "use_abs": False, "no_imgnorm": False, "reset_train": False, "vocab_size": 0,
    }  # fmt: skip
    opt.update(overrides)
    return opt


def namespace(opt: dict[str, Any]) -> argparse.Namespace:
    return argparse.Namespace(**opt)
