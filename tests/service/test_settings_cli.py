"""Settings from env vars and flags; the ``protembed`` command and its subcommand table."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from protembed import cli
from protembed.settings import Settings, add_settings_arguments, settings_from_args, settings_table

REPO = Path(__file__).resolve().parents[2]


def test_env_prefix_and_redis_url_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROTEMBED_PORT", "9001")
    monkeypatch.setenv("PROTEMBED_PROVIDERS", "cuda, CPUExecutionProvider")
    monkeypatch.setenv("PROTEMBED_LONG_SEQUENCES", "chunk")
    monkeypatch.setenv("REDIS_URL", "redis://example:6379/0")
    s = Settings()
    assert s.port == 9001 and s.long_sequences == "chunk"
    assert s.providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert s.redis_url == "redis://example:6379/0"
    monkeypatch.setenv("PROTEMBED_REDIS_URL", "redis://other:1/0")
    assert Settings().redis_url == "redis://other:1/0"  # the prefixed name wins


def test_defaults() -> None:
    s = Settings()
    assert s.model == REPO / "models" / "protembed-student-v1"
    assert s.providers[0] == "CUDAExecutionProvider" and s.long_sequences == "chunk"
    assert s.redis_url is None and s.cache_max_bytes > 0


def test_flags_override_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROTEMBED_PORT", "9001")
    monkeypatch.setenv("PROTEMBED_MAX_BATCH_SIZE", "7")
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    args = parser.parse_args(
        ["--port", "9100", "--no-warmup", "--redis-url", "redis://x:1/0", "--model", "/m"]
    )
    s = settings_from_args(args)
    assert (s.port, s.warmup, s.redis_url, s.model, s.max_batch_size) == (
        9100,
        False,
        "redis://x:1/0",
        Path("/m"),
        7,
    )


def test_invalid_values_are_refused() -> None:
    with pytest.raises(ValueError, match="long_sequences"):
        Settings(long_sequences="split")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="port"):
        Settings(port=70000)


def test_settings_table_lists_every_field() -> None:
    table = settings_table()
    for name in Settings.model_fields:
        assert f"`--{name.replace('_', '-')}`" in table
    assert "REDIS_URL" in table


def test_cli_lists_commands_and_serve_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "serve" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    out = capsys.readouterr().out
    for flag in (
        "--host",
        "--port",
        "--grpc-port",
        "--model",
        "--redis-url",
        "--max-batch-tokens",
        "--long-sequences",
    ):
        assert flag in out


def test_missing_command_modules_are_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(cli.COMMANDS, "ghost", "protembed_nowhere.commands.ghost")
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert "ghost" not in sub.choices and "serve" in sub.choices


def test_missing_dependency_gives_install_hint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pkg = tmp_path / "fakecmd_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "needs_torch.py").write_text("import torch_that_is_not_installed_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "_DISTILL_DEPS", cli._DISTILL_DEPS | {"torch_that_is_not_installed_xyz"})
    monkeypatch.setitem(cli.COMMANDS, "fake", "fakecmd_pkg.needs_torch")
    assert cli.main(["fake"]) == 2
    assert "pip install 'protembed[distill]'" in capsys.readouterr().err


def test_serve_refuses_a_corrupt_model(tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text("{}")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "protembed",
            "serve",
            "--model",
            str(tmp_path),
            "--port",
            "0",
            "--grpc-port",
            "0",
            "--providers",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(REPO / "service"), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode != 0
    assert "model.json: not a valid model card" in proc.stderr + proc.stdout
