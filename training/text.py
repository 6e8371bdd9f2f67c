"""Caption tokenisation and the vocabulary, identical in Python and inside TensorFlow graphs.

The same rules run in the trainer (Python), in the exported text encoder (TF ops) and so in
the indexer and the server. They are kept as one list of regex rewrites that both `re` and
RE2 (`tf.strings.regex_replace`) understand, so the two cannot drift apart.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vsepp.atomic import write_json_atomic

PAD, UNK, START, END = 0, 1, 2, 3
RESERVED = ("<pad>", "<unk>", "<start>", "<end>")

# Applied in order after lower-casing. Tokens are runs of letters and digits that may hold
# apostrophes inside ("don't", "o'clock"); everything else separates tokens. Typographic
# apostrophes are folded first so "dog’s" and "dog's" are one word; Unicode punctuation and
# Latin-1 symbols separate words. The patterns hold literal characters, not escapes, because
# Python's re and RE2 spell escapes differently.
_RULES: tuple[tuple[str, str], ...] = (
    ("[\u2018\u2019\u02bc`]", "'"),
    ("[\u00a0-\u00bf\u00d7\u00f7\u2000-\u206f\u3000-\u303f\ufeff]+", " "),
    ("[^a-z0-9'\u00c0-\U0010ffff]+", " "),
    # Apostrophes that do not sit between two word characters are quotes, not part of a word.
    ("(^|\\s)'+", " "),
    ("'+(\\s|$)", " "),
)
_PY_RULES = tuple((re.compile(p), r) for p, r in _RULES)


def tokenize(text: str) -> list[str]:
    """Split a caption into lower-case word tokens (apostrophes inside words kept)."""
    s = text.lower()
    for pattern, repl in _PY_RULES:
        s = pattern.sub(repl, s)
    return s.split()


def tf_tokenize(texts: Any) -> Any:
    """TensorFlow twin of `tokenize`: tf.string [n] -> tf.RaggedTensor of tokens [n, None]."""
    import tensorflow as tf

    s = tf.strings.lower(texts, encoding="utf-8")
    for pattern, repl in _RULES:
        s = tf.strings.regex_replace(s, pattern, repl)
    return tf.strings.split(s)


@dataclass
class Vocabulary:
    """Word <-> id map; ids 0-3 are the reserved pad, unknown, start and end tokens."""

    tokens: list[str]
    min_count: int = 4
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if tuple(self.tokens[: len(RESERVED)]) != RESERVED:
            raise ValueError(f"vocabulary must start with the reserved tokens {RESERVED}")
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError("vocabulary has duplicate tokens")
        self._ids = {t: i for i, t in enumerate(self.tokens)}

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 4) -> Vocabulary:
        """Vocabulary of the words seen at least `min_count` times (training captions only)."""
        counts = Counter(t for c in captions for t in tokenize(c))
        kept = [w for w, n in counts.items() if n >= min_count and w not in RESERVED]
        # Most frequent first, ties alphabetical: the same captions give the same ids.
        kept.sort(key=lambda w: (-counts[w], w))
        return cls(list(RESERVED) + kept, min_count, {w: counts[w] for w in kept})

    def __len__(self) -> int:
        return len(self.tokens)

    def id_of(self, token: str) -> int:
        return self._ids.get(token, UNK)

    def encode(self, text: str) -> list[int]:
        """Token ids of a caption framed by <start> and <end>."""
        return [START, *(self.id_of(t) for t in tokenize(text)), END]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def to_json(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "min_count": self.min_count, "counts": self.counts}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Vocabulary:
        try:
            return cls(list(data["tokens"]), int(data["min_count"]), dict(data.get("counts", {})))
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a vocabulary file: missing or bad field {e}") from e

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write as JSON atomically (beside, then rename)."""
        write_json_atomic(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Vocabulary:
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read vocabulary {p}: {e}") from e
        try:
            return cls.from_json(data)
        except ValueError as e:
            raise ValueError(f"{p}: {e}") from e
