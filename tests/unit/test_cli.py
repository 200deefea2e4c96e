"""The `embedserve` command line, without Ray: config validation, plugins, token auth."""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import embedserve.cli as cli
from embedserve import __version__, default_registry
from embedserve._plugins import DISABLE_AUTOLOAD_ENV
from embedserve.cli import main
from embedserve.config import load_config
from embedserve.ray_auth import use_ray_token_auth


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
    assert args.handler is cli.cmd_serve


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
