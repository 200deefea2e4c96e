"""Loading and serving the default model opens no network connection.

A fresh interpreter with the replica environment (Hugging Face offline variables, as
`embedserve.runtime.placement.replica_env_vars` sets them) records every socket connection and name
lookup through Python's audit hooks while it loads the default config's MiniLM backend
and embeds with it, the code a replica runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.models

PROBE = textwrap.dedent(
    """
    import json, sys

    events = []

    def audit(event, args):
        if event in ("socket.connect", "socket.getaddrinfo", "socket.sendto"):
            events.append([event, repr(args[1] if event != "socket.getaddrinfo" else args)])

    sys.addaudithook(audit)

    from embedserve.backend import EmbedInput
    from embedserve.config import load_config

    config = load_config(None)
    backend = config.backend("minilm")
    backend.load()
    vectors = backend.embed_batch([EmbedInput("hello world")]).dense
    print(json.dumps({"offline": config.offline, "shape": list(vectors.shape),
                      "events": events}))
    """
)


def test_default_model_loads_and_embeds_without_network() -> None:
    from embedserve.config import load_config
    from embedserve.runtime.placement import replica_env_vars

    env_vars = replica_env_vars(load_config(None))
    assert env_vars["HF_HUB_OFFLINE"] == "1"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(env_vars)
    result = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["offline"] is True
    assert report["shape"] == [1, 384]
    assert report["events"] == []
