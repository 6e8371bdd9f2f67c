"""The original's caption tokeniser: NLTK's Treebank rules, in Python and as RE2 for TF graphs.

The original (fartashf/vsepp data.py, vocab.py) tokenises `str(caption).lower()` with
`nltk.word_tokenize`. Under Python 2 that `lower()` acts on bytes, so only ASCII letters
change case; on one sentence `word_tokenize` is the Treebank tokenizer (its punkt sentence
split does nothing then), whose rules need no data. Not covered: a caption of several
sentences, where punkt would also split the period off each inner sentence ("dog. it" ->
"dog", "."; here "dog." stays one token, usually <unk>), and the Unicode-quote rules that
`word_tokenize` adds on top of the Treebank ones (nltk/nltk#1682, 2017). The rules are
today's NLTK Treebank rules; the authors' NLTK of 2017 differed in corners (e.g. `''`
inside a word). They are written twice here, tested against
`nltk.tokenize.TreebankWordTokenizer` (tests/test_original_tokenizer.py):

- `tokenize`: the rules as NLTK writes them, for Python's `re`;
- `tf_tokenize`: the same rules for RE2 (`tf.strings.regex_replace`), which has no
  lookarounds and whose `\\b`, `\\s`, `\\d` and `$` are ASCII or end-only: word
  boundaries become explicit classes, consumed and put back (twice, so that two matches
  sharing one boundary character both apply), and `\\s` Python's Unicode whitespace.
"""

from __future__ import annotations

import re
from typing import Any

# str.isspace() / Python's \s on str: the characters str.split() splits on.
_WS_CHARS = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
)
_WS = f"[{_WS_CHARS}]"
# Python's \w on str: letters, numbers, underscore.
_W = "\\p{L}\\p{N}_"
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

# (pattern, replacement) in NLTK's order, Python `re` syntax.
_PY_BEFORE_PAD = (
    (r'^"', r"``"),
    (r"(``)", r" \1 "),
    (r"([ \(\[{<])(\"|\'{2})", r"\1 `` "),
    (r"([:,])([^\d])", r" \1 \2"),
    (r"([:,])$", r" \1 "),
    (r"\.\.\.", r" ... "),
    (r"[;@#$%&]", r" \g<0> "),
    (r'([^\.])(\.)([\]\)}>"\']*)\s*$', r"\1 \2\3 "),
    (r"[?!]", r" \g<0> "),
    (r"([^'])' ", r"\1 ' "),
    (r"[\]\[\(\)\{\}\<\>]", r" \g<0> "),
    (r"--", r" -- "),
)
_PY_AFTER_PAD = (
    (r"''", " '' "),
    (r'"', " '' "),
    (r"([^' ])('[sS]|'[mM]|'[dD]|') ", r"\1 \2 "),
    (r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) ", r"\1 \2 "),
)
_CONTRACTIONS2 = (
    ("can", "not"), ("d", "'ye"), ("gim", "me"), ("gon", "na"), ("got", "ta"), ("lem", "me"),
    ("more", "'n"),
)  # fmt: skip
_PY_CONTRACTIONS = (
    *((rf"(?i)\b({a})({b})\b", r" \1 \2 ") for a, b in _CONTRACTIONS2),
    (r"(?i)\b(wan)(na)(?=\s)", r" \1 \2 "),
    (r"(?i) ('t)(is)\b", r" \1 \2 "),
    (r"(?i) ('t)(was)\b", r" \1 \2 "),
)
_PY_RULES = tuple(
    (re.compile(p), r)
    for p, r in (*_PY_BEFORE_PAD, ("PAD", ""), *_PY_AFTER_PAD, *_PY_CONTRACTIONS)
    if p != "PAD"
)


def ascii_lower(text: str) -> str:
    """Python 2's `str.lower()` on UTF-8 bytes: ASCII letters only."""
    return text.translate(_ASCII_LOWER)


def treebank(text: str) -> list[str]:
    """NLTK's `TreebankWordTokenizer().tokenize(text)` (no parenthesis conversion)."""
    n_before = len(_PY_BEFORE_PAD)
    for i, (pattern, repl) in enumerate(_PY_RULES):
        if i == n_before:
            text = " " + text + " "
        text = pattern.sub(repl, text)
    return text.split()


def tokenize(text: str) -> list[str]:
    """The original's tokens of a caption: ASCII lower-case, then Treebank."""
    return treebank(ascii_lower(text))


# RE2 twins, in the same order. Boundary groups are put back in the replacement.
_NOT_W = f"[^{_W}]"
_RE2_BEFORE_PAD = (
    ('^"', "``"),
    ("(``)", " \\1 "),
    ("([ (\\[{<])(\"|'')", "\\1 `` "),
    ("([:,])([^\\p{Nd}])", " \\1 \\2"),
    ("([:,])(\n?)$", " \\1 \\2"),
    ("\\.\\.\\.", " ... "),
    ("[;@#$%&]", " \\0 "),
    (f"([^.])(\\.)([\\])}}>\"']*){_WS}*$", "\\1 \\2\\3 "),
    ("[?!]", " \\0 "),
    ("([^'])' ", "\\1 ' "),
    ("[\\]\\[(){}<>]", " \\0 "),
    ("--", " -- "),
)
_RE2_AFTER_PAD = (
    ("''", " '' "),
    ('"', " '' "),
    # The text is ASCII lower-case by now, so NLTK's upper-case spellings cannot occur; RE2
    # would also read [sS] as a case-folded s and match U+017F (long s), Python does not.
    ("([^' ])('s|'m|'d|') ", "\\1 \\2 "),
    ("([^' ])('ll|'re|'ve|n't) ", "\\1 \\2 "),
)
_RE2_CONTRACTIONS = (
    *((f"(?i)(^|{_NOT_W})({a})({b})($|{_NOT_W})", "\\1 \\2 \\3 \\4") for a, b in _CONTRACTIONS2),
    (f"(?i)(^|{_NOT_W})(wan)(na)({_WS})", "\\1 \\2 \\3 \\4"),
    (f"(?i) ('t)(is)($|{_NOT_W})", " \\1 \\2 \\3"),
    (f"(?i) ('t)(was)($|{_NOT_W})", " \\1 \\2 \\3"),
)


def tf_tokenize(texts: Any) -> Any:
    """TensorFlow twin of `tokenize`: tf.string [n] -> tf.RaggedTensor of tokens [n, None]."""
    import tensorflow as tf

    s = tf.strings.lower(texts)  # no encoding: ASCII letters only, as Python 2's str.lower
    for pattern, repl in _RE2_BEFORE_PAD:
        s = tf.strings.regex_replace(s, pattern, repl)
    s = tf.strings.join([" ", s, " "])
    for pattern, repl in _RE2_AFTER_PAD:
        s = tf.strings.regex_replace(s, pattern, repl)
    for pattern, repl in _RE2_CONTRACTIONS:
        # A match consumes the boundary character the next one would need: a second pass
        # applies those (a replaced match no longer matches, so two passes are enough).
        s = tf.strings.regex_replace(s, pattern, repl)
        s = tf.strings.regex_replace(s, pattern, repl)
    s = tf.strings.regex_replace(s, f"{_WS}+", " ")
    return _split(tf, s)


def _split(tf: Any, s: Any) -> Any:
    tokens = tf.strings.split(tf.strings.strip(s), " ")
    # strip() of an all-blank string leaves "", whose split is [""]: drop empty tokens.
    return tf.ragged.boolean_mask(tokens, tf.strings.length(tokens) > 0)
