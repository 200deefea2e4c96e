"""The `embedserve` command line, without Ray: config validation, plugins, token auth, the
checks `serve` and `status` make before Ray starts, and what `serve` shows of Ray's output."""

from __future__ import annotations

import importlib.metadata
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import embedserve.cli.main as cli
import embedserve.cli.serve as serve_cli
import embedserve.cli.serve_console as serve_console
from embedserve import __version__, default_registry
from embedserve._plugins import DISABLE_AUTOLOAD_ENV
from embedserve.cli.main import main
from embedserve.cli.ray_auth import ChosenCluster, choose_cluster, use_ray_token_auth
from embedserve.config import load_config
from tests.integration.conftest import free_port


@pytest.fixture(autouse=True)
def fresh_default_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI reads the real entry points; forget the cached registry around each test."""
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
    default_registry.cache_clear()
    yield
    default_registry.cache_clear()


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "embedserve.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# -- config validate ------------------------------------------------------------------------


def test_validate_default_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "validate"]) == 0

    out = capsys.readouterr().out
    config = load_config()
    assert out.startswith("bundled default config: valid\n")
    assert "model all-minilm-l6-v2\n" in out
    assert f"  primary  minilm (sentence-transformers) space {config.space_id('minilm')}" in out
    assert "model hash\n" in out
    assert f"  primary  hash (hash) space {config.space_id('hash')}" in out


def test_validate_file_shows_chain_roles_and_cross_space_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(
        tmp_path,
        {
            "backends": {"a": {"kind": "hash"}, "b": {"kind": "hash", "options": {"seed": 1}}},
            "models": {"m": {"chain": ["a", "b"], "allow_cross_space": True}},
        },
    )
    assert main(["config", "validate", str(path)]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{path}: valid"
    assert lines[1] == "model m (cross-space fallback allowed)"
    assert lines[2].startswith("  primary  a (hash) space hash-")
    assert lines[3].startswith("  fallback b (hash) space hash-")
    assert lines[2].rsplit(" ", 1)[1] != lines[3].rsplit(" ", 1)[1]


def test_validate_broken_file_exits_2_with_key_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(
        tmp_path,
        {"backends": {"x": {"kind": "hash", "batchin": {}}}, "models": {"m": {"chain": ["x"]}}},
    )
    assert main(["config", "validate", str(path)]) == 2

    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"embedserve: {path} is invalid:")
    assert "backends.x.batchin: Extra inputs are not permitted" in captured.err


def test_validate_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "validate", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read config file" in capsys.readouterr().err


def test_validate_broken_plugin_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = importlib.metadata.EntryPoint("broken", "no_such_module_x", "embedserve.backends")
    monkeypatch.setattr(
        importlib.metadata, "entry_points", lambda **_: importlib.metadata.EntryPoints([broken])
    )
    assert main(["config", "validate"]) == 2
    assert "embedserve: plugin 'broken' failed to import" in capsys.readouterr().err


# -- plugins --------------------------------------------------------------------------------


def test_plugins_lists_builtin_and_third_party_plugins(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["plugins"]) == 0

    lines = capsys.readouterr().out.splitlines()
    embedserve = f"embedserve {importlib.metadata.version('embedserve')}"
    example = f"embedserve-example-plugin {importlib.metadata.version('embedserve-example-plugin')}"
    assert f"hash: {embedserve}" in lines
    assert f"sentence-transformers: {embedserve}" in lines
    assert f"letter-frequency: {example}" in lines


def test_plugins_describes_each_backend_under_its_plugin(
    capsys: pytest.CaptureFixture[str],
) -> None:
    main(["plugins"])
    out = capsys.readouterr().out
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("hash: "))
    hash_section = lines[start + 1 : start + 4]

    assert hash_section[0].startswith("  backend hash: Feature hashing")
    assert hash_section[1] == "    modalities: text; outputs: dense"
    assert hash_section[2].startswith("    options: dimensions, word_ngrams, char_ngrams")
    assert "  backend letter-frequency: Letter frequencies" in out


def test_plugins_with_autoload_disabled(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    assert main(["plugins"]) == 0
    assert capsys.readouterr().out == "no plugins registered\n"


# -- arguments ------------------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out == f"embedserve {__version__}\n"


def test_a_verb_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main([])
    assert caught.value.code == 2
    assert "required" in capsys.readouterr().err


def test_serve_arguments_parse() -> None:
    args = cli.build_parser().parse_args(
        ["serve", "--config", "c.yaml", "--address", "auto", "--port", "9000"]
    )
    assert (args.config, args.address, args.host, args.port) == ("c.yaml", "auto", None, 9000)
    assert args.handler is serve_cli.cmd_serve


# -- Ray token auth -------------------------------------------------------------------------


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty home folder and no Ray auth variables; restored after the test."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def _write_token(home: Path) -> None:
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text("secret-token\n")


def test_token_file_selects_token_auth(home: Path) -> None:
    _write_token(home)
    use_ray_token_auth()
    assert os.environ["RAY_AUTH_MODE"] == "token"


def test_token_env_var_selects_token_auth(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN", "secret-token")
    use_ray_token_auth()
    assert os.environ["RAY_AUTH_MODE"] == "token"


def test_no_token_leaves_auth_mode_unset(home: Path) -> None:
    use_ray_token_auth()
    assert "RAY_AUTH_MODE" not in os.environ


def test_token_path_that_is_a_folder_is_no_token(home: Path) -> None:
    (home / ".ray" / "auth_token").mkdir(parents=True)
    use_ray_token_auth()
    assert "RAY_AUTH_MODE" not in os.environ


def test_explicit_auth_mode_is_never_overridden(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_token(home)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    use_ray_token_auth()
    assert os.environ["RAY_AUTH_MODE"] == "disabled"


# -- serve refuses a port that is taken, before starting Ray ------------------------------

HASH_ONLY = {"backends": {"hash": {"kind": "hash"}}, "models": {"hash": {"chain": ["hash"]}}}


# A Serve proxy listens with SO_REUSEPORT, so a second proxy could bind beside it.
_REUSEPORT_LISTENER = """
import socket, sys, time
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
sock.bind((sys.argv[1], int(sys.argv[2])))
sock.listen()
time.sleep(120)
"""


@pytest.fixture(
    params=[
        ("http.server", "127.0.0.1", "127.0.0.1"),
        ("SO_REUSEPORT listener", "127.0.0.1", "127.0.0.1"),
        # Nothing answers on 127.0.0.1, but serve's 0.0.0.0 includes the listener's address.
        ("SO_REUSEPORT listener", "127.0.0.2", "0.0.0.0"),
    ],
    ids=["http.server", "SO_REUSEPORT listener", "listener on another address"],
)
def busy_port(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    """A port another process listens on (a plain HTTP server, or a socket bound as Ray
    Serve's proxy binds its port), and the host serve is asked to listen on."""
    kind, listen_on, serve_host = request.param
    port = free_port()
    if kind == "http.server":
        command = [sys.executable, "-m", "http.server", str(port), "--bind", listen_on]
    else:
        command = [sys.executable, "-c", _REUSEPORT_LISTENER, listen_on, str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection((listen_on, port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the other server did not start"
                time.sleep(0.1)
        yield serve_host, port
    finally:
        server.kill()
        server.wait()


def test_serve_refuses_a_port_in_use_before_starting_ray(
    tmp_path: Path, busy_port: tuple[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    # Unit tests make ray.init fail: the refusal must come before Ray starts.
    host, port = busy_port
    config = _write(tmp_path, HASH_ONLY)
    argv = ["serve", "--config", str(config), "--host", host, "--port", str(port)]
    assert main(argv) == 2

    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert f"port {port} on {host} is in use" in line and "--port" in line


# -- a stale Ray address file is named, not retried ---------------------------------------


@pytest.fixture
def stale_ray_address(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Ray's address file (under RAY_TMPDIR) naming a head that is gone."""
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    address = f"127.0.0.1:{free_port()}"
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(address)
    return address


@pytest.mark.parametrize(
    "argv",
    [["status"], ["serve", "--address", "auto"]],
    ids=["status", "serve --address auto"],
)
def test_a_stale_ray_address_file_is_one_line_not_a_retry_loop(
    stale_ray_address: str, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Unit tests make ray.init fail: the refusal must come before Ray is asked.
    assert main(argv) == 2

    (line,) = capsys.readouterr().err.splitlines()
    assert "ray_current_cluster" in line and stale_ray_address in line
    assert "--address" in line


def test_a_live_ray_address_is_not_refused(
    stale_ray_address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as head:
        head.bind(("127.0.0.1", int(stale_ray_address.rsplit(":", 1)[1])))
        head.listen()
        with pytest.raises(AssertionError, match="must not start or join Ray"):
            main(["status"])


def test_status_with_a_stale_address_file_exits_at_once(stale_ray_address: str) -> None:
    # Ray itself retries a dead GCS address for minutes, printing connection warnings.
    started = time.monotonic()
    status = subprocess.run(
        [sys.executable, "-m", "embedserve.cli.main", "status"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 2, status.stderr
    assert time.monotonic() - started < 30
    assert status.stdout == ""
    (line,) = status.stderr.splitlines()
    assert line.startswith("embedserve: ") and stale_ray_address in line


@pytest.fixture
def ray_address_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Where Ray's address file is (under RAY_TMPDIR), not written yet; no RAY_ADDRESS."""
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "ray").mkdir()
    return tmp_path / "ray" / "ray_current_cluster"


def test_status_says_it_joins_the_address_given(
    ray_address_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `embedserve status` showed another server's deployments without naming the cluster.
    ray_address_file.write_text("10.0.0.7:6379")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.6:6379")
    chosen = choose_cluster("10.0.0.5:6379")
    assert chosen == ChosenCluster("10.0.0.5:6379", "from --address")
    assert chosen.describe("10.0.0.5:6379") == "cluster 10.0.0.5:6379 (from --address)"


def test_status_says_it_joins_ray_address_before_the_address_file(
    ray_address_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ray_address_file.write_text("10.0.0.7:6379")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.6:6379")
    assert choose_cluster("auto") == ChosenCluster("10.0.0.6:6379", "from RAY_ADDRESS")


def test_status_says_it_joins_the_last_ray_start_here(ray_address_file: Path) -> None:
    ray_address_file.write_text("10.0.0.7:6379\n")
    chosen = choose_cluster("auto")
    assert chosen.address == "10.0.0.7:6379"
    assert str(ray_address_file) in chosen.how and "ray start --head" in chosen.how


def test_status_says_when_nothing_chose_the_cluster(ray_address_file: Path) -> None:
    chosen = choose_cluster("auto")
    assert chosen.address == "auto"
    assert "no --address, RAY_ADDRESS or Ray address file" in chosen.how


# -- what serve's console shows of Ray's workers ------------------------------------------

# Lines Ray's workers printed during `embedserve serve` on the bundled config, and whether
# the console shows them.
WORKER_LINES = {
    "INFO 2026-12-01 16:19:12,529 controller 9889 -- Deploying new version of "
    "Deployment(name='minilm', app='embedserve') (initial target replicas: 1).": False,
    "WARNING 2026-12-01 16:19:12,533 controller 9889 -- Cannot deregister autoscaling state "
    "for deployment Deployment(name='router', app='embedserve') because it is not "
    "registered": False,
    "2026-12-01 16:19:09,825\tINFO worker.py:2029 -- Started a local Ray instance.": False,
    "[2026-12-01 16:22:24,790 I 17346 17346] core_worker.cc:512: Constructing CoreWorker": False,
    "Loading weights:   0%|          | 0/103 [00:00<?, ?it/s]Loading weights: 100%|"
    "██████████| 103/103 [00:00<00:00, 20613.29it/s]": False,
    "WARNING 2026-12-01 16:19:29,394 embedserve_router 1ths7dmn -- backend minilm did not "
    "describe itself: TimeoutError": True,
    "ERROR 2026-12-01 16:19:29,394 embedserve_minilm 2elww5pl -- backend minilm: canary "
    "FAILED": True,
    # A traceback shows only its exception line: the replica's log has the rest.
    "Traceback (most recent call last):": False,
    '  File "/ray/serve/_private/replica.py", line 1234, in initialize_and_get_metadata': False,
    "    await self._user_callable_wrapper.initialize_callable()": False,
    "    ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^": False,
    "During handling of the above exception, another exception occurred:": False,
    "ERROR 2026-12-08 01:35:14,670 controller 30270 -- Exception in Replica(id='jjzlbdwr', "
    "deployment='hash', app='embedserve'), the replica will be stopped.": False,
    "ray.exceptions.RayTaskError(RuntimeError): ray::ServeReplica:embedserve:hash."
    "initialize_and_get_metadata() (pid=31042, ip=192.0.2.2)": False,
    "RuntimeError: Traceback (most recent call last):": False,
    "KeyError: \"unknown backend kind 'hash' (registered kinds: none)\"": True,
    "[2026-12-01 16:22:24,790 W 17346 17346] rpc_client.h:153: Failed to connect to GCS": True,
    "2026-12-01 16:19:05,590\tWARNING worker.py:1 -- A worker died": True,
    "print() output of a backend": True,
}


def test_serve_console_shows_workers_warnings_and_errors_only(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Ray's own dispatcher of worker output, as `ray.init(log_to_driver=True)` feeds it.
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    serve_console.quiet_worker_output()
    try:
        for is_err in (False, True):
            batch = {"ip": "10.0.0.1", "pid": 42, "is_err": is_err, "actor_name": "Replica"}
            dispatcher.emit({**batch, "lines": list(WORKER_LINES)})
    finally:
        dispatcher.remove_handler("ray_print_logs")

    captured = capsys.readouterr()
    printed = captured.out + captured.err
    for line, shown in WORKER_LINES.items():
        assert (line in printed) is shown, line
    assert "(Replica pid=42" in printed
    # Serve retries a replica that raised: its exception reaches the console once.
    assert printed.count("KeyError: ") == 1
    for line in ("print() output of a backend", "ERROR 2026-12-01 16:19:29,394"):
        assert line in captured.out and line in captured.err
