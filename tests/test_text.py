"""Tokenizer and vocabulary: one set of rules in Python and in TensorFlow."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from training.text import END, PAD, RESERVED, START, UNK, Vocabulary, tf_tokenize, tokenize


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("A dog's ball.", ["a", "dog's", "ball"]),
        ("Two  DOGS run\r\n", ["two", "dogs", "run"]),
        ("'quoted' words ''x y''", ["quoted", "words", "x", "y"]),
        ("don't stop at o'clock", ["don't", "stop", "at", "o'clock"]),
        ("dog’s", ["dog's"]),
        ("a-b_c,d;e!", ["a", "b", "c", "d", "e"]),
        ("café “naïve”", ["café", "naïve"]),
        ("", []),
        ("  ' ", []),
    ],
)
def test_tokenize(text: str, tokens: list[str]) -> None:
    assert tokenize(text) == tokens


def test_tensorflow_tokenizer_equals_python_on_random_text() -> None:
    import tensorflow as tf

    rng = random.Random(0)
    alphabet = "abcXYZ '’`-.,!?\t\n09éÉß“”—\u00a0日"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24))) for _ in range(3000)]
    got = tf_tokenize(tf.constant(texts)).to_list()
    for text, toks in zip(texts, got, strict=True):
        assert [t.decode() for t in toks] == tokenize(text), repr(text)


def test_vocabulary_keeps_frequent_training_words_in_a_stable_order() -> None:
    captions = ["a red ball"] * 4 + ["a blue box"] * 5 + ["a green cone"] * 3
    vocab = Vocabulary.build(captions, min_count=4)
    assert tuple(vocab.tokens[:4]) == RESERVED
    assert (PAD, UNK, START, END) == (0, 1, 2, 3)
    # Most frequent first, ties alphabetical; "green" and "cone" (3 times) are left out.
    assert vocab.tokens[4:] == ["a", "blue", "box", "ball", "red"]
    assert vocab.encode("A green box!") == [START, vocab.id_of("a"), UNK, vocab.id_of("box"), END]
    assert Vocabulary.build(list(reversed(captions))).tokens == vocab.tokens


def test_vocabulary_round_trips_through_json(tmp_path: Path) -> None:
    vocab = Vocabulary.build(["x y z"] * 4 + ["y"] * 2)
    path = tmp_path / "v" / "vocab.json"
    vocab.save(path)
    again = Vocabulary.load(path)
    assert again.tokens == vocab.tokens and again.min_count == vocab.min_count
    assert again.counts == vocab.counts
    assert [p.name for p in path.parent.iterdir()] == ["vocab.json"]  # no temp file left


def test_bad_vocabulary_files_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "vocab.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=str(bad)):
        Vocabulary.load(bad)
    bad.write_text(json.dumps({"tokens": ["a", "b"], "min_count": 4}))
    with pytest.raises(ValueError, match="reserved"):
        Vocabulary.load(bad)
