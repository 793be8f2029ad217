"""One short wrapper per peer framework, each run by ``python <file>`` from that peer's virtualenv.

Every wrapper serves POST JSON ``{"sequence": "..."}`` (or the framework's own envelope, see
``catalog.py``) and answers with the default output as base64 little-endian float32, through the
framework's documented dynamic batching; settings come from ``PROTEMBED_PEER_*`` (``peer_model.setting``).
"""
