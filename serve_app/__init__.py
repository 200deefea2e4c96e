"""embedserve core: the backend contract, plugin hooks, config and API schemas.

Importing this package never imports torch or starts Ray.
"""

from embedserve._hookspecs import hookimpl
from embedserve._plugins import BackendRegistry, PluginError, PluginSource, default_registry
from embedserve.backend import (
    Backend,
    BackendCapabilities,
    BackendOptions,
    BackendUnavailable,
    EmbeddingBatch,
    EmbedInput,
    Execution,
    InputType,
    Modality,
    ModelAbout,
    OutputKind,
    SparseVector,
)
from embedserve.space import space_id

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendCapabilities",
    "BackendOptions",
    "BackendRegistry",
    "BackendUnavailable",
    "EmbedInput",
    "EmbeddingBatch",
    "Execution",
    "InputType",
    "Modality",
    "ModelAbout",
    "OutputKind",
    "PluginError",
    "PluginSource",
    "SparseVector",
    "__version__",
    "default_registry",
    "hookimpl",
    "space_id",
]
