"""Properties of the `hash` backend: deterministic, normalised, lexical (not semantic).

Texts come from Python's own reference manual (`pydoc_data.topics`), so the lexical
properties are checked on natural English rather than on made-up word lists.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from itertools import combinations
from pydoc_data.topics import topics

import numpy as np
import pytest
from pydantic import ValidationError

from embedserve import Backend, EmbedInput, InputType, space_id
from embedserve.plugins import hash_backend
from embedserve.plugins.hash_backend import HashBackend


def _embed(texts: list[str], **options: object) -> np.ndarray:
    return HashBackend(options).embed_batch([EmbedInput(text) for text in texts]).dense


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a.astype(np.float64), b.astype(np.float64)))


def _paragraphs(topic: str) -> list[str]:
    """The prose paragraphs (more than 20 words) of one reference-manual topic."""
    paragraphs = (" ".join(p.split()) for p in topics[topic].split("\n\n"))
    return [p for p in paragraphs if len(p.split()) > 20]


def _sentences(limit: int = 300) -> list[str]:
    """Plain English sentences of 10 to 30 words from the reference manual."""
    found = []
    for topic in sorted(topics):
        for sentence in re.split(r"(?<=[.!?])\s+", " ".join(topics[topic].split())):
            plain = all(c.isalpha() or c in " ,.;'-()" for c in sentence)
            if plain and 10 <= len(sentence.split()) <= 30:
                found.append(sentence)
    return found[:limit]


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


FOR_STATEMENT = _paragraphs("for")[0]
FOR_PARAPHRASE = (
    "A for statement iterates over the elements of a sequence such as a list, a tuple or "
    "a string, or over any other iterable object."
)
EXCEPTIONS = _paragraphs("exceptions")[0]
# Words in other scripts, digits that are not ASCII, a combining accent (not a word
# character: it splits `e\u0301t\u00e9`), an emoji, underscores, a lone surrogate (JSON can
# carry one) and Greek capitals whose lowercase depends on context (final sigma).
NON_ASCII = (
    "Na\u00efve caf\u00e9 \u2014 Stra\u00dfe, \u6771\u4eac\u30bf\u30ef\u30fc! "
    "\u0661\u0662\u0663 x\u00b2 snake_case e\u0301t\u00e9 \U0001f642 "
    "\u039f\u0394\u03a5\u03a3\u03a3\u0395\u03a5\u03a3 \ud800lone \u0130stanbul"
)


# -- the scheme, one feature at a time ------------------------------------------------------

_MASK = (1 << 64) - 1


def _fmix(value: int) -> int:
    value &= _MASK
    value ^= value >> 33
    value = (value * 0xFF51AFD7ED558CCD) & _MASK
    value ^= value >> 33
    value = (value * 0xC4CEB9FE1A85EC53) & _MASK
    return value ^ (value >> 33)


def _poly(values: list[int], base: int) -> int:
    result = 0
    for value in values:
        result = (result * base + value) & _MASK
    return result


def _reference(
    text: str,
    dimensions: int = 256,
    word_ngrams: int = 2,
    char_ngrams: tuple[int, int] = (3, 5),
    char_weight: float = 0.5,
    lowercase: bool = True,
    seed: int = 0,
) -> np.ndarray:
    """The hashing scheme written out in plain Python ints, one feature at a time, with
    `re`'s own `\\w+` for words: what the vectorised backend must reproduce."""

    def key(family: int, n: int) -> int:
        return _fmix(_fmix(seed) ^ (family << 8 | n))

    words = re.findall(r"\w+", text.lower() if lowercase else text)
    unigrams = [
        _fmix(_poly([ord(c) for c in w], hash_backend._CHAR_BASE) + key(1, 1)) for w in words
    ]
    # A feature is the high 43 bits of its hash, among the features of its weight.
    features: Counter[tuple[int, int]] = Counter()
    for n in range(1, word_ngrams + 1):
        for i in range(len(words) - n + 1):
            folded = _poly(unigrams[i : i + n], hash_backend._WORD_BASE)
            value = unigrams[i] if n == 1 else _fmix(folded + key(1, n))
            features[1, value >> 21] += 1
    low, high = char_ngrams
    for word in words:
        padded = [ord("<"), *map(ord, word), ord(">")]
        for n in range(low, high + 1):
            for i in range(len(padded) - n + 1):
                value = _fmix(_poly(padded[i : i + n], hash_backend._CHAR_BASE) + key(2, n))
                features[2, value >> 21] += 1
    vector = np.zeros(dimensions)
    for (family, feature), count in features.items():
        sign = -1.0 if feature >> 42 & 1 else 1.0
        weight = char_weight if family == 2 else 1.0
        vector[((feature & 0xFFFFFFFF) * dimensions) >> 32] += sign * weight * (1 + math.log(count))
    norm = np.linalg.norm(vector)
    return vector / norm if norm else vector


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"dimensions": 97, "seed": 3},
        {"word_ngrams": 4, "char_ngrams": (1, 10)},
        {"char_ngrams": (2, 2), "char_weight": 1.5, "lowercase": False},
        {"word_ngrams": 1, "char_weight": 0},
    ],
)
def test_vectorised_backend_matches_the_feature_by_feature_scheme(
    options: dict[str, object],
) -> None:
    texts = [FOR_STATEMENT, FOR_PARAPHRASE, NON_ASCII, "the the the cat", "a", "", "x_1 y2"]
    dense = _embed(texts, **options)
    for row, text in enumerate(texts):
        assert np.allclose(dense[row], _reference(text, **options), atol=1e-6), text


def test_words_are_regex_word_runs_in_any_script() -> None:
    """Words are exactly `\\w+` runs: a text is its words joined by any non-word characters."""
    words = re.findall(r"\w+", NON_ASCII.lower())
    assert len(words) > 10
    rejoined = " ".join(words), "\u00a0;".join(words) + "!"
    dense = _embed([NON_ASCII, *rejoined])
    assert np.array_equal(dense[0], dense[1])
    assert np.array_equal(dense[0], dense[2])


# -- shape, determinism, normalisation ------------------------------------------------------


def test_vectors_have_configured_shape_and_float32() -> None:
    dense = _embed([FOR_STATEMENT, EXCEPTIONS, "x"], dimensions=96)
    assert dense.shape == (3, 96)
    assert dense.dtype == np.float32


def test_vectors_are_deterministic_across_instances() -> None:
    texts = [FOR_STATEMENT, FOR_PARAPHRASE, EXCEPTIONS]
    assert np.array_equal(_embed(texts, seed=7), _embed(texts, seed=7))


def test_hashing_scheme_is_pinned() -> None:
    """Changing the hashing must bump the algorithm name in the space identity.

    "hello" with words only and char trigrams has six features: the word `hello` (weight 1)
    and `<he hel ell llo lo>` (weight 0.5 each), so the norm before scaling is 1.5.
    """
    vector = _embed(["hello"], dimensions=64, word_ngrams=1, char_ngrams=(3, 3))[0]
    assert np.flatnonzero(vector).tolist() == [17, 23, 30, 36, 39, 41]
    expected = np.array([-0.5, -1, 0.5, -0.5, -0.5, -0.5]) / 1.5
    assert np.allclose(vector[np.flatnonzero(vector)], expected, atol=1e-6)


def test_rows_do_not_depend_on_the_rest_of_the_batch() -> None:
    texts = [FOR_STATEMENT, FOR_PARAPHRASE, EXCEPTIONS]
    batch = _embed(texts)
    for row, text in enumerate(texts):
        assert np.array_equal(batch[row], _embed([text])[0])


def test_a_text_alone_and_in_a_batch_of_256_is_one_vector() -> None:
    """Bit for bit: texts that end or begin mid-word, empty ones and non-ASCII ones among
    256 sentences, first, last and in between."""
    sentences = _sentences(250)
    texts = [FOR_STATEMENT, *sentences[:125], "", "ab", "cd!", NON_ASCII, *sentences[125:], " "]
    assert len(texts) == 256
    batch = _embed(texts)
    for row, text in enumerate(texts):
        assert np.array_equal(batch[row], _embed([text])[0]), text


def test_batches_larger_than_one_pass_are_stitched_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    texts = [FOR_STATEMENT, "", NON_ASCII, EXCEPTIONS, "x", "y z", ""]
    whole = _embed(texts)
    monkeypatch.setattr(hash_backend, "_ROWS_PER_PASS", 2)
    assert np.array_equal(_embed(texts), whole)
    monkeypatch.setattr(hash_backend, "_POINTS_PER_PASS", len(NON_ASCII))
    assert [(rows.start, rows.stop) for rows in hash_backend._passes(texts)] == [
        (0, 1),  # longer than a pass alone
        (1, 3),
        (3, 4),
        (4, 6),
        (6, 7),
    ]
    assert np.array_equal(_embed(texts), whole)


def test_seeds_past_64_bits_do_not_alias() -> None:
    texts = [FOR_STATEMENT]
    assert not np.array_equal(_embed(texts, seed=5), _embed(texts, seed=5 + 2**64))


@pytest.mark.parametrize("dimensions", [8, 64, 384, 4096])
def test_rows_are_l2_normalised(dimensions: int) -> None:
    dense = _embed(_sentences(100), dimensions=dimensions)
    norms = np.linalg.norm(dense.astype(np.float64), axis=1)
    assert np.all(np.abs(norms - 1) < 1e-6)


@pytest.mark.parametrize("text", ["", "   ", "!?", "\n\t"])
def test_texts_without_words_give_finite_zero_vectors(text: str) -> None:
    vector = _embed([text])[0]
    assert np.all(np.isfinite(vector))
    assert not vector.any()


def test_empty_batch() -> None:
    assert _embed([], dimensions=32).shape == (0, 32)


def test_input_type_does_not_change_vectors() -> None:
    """The space is symmetric: a query and a document of the same text are one vector."""
    backend = HashBackend()
    dense = backend.embed_batch(
        [EmbedInput(FOR_STATEMENT, InputType.QUERY), EmbedInput(FOR_STATEMENT)]
    ).dense
    assert np.array_equal(dense[0], dense[1])


# -- lexical similarity ---------------------------------------------------------------------


def test_paraphrase_sharing_words_beats_unrelated_paragraph() -> None:
    original, paraphrase, unrelated = _embed([FOR_STATEMENT, FOR_PARAPHRASE, EXCEPTIONS])
    assert _cosine(original, paraphrase) > 0.5
    assert _cosine(original, unrelated) < 0.2
    assert _cosine(original, paraphrase) > _cosine(original, unrelated) + 0.3


def test_overlapping_sentence_pairs_score_higher_than_disjoint_pairs() -> None:
    """Over every pair of some 300 manual sentences: sharing words means higher cosine."""
    sentences = _sentences()
    assert len(sentences) >= 200
    similarity = _embed(sentences).astype(np.float64)
    similarity = similarity @ similarity.T
    words = [_words(s) for s in sentences]

    by_overlap: dict[str, list[float]] = {"disjoint": [], "some": [], "high": []}
    for i, j in combinations(range(len(sentences)), 2):
        jaccard = len(words[i] & words[j]) / len(words[i] | words[j])
        bucket = "disjoint" if jaccard == 0 else "high" if jaccard > 0.3 else "some"
        by_overlap[bucket].append(similarity[i, j])

    means = {bucket: np.mean(values) for bucket, values in by_overlap.items()}
    assert all(len(values) >= 50 for values in by_overlap.values())
    assert means["disjoint"] < means["some"] < means["high"]
    assert means["high"] - means["disjoint"] > 0.4
    assert abs(means["disjoint"]) < 0.1


def test_word_order_matters_only_through_word_ngrams() -> None:
    text, shuffled = "the cat sat on the mat", "mat the on sat cat the"
    unigram = _embed([text, shuffled], word_ngrams=1)
    bigram = _embed([text, shuffled], word_ngrams=2)
    assert _cosine(*unigram) == pytest.approx(1.0, abs=1e-6)
    assert _cosine(*bigram) < 0.99


@pytest.mark.parametrize(
    ("word", "variant", "unrelated"),
    [
        ("embedding", "embeddings", "giraffe"),
        ("normalise", "normalised", "pineapple"),
        ("tokenizer", "tokenizers", "volcano"),
        ("iterate", "iterator", "banana"),
        ("running", "runner", "table"),
    ],
)
def test_character_ngrams_relate_morphological_variants(
    word: str, variant: str, unrelated: str
) -> None:
    base, related, other = _embed([word, variant, unrelated])
    assert _cosine(base, related) > _cosine(base, other) + 0.15


def test_without_character_ngrams_variants_are_unrelated() -> None:
    """With `char_weight: 0` only whole words count, so word forms stop sharing features."""
    with_chars = _embed(["embedding", "embeddings"])
    words_only = _embed(["embedding", "embeddings"], char_weight=0)
    assert _cosine(*with_chars) > 0.5
    assert _cosine(*words_only) < _cosine(*with_chars) - 0.5


def test_lowercase_option() -> None:
    assert np.array_equal(*_embed(["Hello World", "hello world"]))
    assert not np.array_equal(*_embed(["Hello World", "hello world"], lowercase=False))


# -- identity, capabilities, seed -----------------------------------------------------------


def test_token_counts_are_the_base_backends() -> None:
    """The vectorised count is the base backend's regex count, text by text."""
    texts = [
        *_sentences(50),
        FOR_STATEMENT,
        NON_ASCII,
        "",
        " ",
        "a,b",
        "end.",
        "...",
        "x\u00a0y\u2028z\u3000w",  # non-ASCII white space
        "tab\tand\nnewline",
        "\x00\x01",
    ]
    inputs = [EmbedInput(text) for text in texts]
    backend = HashBackend()
    assert backend.count_tokens(inputs) == Backend.count_tokens(backend, inputs)
    assert backend.count_tokens([]) == []


def test_another_seed_gives_another_space_and_other_vectors() -> None:
    seed0, seed1 = HashBackend({"seed": 0}), HashBackend({"seed": 1})
    assert space_id(seed0.space_identity()) != space_id(seed1.space_identity())

    texts = [FOR_STATEMENT]
    vector0, vector1 = _embed(texts, seed=0)[0], _embed(texts, seed=1)[0]
    assert abs(_cosine(vector0, vector1)) < 0.3


def test_equal_options_share_one_space() -> None:
    a = HashBackend({"dimensions": 128, "char_ngrams": [2, 4]})
    b = HashBackend({"char_ngrams": (2, 4), "dimensions": 128})
    assert space_id(a.space_identity()) == space_id(b.space_identity())


@pytest.mark.parametrize(
    "options",
    [
        {"dimensions": 128},
        {"word_ngrams": 1},
        {"char_ngrams": (2, 4)},
        {"char_weight": 1.0},
        {"lowercase": False},
        {"seed": 42},
    ],
)
def test_every_option_is_part_of_the_space(options: dict[str, object]) -> None:
    default = space_id(HashBackend().space_identity())
    assert space_id(HashBackend(options).space_identity()) != default


def test_space_identity_names_the_algorithm() -> None:
    identity = HashBackend().space_identity()
    assert identity["kind"] == "hash"
    assert identity["model"] == "hash"
    assert identity["algorithm"] == "poly64-fmix-signed-v2"
    assert space_id(identity).startswith("hash-")


def test_capabilities_say_lexical_and_normalised() -> None:
    capabilities = HashBackend({"dimensions": 384}).capabilities
    assert capabilities.semantic is False
    assert capabilities.normalized is True
    assert capabilities.dimensions == 384


def test_hash_backend_needs_no_model_hub() -> None:
    assert HashBackend().uses_model_hub is False


# -- options validation ---------------------------------------------------------------------


@pytest.mark.parametrize("char_ngrams", [(1, 1), (3, 5), (1, 10), (10, 10)])
def test_char_ngram_bounds_accepted(char_ngrams: tuple[int, int]) -> None:
    assert HashBackend({"char_ngrams": char_ngrams}).options.char_ngrams == char_ngrams


@pytest.mark.parametrize("char_ngrams", [(0, 3), (5, 3), (1, 11), (11, 11), (-1, 2)])
def test_char_ngram_bounds_rejected(char_ngrams: tuple[int, int]) -> None:
    with pytest.raises(ValidationError, match="char_ngrams must be"):
        HashBackend({"char_ngrams": char_ngrams})


@pytest.mark.parametrize("char_ngrams", [(3,), (1, 2, 3), "3-5"])
def test_char_ngrams_must_be_a_pair(char_ngrams: object) -> None:
    with pytest.raises(ValidationError, match="char_ngrams"):
        HashBackend({"char_ngrams": char_ngrams})


@pytest.mark.parametrize("dimensions", [8, 9, 65536])
def test_dimension_bounds_accepted(dimensions: int) -> None:
    assert _embed(["a b c"], dimensions=dimensions).shape == (1, dimensions)


@pytest.mark.parametrize("dimensions", [0, 7, 65537, -1])
def test_dimension_bounds_rejected(dimensions: int) -> None:
    with pytest.raises(ValidationError, match="dimensions"):
        HashBackend({"dimensions": dimensions})


@pytest.mark.parametrize(
    "options",
    [{"word_ngrams": 0}, {"word_ngrams": 5}, {"char_weight": -0.1}, {"seed": -1}],
)
def test_other_option_bounds_rejected(options: dict[str, object]) -> None:
    with pytest.raises(ValidationError, match=next(iter(options))):
        HashBackend(options)


def test_unknown_option_rejected() -> None:
    with pytest.raises(ValidationError, match="dims"):
        HashBackend({"dims": 64})
