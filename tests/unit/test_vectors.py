"""Vector post-processing: base64 wire encoding, Matryoshka truncation, L2 normalisation."""

from __future__ import annotations

import array
import base64
import sys

import numpy as np
import pytest

from embedserve.serving.vectors import encode_base64, l2_normalize, truncate


@pytest.fixture
def vectors() -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.standard_normal((5, 48)).astype(np.float32)


def decode_base64(encoded: str) -> np.ndarray:
    """The inverse of `encode_base64`: little-endian float32 whatever the machine's order."""
    return np.frombuffer(base64.b64decode(encoded), dtype="<f4")


def openai_sdk_decode(encoded: str) -> tuple[list[float], list[float]]:
    """Both ways the official openai SDK decodes a base64 embedding (numpy / no numpy)."""
    raw = base64.b64decode(encoded)
    with_numpy = np.frombuffer(raw, dtype="float32").tolist()
    without_numpy = array.array("f", raw).tolist()
    return with_numpy, without_numpy


def test_base64_is_little_endian_float32(vectors: np.ndarray) -> None:
    for row in vectors:
        encoded = encode_base64(row)
        assert len(base64.b64decode(encoded)) == 4 * row.size
        decoded = np.frombuffer(base64.b64decode(encoded), dtype="<f4")
        np.testing.assert_array_equal(decoded, row)
        assert base64.b64decode(encoded) == row.astype("<f4").tobytes()


def test_base64_round_trip_is_exact(vectors: np.ndarray) -> None:
    for row in vectors:
        decoded = decode_base64(encode_base64(row))
        assert decoded.dtype == np.dtype("<f4")
        assert decoded.tobytes() == row.tobytes()


@pytest.mark.skipif(sys.byteorder != "little", reason="the SDK decodes in native byte order")
def test_base64_decodes_as_the_openai_sdk_does(vectors: np.ndarray) -> None:
    for row in vectors:
        with_numpy, without_numpy = openai_sdk_decode(encode_base64(row))
        assert with_numpy == row.tolist()
        assert without_numpy == row.tolist()


def test_base64_known_bytes() -> None:
    vector = np.array([1.0, -2.0, 0.5], dtype=np.float32)
    expected = base64.b64encode(b"\x00\x00\x80\x3f\x00\x00\x00\xc0\x00\x00\x00\x3f")
    assert encode_base64(vector) == expected.decode("ascii")


def test_base64_converts_other_dtypes_to_little_endian_float32() -> None:
    values = [0.25, -1.5, 3.0, 1e-3]
    big_endian = np.array(values, dtype=">f4")
    float64 = np.array(values, dtype=np.float64)
    expected = np.array(values, dtype="<f4")
    for vector in (big_endian, float64):
        np.testing.assert_array_equal(decode_base64(encode_base64(vector)), expected)


def test_base64_of_a_non_contiguous_row(vectors: np.ndarray) -> None:
    column = vectors[:, 3]
    assert not column.flags.c_contiguous
    np.testing.assert_array_equal(decode_base64(encode_base64(column)), column)


def test_truncate_keeps_the_first_components_without_renormalising(vectors: np.ndarray) -> None:
    cut = truncate(vectors, 16, renormalize=False)
    assert cut.shape == (5, 16)
    np.testing.assert_array_equal(cut, vectors[:, :16])


def test_truncate_renormalises_when_asked(vectors: np.ndarray) -> None:
    unit = l2_normalize(vectors)
    cut = truncate(unit, 16, renormalize=True)
    assert cut.shape == (5, 16)
    np.testing.assert_allclose(np.linalg.norm(cut, axis=1), 1.0, rtol=1e-6)
    # Same direction as the first 16 components.
    direction = unit[:, :16] / np.linalg.norm(unit[:, :16], axis=1, keepdims=True)
    np.testing.assert_allclose(cut, direction, rtol=1e-6)
    # Without renormalising, the first components of a unit vector are shorter than 1.
    assert (np.linalg.norm(truncate(unit, 16, renormalize=False), axis=1) < 1).all()


def test_truncate_does_not_modify_its_input(vectors: np.ndarray) -> None:
    before = vectors.copy()
    truncate(vectors, 8, renormalize=True)
    truncate(vectors, 8, renormalize=False)
    np.testing.assert_array_equal(vectors, before)


def test_truncate_to_full_length_is_identity_on_unit_vectors(vectors: np.ndarray) -> None:
    unit = l2_normalize(vectors)
    np.testing.assert_allclose(truncate(unit, 48, renormalize=True), unit, rtol=1e-6)


def test_truncate_keeps_zero_rows_zero() -> None:
    vectors = np.zeros((2, 8), dtype=np.float32)
    vectors[1, 6] = 1.0  # zero within the first 4 components
    with np.errstate(all="raise"):
        cut = truncate(vectors, 4, renormalize=True)
    np.testing.assert_array_equal(cut, np.zeros((2, 4)))


def test_l2_normalize_gives_unit_rows(vectors: np.ndarray) -> None:
    unit = l2_normalize(vectors)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(unit * np.linalg.norm(vectors, axis=1, keepdims=True), vectors)


def test_l2_normalize_keeps_zero_rows_zero(vectors: np.ndarray) -> None:
    vectors[2] = 0.0
    with np.errstate(all="raise"):  # no division by zero, no NaN
        unit = l2_normalize(vectors)
    np.testing.assert_array_equal(unit[2], np.zeros(48))
    assert np.isfinite(unit).all()
    np.testing.assert_allclose(np.linalg.norm(unit[[0, 1, 3, 4]], axis=1), 1.0, rtol=1e-6)


def test_l2_normalize_keeps_float32(vectors: np.ndarray) -> None:
    assert l2_normalize(vectors).dtype == np.float32
