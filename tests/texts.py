"""Natural English test texts from the Python documentation (`pydoc_data.topics`)."""

from __future__ import annotations

import re
from pydoc_data.topics import topics


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
