"""protembed_distill: the offline multi-teacher distillation job (teachers -> data -> student -> train -> export).

This is the only place torch and transformers are imported; the server (``protembed``) never is.
"""
