"""Properties of the `hash` backend: deterministic, normalised, lexical (not semantic).

Texts come from Python's own reference manual (`pydoc_data.topics`), so the lexical
properties are checked on natural English rather than on made-up word lists.
"""

from __future__ import annotations

import re
from itertools import combinations
from pydoc_data.topics import topics

import numpy as np
import pytest
from pydantic import ValidationError

from plugins.hash_backend import HashBackend
from serve_app import EmbedInput, InputType, space_id


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
    assert np.flatnonzero(vector).tolist() == [4, 10, 28, 33, 35, 53]
    expected = np.array([1, 0.5, 0.5, -0.5, -0.5, -0.5]) / 1.5
    assert np.allclose(vector[np.flatnonzero(vector)], expected, atol=1e-6)


def test_rows_do_not_depend_on_the_rest_of_the_batch() -> None:
    texts = [FOR_STATEMENT, FOR_PARAPHRASE, EXCEPTIONS]
    batch = _embed(texts)
    for row, text in enumerate(texts):
        assert np.array_equal(batch[row], _embed([text])[0])


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
    assert identity["algorithm"].startswith("blake2b")
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
