"""``protembed bench peers``: protembed against general-purpose model servers on the same ONNX file.

Each peer (LitServe, mosec, BentoML, Ray Serve, PyTriton) serves the model through its own dynamic
batching from a wrapper in ``servers/``, run as a subprocess from its own virtualenv (their pins of
fastapi, uvicorn and pydantic would break protembed's environment). ``peer_model.py`` is the one model
adapter every wrapper shares and the harness's reference; ``catalog.py`` says how to start and talk
to each server; ``envs.py`` builds the virtualenvs; ``run.py`` drives them; ``report.py`` writes it up.
"""
