"""One virtualenv per peer, built on first use from the pinned requirements in ``requirements/``.

The peers pin their own fastapi, uvicorn, pydantic and protobuf, which would break protembed's
environment, so each lives under ``<root>/<name>/venv`` (default ``~/.cache/protembed/peers``). A
venv is reused while the requirements it was built from are unchanged (a copy is kept inside it); a
failed install is reported with the tail of pip's log, and the benchmark goes on without that peer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from protembed_bench.peers.catalog import REQUIREMENTS_DIR, ServerSpec

DEFAULT_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "protembed" / "peers"
MARKER = "protembed-requirements.txt"


@dataclass
class PeerEnv:
    name: str
    python: Path | None  # None: not installed
    install_seconds: float = 0.0  # 0 when an existing venv was reused
    versions: dict[str, str] = field(default_factory=dict)
    error: str | None = None


def requirements_text(spec: ServerSpec) -> str:
    """The peer's requirements with ``-r`` includes expanded: what the venv is keyed on."""
    lines: list[str] = []
    for line in spec.requirements.read_text().splitlines():
        if line.startswith("-r "):
            lines += (REQUIREMENTS_DIR / line[3:].strip()).read_text().splitlines()
        else:
            lines.append(line)
    return "\n".join(ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")) + "\n"


def _base_python() -> str:
    """The interpreter protembed runs on, outside its venv (a venv made from a venv's python links back)."""
    return getattr(sys, "_base_executable", sys.executable)


def versions(python: Path, distributions: tuple[str, ...]) -> dict[str, str]:
    code = (
        "import json, sys\nfrom importlib import metadata\nout = {}\n"
        "for d in sys.argv[1:]:\n    try: out[d] = metadata.version(d)\n"
        "    except metadata.PackageNotFoundError: pass\nprint(json.dumps(out))"
    )
    done = subprocess.run(
        [str(python), "-c", code, *distributions], capture_output=True, text=True, timeout=60
    )
    return json.loads(done.stdout) if done.returncode == 0 else {}


def ensure(spec: ServerSpec, root: Path, install: bool, log: Callable[[str], None]) -> PeerEnv:
    """The peer's venv, built if missing or stale and ``install`` is true."""
    folder = root / spec.name
    venv = folder / "venv"
    python = venv / "bin" / "python"
    wanted = requirements_text(spec)
    marker = venv / MARKER
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return PeerEnv(spec.name, python, versions=versions(python, spec.distributions))
    if not install:
        return PeerEnv(spec.name, None, error=f"not installed in {venv} (run without --no-install)")
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / "install.log"
    log(f"bench peers: installing {spec.name} into {venv} (log: {log_path})")
    start = time.perf_counter()
    steps = [
        [_base_python(), "-m", "venv", "--clear", str(venv)],
        [str(python), "-m", "pip", "install", "--upgrade", "pip"],
        [str(python), "-m", "pip", "install", "-r", str(spec.requirements)],
    ]
    with log_path.open("w") as fh:
        for step in steps:
            fh.write(f"$ {' '.join(step)}\n")
            fh.flush()
            done = subprocess.run(step, stdout=fh, stderr=subprocess.STDOUT, cwd=REQUIREMENTS_DIR)
            if done.returncode != 0:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-6:]
                return PeerEnv(
                    spec.name,
                    None,
                    time.perf_counter() - start,
                    error=f"`{' '.join(step[-3:])}` exited {done.returncode}: " + " / ".join(tail),
                )
    marker.write_text(wanted)
    return PeerEnv(spec.name, python, time.perf_counter() - start, versions(python, spec.distributions))
