"""`hash`: deterministic feature hashing of word and character n-grams.

No model and no torch: a dependable last resort, and a test backend. Texts that share
words score higher than unrelated texts, but the space is lexical, not semantic, and
every answer says so (`semantic: false`).

A whole batch is hashed at once with NumPy: the texts become one array of code points,
words are runs of word characters in it, and every n-gram hash is a 64-bit polynomial
hash (wrapping uint64 arithmetic) finished by a multiply-xorshift mix. The scheme is
pure integer arithmetic on code points, so a text has the same vector in any process, on
any platform, alone or in any batch.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from embedserve import (
    Backend,
    BackendCapabilities,
    BackendOptions,
    EmbeddingBatch,
    EmbedInput,
    ModelAbout,
    hookimpl,
)

# Bump when the hashing scheme changes: it is part of the space identity.
_ALGORITHM = "poly64-fmix-signed-v2"
# The signed hashing trick this backend implements.
_CITATION = """@inproceedings{weinberger2009feature,
  title     = {Feature Hashing for Large Scale Multitask Learning},
  author    = {Weinberger, Kilian and Dasgupta, Anirban and Langford, John and
               Smola, Alex and Attenberg, Josh},
  booktitle = {Proceedings of the 26th International Conference on Machine Learning},
  pages     = {1113--1120},
  year      = {2009}
}"""

_MASK64 = (1 << 64) - 1
# Odd 64-bit bases of the polynomial hashes: code points within a word (or a char n-gram),
# word hashes within a word n-gram. Part of the space identity through `_ALGORITHM`.
_CHAR_BASE = 0x9E3779B97F4A7C15
_WORD_BASE = 0xC2B2AE3D27D4EB4F
_PAD_START, _PAD_END = ord("<"), ord(">")
# A feature's count key is its row above `_ID_BITS` bits of its hash, so a pass has at
# most 2**(63 - _ID_BITS) rows; 43 bits make a false merge of two distinct features of one
# text about 1e-8 likely. A pass peaks at ~100 bytes per code point (default options):
# passes of at most 2**20 code points (and 4096 texts) keep that near 100 MB.
_ID_BITS = 43
_ROWS_PER_PASS = 4096
_POINTS_PER_PASS = 1 << 20
_SIGN_BIT = _ID_BITS - 1


def _mix_int(value: int) -> int:
    """The murmur3 64-bit finaliser on a Python int (for per-domain keys)."""
    value &= _MASK64
    value ^= value >> 33
    value = (value * 0xFF51AFD7ED558CCD) & _MASK64
    value ^= value >> 33
    value = (value * 0xC4CEB9FE1A85EC53) & _MASK64
    return value ^ (value >> 33)


def _mix(values: np.ndarray) -> np.ndarray:
    """The murmur3 64-bit finaliser, in place on a uint64 array.

    Polynomial hashes mod 2**64 have weak low bits (they depend only on the inputs' low
    bits); the mix spreads every input bit over every output bit before buckets are cut.
    """
    values ^= values >> np.uint64(33)
    values *= np.uint64(0xFF51AFD7ED558CCD)
    values ^= values >> np.uint64(33)
    values *= np.uint64(0xC4CEB9FE1A85EC53)
    values ^= values >> np.uint64(33)
    return values


@functools.lru_cache(maxsize=256)
def _domain_key(seed: int, kind: str, n: int) -> np.uint64:
    """The key of one feature family (word or char n-grams of length n) under a seed:
    features of different families or seeds never share a hash by construction."""
    seed_key = 0
    while True:  # a seed past 64 bits folds in limb by limb rather than aliasing
        seed_key = _mix_int(seed_key ^ (seed & _MASK64))
        seed >>= 64
        if not seed:
            break
    family = (1 if kind == "word" else 2) << 8 | n
    return np.uint64(_mix_int(seed_key ^ family))


# Classes of code points, as `re` sees them: `\w` word characters, `\s` white space, and
# the rest (punctuation, symbols), each of which is a token of its own.
_SYMBOL, _WORD, _SPACE = 0, 1, 2


@functools.cache
def _char_classes() -> np.ndarray:
    """The class of every code point, built from `re` itself once (~0.3 s, 1.1 MB): words
    are then exactly `\\w+` runs, in any script, as the base backend's tokens are."""
    every = "".join(map(chr, range(0x110000)))
    classes = np.zeros(0x110000, dtype=np.uint8)
    for pattern, value in ((r"\W", _WORD), (r"\S", _SPACE)):
        kept = re.sub(pattern, "\0", every).encode("utf-32-le", "surrogatepass")
        classes[np.frombuffer(kept, dtype=np.uint32) != 0] = value
    return classes


@functools.cache
def _word_chars() -> np.ndarray:
    """Whether each code point is a `\\w` word character."""
    return _char_classes() == _WORD


def _code_points(text: str) -> np.ndarray:
    """The code points of a text (lone surrogates included: JSON can carry them)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def _powers(base: int, length: int) -> np.ndarray:
    """base**0 .. base**(length-1) mod 2**64 (as long as the longest word: microseconds)."""
    powers = np.full(length, base, dtype=np.uint64)
    powers[0] = 1
    return np.cumprod(powers, dtype=np.uint64)


@dataclass
class _Words:
    """The words of a batch of texts, in order: their code points, one run after another
    (`chars`), where each starts in `chars`, its length and the row it comes from."""

    chars: np.ndarray  # uint64 code points of every word, concatenated
    starts: np.ndarray  # int64 offset of each word in `chars`
    lengths: np.ndarray  # int64 code points per word
    rows: np.ndarray  # int64 row of each word

    @classmethod
    def split(cls, texts: Sequence[str]) -> _Words:
        """Split texts into `\\w+` words. NUL, a non-word character, separates the texts
        (and ends the batch) so that no word spans two of them."""
        points = _code_points("\0" + "\0".join(texts) + "\0")
        is_word = _word_chars()[points]
        edges = np.flatnonzero(is_word[1:] != is_word[:-1]) + 1
        begins, ends = edges[0::2], edges[1::2]
        text_starts = np.cumsum([1] + [len(text) + 1 for text in texts[:-1]])
        lengths = ends - begins
        return cls(
            chars=points.take(np.flatnonzero(is_word)).astype(np.uint64),
            starts=np.cumsum(lengths) - lengths,
            lengths=lengths,
            rows=np.searchsorted(text_starts, begins, side="right") - 1,
        )

    def hashes(self) -> np.ndarray:
        """Polynomial hash of each word's code points (sum of c_k * B**(len-1-k))."""
        if not len(self.lengths):
            return np.zeros(0, dtype=np.uint64)
        from_end = np.repeat(self.starts + self.lengths - 1, self.lengths)
        from_end -= np.arange(len(self.chars))
        terms = self.chars * _powers(_CHAR_BASE, int(self.lengths.max()))[from_end]
        return np.add.reduceat(terms, self.starts)

    def padded(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every word as `<word>`, one after another: the code points, how many code
        points are left in the word from each position, and each position's row."""
        spans = self.lengths + 2
        word = np.arange(len(self.lengths))
        points = np.empty(len(self.chars) + 2 * len(self.lengths), dtype=np.uint64)
        points[np.arange(len(self.chars)) + np.repeat(2 * word + 1, self.lengths)] = self.chars
        first = self.starts + 2 * word
        points[first] = _PAD_START
        points[first + spans - 1] = _PAD_END
        left = np.repeat(first + spans, spans) - np.arange(len(points))
        return points, left, np.repeat(self.rows, spans)


def _word_ngrams(words: _Words, longest: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes and rows of every word n-gram, n = 1..longest.

    An n-gram folds the mixed hashes of its words as a polynomial, so an n-gram never
    crosses two texts (the rows of its first and last word must agree).
    """
    unigrams = _mix(words.hashes() + _domain_key(seed, "word", 1))
    hashes, rows = [unigrams], [words.rows]
    folded = unigrams
    for n in range(2, longest + 1):
        folded = folded[:-1] * np.uint64(_WORD_BASE) + unigrams[n - 1 :]
        same_text = np.flatnonzero(words.rows[: len(folded)] == words.rows[n - 1 :])
        hashes.append(_mix(folded.take(same_text) + _domain_key(seed, "word", n)))
        rows.append(words.rows.take(same_text))
    return np.concatenate(hashes), np.concatenate(rows)


def _char_ngrams(words: _Words, low: int, high: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes and rows of every character n-gram of `<word>`, n = low..high.

    A rolling polynomial: the hashes of n-grams at every position come from those of
    (n-1)-grams with one multiply-add, kept only where the n-gram fits in its word. The
    kept ones go straight into one array (no per-length arrays to concatenate).
    """
    points, left, position_rows = words.padded()
    fits = [np.flatnonzero(left[: len(points) - n + 1] >= n) for n in range(low, high + 1)]
    ends = np.cumsum([0] + [len(kept) for kept in fits])
    hashes = np.empty(ends[-1], dtype=np.uint64)
    rows = np.empty(ends[-1], dtype=np.int64)
    rolling = points
    for n in range(1, high + 1):
        if n > 1:
            rolling = rolling[:-1] * np.uint64(_CHAR_BASE) + points[n - 1 :]
        if n >= low:
            kept, start, end = fits[n - low], ends[n - low], ends[n - low + 1]
            np.take(rolling, kept, out=hashes[start:end])
            hashes[start:end] += _domain_key(seed, "char", n)
            _mix(hashes[start:end])
            np.take(position_rows, kept, out=rows[start:end])
    return hashes, rows


def _runs(ordered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each run of equal values of a sorted array starts, and its length."""
    starts_run = np.ones(len(ordered), dtype=bool)
    np.not_equal(ordered[1:], ordered[:-1], out=starts_run[1:])
    first = np.flatnonzero(starts_run)
    lengths = np.empty_like(first)
    lengths[:-1] = first[1:] - first[:-1]
    lengths[-1:] = len(ordered) - first[-1:]
    return first, lengths


def _weighted_buckets(
    hashes: np.ndarray, rows: np.ndarray, weight: float, dimensions: int
) -> tuple[np.ndarray, np.ndarray]:
    """Flat (row * dimensions + bucket) indices and signed weights of features of one
    weight (the word n-grams, or the character n-grams).

    A feature is the high `_ID_BITS` bits of its hash; each distinct feature of a text
    counts once, with weight * (1 + log(count)): the keys (row, feature) are sorted so
    equal features of a text sit together.
    """
    keys = (hashes >> np.uint64(64 - _ID_BITS)).view(np.int64)
    keys |= rows << _ID_BITS
    keys.sort()
    first, counts = _runs(keys)
    keys = keys.take(first)
    # Sign and bucket come from the feature bits, below the row. The sign bit keeps
    # colliding features from only ever adding up; the bucket is a multiply-shift of 32
    # other bits (no modulo bias, no division).
    sign = 1.0 - 2.0 * ((keys >> _SIGN_BIT) & 1)
    bucket = ((keys & 0xFFFFFFFF) * dimensions) >> 32
    return (keys >> _ID_BITS) * dimensions + bucket, sign * weight * (1 + np.log(counts))


def _passes(texts: Sequence[str]) -> Iterator[slice]:
    """Consecutive slices of a batch, each hashed in one pass: at most `_ROWS_PER_PASS`
    texts and, unless one text alone is longer, `_POINTS_PER_PASS` code points."""
    start, points = 0, 0
    for end, text in enumerate(texts):
        full = end - start == _ROWS_PER_PASS or points + len(text) > _POINTS_PER_PASS
        if full and end > start:
            yield slice(start, end)
            start, points = end, 0
        points += len(text)
    if start < len(texts):
        yield slice(start, len(texts))


class HashOptions(BackendOptions):
    """Options of the `hash` backend."""

    dimensions: int = Field(default=256, ge=8, le=65536, description="Length of each vector.")
    word_ngrams: int = Field(default=2, ge=1, le=4, description="Word n-grams of length 1..N.")
    char_ngrams: tuple[int, int] = Field(
        default=(3, 5), description="Character n-gram lengths (min, max) within each word."
    )
    char_weight: float = Field(
        default=0.5, ge=0, description="Weight of character n-grams vs words."
    )
    lowercase: bool = True
    seed: int = Field(
        default=0, ge=0, description="Changes every bucket: another seed, another space."
    )

    @model_validator(mode="after")
    def _char_range(self) -> HashOptions:
        low, high = self.char_ngrams
        if not 1 <= low <= high <= 10:
            raise ValueError("char_ngrams must be (min, max) with 1 <= min <= max <= 10")
        return self


class HashBackend(Backend):
    """Feature hashing into a fixed dimension, L2-normalised."""

    kind = "hash"
    description = "Feature hashing of word and character n-grams (lexical, non-semantic)."
    Options = HashOptions
    options: HashOptions

    @property
    def capabilities(self) -> BackendCapabilities:
        return self.capabilities_with(dimensions=self.options.dimensions, semantic=False)

    def space_identity(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "model": "hash",
            "algorithm": _ALGORITHM,
            **self.options.model_dump(mode="json"),
        }

    def about(self) -> ModelAbout:
        """No weights: the code is embedserve's own, under embedserve's licence."""
        return ModelAbout(model=f"hash ({_ALGORITHM})", license="Apache-2.0", citation=_CITATION)

    def load(self) -> None:
        """Build the code point tables now rather than in the first request."""
        _word_chars()

    def load_tokenizer(self) -> None:
        """The router counts tokens with the same code point tables."""
        _char_classes()

    def count_tokens(self, inputs: Sequence[EmbedInput]) -> list[int]:
        """The base backend's count (`\\w+` runs and single other non-space characters),
        vectorised like `embed_batch`: the router and each replica count every request,
        and the regex took as long as hashing the texts."""
        texts = [item.text for item in inputs]
        if not texts:
            return []
        # White space around each text: never a token, and it ends a word at the seam.
        classes = _char_classes()[_code_points(" " + " ".join(texts) + " ")]
        is_word = classes == _WORD
        starts_token = classes == _SYMBOL
        starts_token[1:] |= is_word[1:] & ~is_word[:-1]
        bounds = np.cumsum([1] + [len(text) + 1 for text in texts[:-1]])
        return np.add.reduceat(starts_token, bounds, dtype=np.int64).tolist()

    def embed_batch(self, inputs: Sequence[EmbedInput]) -> EmbeddingBatch:
        texts = [item.text for item in inputs]
        dense = np.zeros((len(texts), self.options.dimensions), dtype=np.float32)
        for rows in _passes(texts):
            dense[rows] = self._embed_texts(texts[rows])
        return EmbeddingBatch(dense=dense)

    def _embed_texts(self, texts: list[str]) -> np.ndarray:
        """L2-normalised float32 vectors of the texts of one pass."""
        options = self.options
        if options.lowercase:
            texts = [text.lower() for text in texts]
        words = _Words.split(texts)
        groups = [(*_word_ngrams(words, options.word_ngrams, options.seed), 1.0)]
        if options.char_weight > 0:  # weightless char n-grams would only cost time
            low, high = options.char_ngrams
            groups.append((*_char_ngrams(words, low, high, options.seed), options.char_weight))
        parts = [_weighted_buckets(h, r, w, options.dimensions) for h, r, w in groups]
        size = len(texts) * options.dimensions
        dense = np.bincount(
            np.concatenate([index for index, _ in parts]),
            weights=np.concatenate([weight for _, weight in parts]),
            minlength=size,
        ).reshape(len(texts), options.dimensions)
        norms = np.linalg.norm(dense, axis=1, keepdims=True)
        return (dense / np.where(norms == 0, 1, norms)).astype(np.float32)


@hookimpl
def register_backends(register) -> None:
    """Register the `hash` backend."""
    register(HashBackend)
