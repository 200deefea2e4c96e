"""`local()`: an embedserve server for this program, used if one answers, else started."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from embedserve.client._clients import EmbedClient

Progress = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def local(
    config: str | Path | None = None,
    *,
    url: str | None = None,
    api_key: str | None = None,
    model: str | None = None,
    startup_timeout_s: float = 600.0,
    progress: Progress = _stderr,
) -> Iterator[EmbedClient]:
    """A client of a ready local server: the one at `url` (default: `$EMBEDSERVE_URL`,
    else the config's host and port) when it answers, else `embedserve serve` started on
    a free port, waited for until ready, and stopped on exit (only what this call started).

    Args:
        config: The config file a started server serves (None: the bundled one).
        url: Where to look for a running server first.
        api_key: An API key, when the server requires one.
        model: The client's default model.
        startup_timeout_s: How long to wait for a server to become ready.
        progress: Receives one-line progress messages (default: standard error).

    Raises:
        RuntimeError: the started server exited, or was not ready in time (with its log).
    """
    target = url or os.environ.get("EMBEDSERVE_URL") or _config_url(config)
    if _answers(target):
        progress(f"embedserve: using the server at {target}")
        with EmbedClient(target, api_key=api_key, model=model) as client:
            _wait_ready(client, time.monotonic() + startup_timeout_s, progress)
            yield client
        return
    server = _StartedServer(config, progress)
    try:
        with EmbedClient(server.url, api_key=api_key, model=model) as client:
            _wait_ready(client, time.monotonic() + startup_timeout_s, progress, server)
            yield client
    finally:
        server.stop(progress)


def _config_url(config: str | Path | None) -> str:
    from embedserve.config import load_config

    server = load_config(str(config) if config is not None else None).server
    host = "127.0.0.1" if server.host in ("0.0.0.0", "::") else server.host
    return f"http://{host}:{server.port}"


def _answers(url: str) -> bool:
    """An embedserve router answers liveness at `url`."""
    try:
        response = httpx.get(f"{url}/healthz", timeout=2)
    except httpx.TransportError:
        return False
    return response.status_code == 200 and response.json() == {"status": "ok"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _StartedServer:
    """`embedserve serve` in a session of its own, its output kept in a log file."""

    def __init__(self, config: str | Path | None, progress: Progress) -> None:
        port = _free_port()
        command = [sys.executable, "-m", "embedserve.cli.main", "serve", "--port", str(port)]
        if config is not None:
            command += ["--config", str(config)]
        self.url = f"http://127.0.0.1:{port}"
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed in stop())
            prefix="embedserve-local-", suffix=".log", delete=False
        )
        progress(f"embedserve: starting a server on port {port} (log: {self._log.name})")
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def check_running(self) -> None:
        """Raises RuntimeError, with the log's end, when the server has exited."""
        if self.process.poll() is not None:
            code = self.process.returncode
            raise RuntimeError(f"embedserve serve exited with {code}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's output."""
        text = Path(self._log.name).read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, progress: Progress) -> None:
        """Ctrl-C (the server deletes its app and stops its Ray), then kill what is left
        of the process group it leads."""
        progress("embedserve: stopping the server started for this program")
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self._log.close()
        os.unlink(self._log.name)


def _wait_ready(
    client: EmbedClient, deadline: float, progress: Progress, server: _StartedServer | None = None
) -> None:
    started, reported = time.monotonic(), 0.0
    while True:
        if server is not None:
            server.check_running()
        with contextlib.suppress(httpx.TransportError):
            if client.health().ready:
                progress(f"embedserve: ready at {client.base_url}")
                return
        waited = time.monotonic() - started
        if time.monotonic() > deadline:
            tail = f":\n{server.log_tail()}" if server is not None else ""
            raise RuntimeError(f"embedserve at {client.base_url} not ready in {waited:.0f} s{tail}")
        if waited - reported >= 5:
            reported = waited
            progress(f"embedserve: waiting for {client.base_url} to be ready ({waited:.0f} s)")
        time.sleep(0.5)
