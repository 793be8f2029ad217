"""Container HEALTHCHECK: exit 0 when the server answers 200 on /readyz, 1 otherwise.

A script rather than curl because the slim images carry no HTTP client, and it reads the same
PROTEMBED_HOST / PROTEMBED_PORT variables the server binds to, so a changed port cannot leave the
check probing the wrong one. /readyz (model loaded and warmed) rather than /healthz: Docker has one
health state, and "healthy" should mean "can serve", which is what `depends_on: service_healthy`
and orchestrators without separate probes rely on. Standard library only.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping

# A wildcard bind address is reachable on loopback; a specific one must be probed as given.
_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


def probe_url(environ: Mapping[str, str], path: str = "/readyz") -> str:
    host = environ.get("PROTEMBED_HOST", "127.0.0.1").strip()
    host = _WILDCARDS.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    port = environ.get("PROTEMBED_PORT", "8000").strip()
    if not port.isdigit():
        raise ValueError(f"PROTEMBED_PORT={port!r} is not a port number")
    return f"http://{host}:{port}{path}"


def check(url: str, timeout_s: float = 4.0) -> tuple[bool, str]:
    """(healthy, one-line reason)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200, f"{url} -> {response.status}"
    except urllib.error.HTTPError as error:
        return False, f"{url} -> {error.code}"
    except (urllib.error.URLError, OSError) as error:
        return False, f"{url} -> {error}"


def main() -> int:
    try:
        url = probe_url(os.environ)
    except ValueError as error:
        print(f"healthcheck: {error}", file=sys.stderr)
        return 1
    healthy, reason = check(url)
    print(reason, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
