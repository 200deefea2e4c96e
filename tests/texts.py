"""Natural English test texts from the Python documentation (`pydoc_data.topics`)."""

from __future__ import annotations

import re
from pydoc_data.topics import topics

import numpy as np


def paragraphs(count: int, min_chars: int = 80, max_chars: int = 400) -> list[str]:
    """`count` distinct prose paragraphs, in a stable order."""
    found: list[str] = []
    for name in sorted(topics):
        for block in re.split(r"\n\s*\n", topics[name]):
            text = " ".join(block.split())
            if min_chars <= len(text) <= max_chars and text[0].isalpha() and text not in found:
                found.append(text)
                if len(found) == count:
                    return found
    raise ValueError(f"only {len(found)} paragraphs available")


def topic_retrieval_set() -> tuple[list[str], list[str]]:
    """A retrieval set from the same topics: each topic's title line is a query and the
    topic's text (title removed) is its one relevant document, at the same index."""
    queries, documents = [], []
    for name in sorted(topics):
        title, _, body = topics[name].strip().partition("\n")
        queries.append(title.strip())
        documents.append(" ".join(body.strip("*\n ").split()))
    return queries, documents


def recall_at(k: int, queries: np.ndarray, documents: np.ndarray) -> float:
    """Share of queries whose relevant document (same row) is among the `k` nearest by
    cosine (the vectors are normalised here)."""
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    documents = documents / np.linalg.norm(documents, axis=1, keepdims=True)
    nearest = np.argsort(-(queries @ documents.T), axis=1)[:, :k]
    return float(np.mean([row in found for row, found in enumerate(nearest)]))
