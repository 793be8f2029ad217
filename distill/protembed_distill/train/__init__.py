"""Training the student on the cached teacher embeddings: targets (:mod:`.targets`), batches
(:mod:`.batches`), losses (:mod:`.losses`), checkpoints (:mod:`.checkpoint`) and the
:class:`~.trainer.Trainer` (:mod:`.trainer`)."""
