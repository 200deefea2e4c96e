"""Choosing Ray's client authentication before Ray is imported (it reads the mode once).

A leaf module: it imports nothing of embedserve, so every command that connects to Ray
can call it first.
"""

from __future__ import annotations

import os
from pathlib import Path

RAY_TOKEN_FILE = Path("~/.ray/auth_token")


def use_ray_token_auth() -> None:
    """Ray 2.60 clusters started with `ray start` require token auth from clients: when a
    token file exists and no mode is chosen, select token mode (the token is read from
    `~/.ray/auth_token` or `RAY_AUTH_TOKEN` by Ray itself)."""
    has_token = "RAY_AUTH_TOKEN" in os.environ or RAY_TOKEN_FILE.expanduser().is_file()
    if has_token and "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"
