"""The original's pickled vocabulary (`vocab.Vocabulary`, protocol 2, Python 2 strings)."""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.original.checkpoint import CheckpointError, OriginalVocabulary, safe_loads

# The reserved words of the original's vocab.py, added first in this order (ids 0..3).
SPECIAL = ("<pad>", "<start>", "<end>", "<unk>")


@dataclass(frozen=True)
class ImportedVocab:
    """Words by id as the original numbered them (`<pad>` 0, `<start>` 1, `<end>` 2, `<unk>` 3
    in the released files; read from the file, not assumed)."""

    words: list[str]

    def id_of(self, word: str) -> int:
        return self.words.index(word)

    @property
    def pad(self) -> int:
        return self.id_of("<pad>")

    @property
    def start(self) -> int:
        return self.id_of("<start>")

    @property
    def end(self) -> int:
        return self.id_of("<end>")

    @property
    def unk(self) -> int:
        return self.id_of("<unk>")

    def __len__(self) -> int:
        return len(self.words)


def _text(value: Any) -> str:
    # Python 2 `str` arrives as bytes (encoding="bytes"); vocab.py fed nltk utf-8 text.
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin1")
    if isinstance(value, str):
        return value
    raise CheckpointError(f"vocabulary word {value!r} is not a string")


def read_vocab(path: str | os.PathLike[str]) -> ImportedVocab:
    """The words of a pickled original vocabulary, by id. Raises CheckpointError naming the
    file when it is not one (or names something outside the allowlist)."""
    p = Path(path)
    try:
        obj = safe_loads(p.read_bytes(), vocabulary=True, encoding="bytes")
    except CheckpointError as e:
        raise type(e)(f"{p}: {e}") from e
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{p}: not a readable vocabulary pickle ({e})") from e
    if not isinstance(obj, OriginalVocabulary):
        raise CheckpointError(f"{p}: holds a {type(obj).__name__}, not a Vocabulary")
    word2idx = obj.word2idx
    if not isinstance(word2idx, dict) or not word2idx:
        raise CheckpointError(f"{p}: the vocabulary has no word2idx")
    words: list[str | None] = [None] * len(word2idx)
    for word, idx in word2idx.items():
        i = int(idx)
        if not 0 <= i < len(words) or words[i] is not None:
            raise CheckpointError(f"{p}: word ids are not 0..{len(words) - 1} each once")
        words[i] = _text(word)
    missing = [w for w in SPECIAL if w not in words]
    if missing:
        raise CheckpointError(f"{p}: the vocabulary lacks {', '.join(missing)}")
    return ImportedVocab([w for w in words if w is not None])
