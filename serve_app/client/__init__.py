"""The Python client of embedserve: vectors that keep their space on the way to an index.

```python
from embedserve.client import EmbedClient, SpaceGuard

with EmbedClient("http://127.0.0.1:8000", model="all-minilm-l6-v2") as client:
    result = client.embed_text(["a first text", "a second one"])
    guard = SpaceGuard(result.space_id)  # bind the index to the space of its vectors
    guard.check(client.embed_text(["later"]).space_id)  # SpaceMismatch if another space
```

`local()` gives a client of a running local server, or starts one for the program.
"""

from embedserve.client._clients import AsyncEmbedClient, EmbedClient, Health
from embedserve.client._errors import (
    AuthenticationError,
    BadRequestError,
    EmbedServeAPIError,
    GatewayTimeoutError,
    ModelNotFoundError,
    RateLimitError,
    RequestTooLargeError,
    ServerError,
    ServiceUnavailableError,
)
from embedserve.client._local import local
from embedserve.client._results import (
    Embeddings,
    MultiVectorEmbeddings,
    SpaceStamp,
    SparseEmbeddings,
    Usage,
)
from embedserve.indexes import FaissIndex, QdrantIndex
from embedserve.space import SpaceGuard, SpaceMismatch

__all__ = [
    "AsyncEmbedClient",
    "AuthenticationError",
    "BadRequestError",
    "EmbedClient",
    "EmbedServeAPIError",
    "Embeddings",
    "FaissIndex",
    "GatewayTimeoutError",
    "Health",
    "ModelNotFoundError",
    "MultiVectorEmbeddings",
    "QdrantIndex",
    "RateLimitError",
    "RequestTooLargeError",
    "ServerError",
    "ServiceUnavailableError",
    "SpaceGuard",
    "SpaceMismatch",
    "SpaceStamp",
    "SparseEmbeddings",
    "Usage",
    "local",
]
