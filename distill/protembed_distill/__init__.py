"""protembed_distill: the offline multi-teacher distillation job.

Teachers -> data -> teacher cache -> student -> train -> export.

This is the only place torch and transformers are imported; the server (``protembed``) never is.
"""
