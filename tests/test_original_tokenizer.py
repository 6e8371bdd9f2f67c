"""The original's tokeniser (training.original.tokenizer) against NLTK's Treebank tokenizer."""

from __future__ import annotations

import random

import pytest

from tests.conftest import require
from training.original.tokenizer import ascii_lower, tf_tokenize, tokenize

try:
    from nltk.tokenize import TreebankWordTokenizer
except ImportError:  # nltk is a dev dependency; require() fails the test under CI
    TreebankWordTokenizer = None

_WORDS = (
    'a', 'man', 'woman', "dog's", "dogs'", "children's", 'cannot', 'gonna', 'wanna', 'gimme',
    'lemme', 'gotta', "d'ye", "more'n", "'tis", "'twas", "isn't", "don't", "won't", "can't",
    "they'll", "we're", "i've", "he'd", "i'm", "it's", "o'clock", "rock'n'roll", 't-shirt',
    'well-known', '3.88', '1,000', '10:30', '$5', '50%', '#1', '@home', 'a&b', 'e-mail', 'U.S.',
    'Mr.', 'St.', 'etc.', '...', '--', '(red)', '[blue]', '{x}', '<y>', '"quoted"', "'single'",
    "``tex''", '?!', ';', ':', ',', '.', 'café', 'naïve', 'Éclair', 'ÜBER', '日本', '€20', '½', '²',
    'ſ', 'K', 'K', '–', '—', '’s', '‘hi’', '“yes”', '«', 'non', '»', 'CANNOT', 'WANNA', "Can't",
    "I'M",
)  # fmt: skip
_SEPS = (" ", " ", " ", "  ", "\t", "\n", "\u00a0", "\u3000", "", "-", ",", ".", "'", '"')


def _captions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = [rng.choice(_WORDS) + rng.choice(_SEPS) for _ in range(rng.randint(0, 14))]
        text = "".join(parts)
        if rng.random() < 0.3:
            text += rng.choice((".", " .", ". ", '."', ".)", "?", "!", ":", ",", ".\n", "'"))
        if rng.random() < 0.1:
            text = rng.choice(('"', "'", "(", " ")) + text
        out.append(text)
    return out


CAPTIONS = [
    "A dog's ball.",
    "Two men aren't playing in the U.S. today.",
    'She said "hello," then left...',
    "A child (in red) is jumping -- high!",
    "cannot wanna gonna 'tis",
    "The woman's T-shirt costs $3.88, or 1,000 yen: cheap",
    "",
    "   ",
    "A café in Zürich.",
    *_captions(3000),
]


def _nltk(text: str) -> list[str]:
    require(TreebankWordTokenizer is not None, "nltk (dev dependency)")
    return TreebankWordTokenizer().tokenize(ascii_lower(text))


def test_ascii_lower_is_python2_bytes_lower() -> None:
    assert ascii_lower("ÉCLAIR Dog") == "Éclair dog"


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("A dog's ball.", ["a", "dog", "'s", "ball", "."]),
        ("Don't stop, cannot", ["do", "n't", "stop", ",", "can", "not"]),
        ('He said "hi"', ["he", "said", "``", "hi", "''"]),
    ],
)
def test_known_captions(text: str, tokens: list[str]) -> None:
    assert tokenize(text) == tokens


def test_python_rules_equal_nltk_treebank() -> None:
    bad = [(t, tokenize(t), _nltk(t)) for t in CAPTIONS if tokenize(t) != _nltk(t)]
    assert not bad, bad[:5]


def test_tensorflow_rules_equal_nltk_treebank() -> None:
    import tensorflow as tf

    got = tf_tokenize(tf.constant(CAPTIONS)).to_list()
    bad = [
        (t, [x.decode() for x in g], _nltk(t))
        for t, g in zip(CAPTIONS, got, strict=True)
        if [x.decode() for x in g] != _nltk(t)
    ]
    assert not bad, bad[:5]
