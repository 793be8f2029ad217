"""REST transport (FastAPI): ``create_app(settings)``."""

from protembed.http.app import create_app

__all__ = ["create_app"]
