"""Training the student on the cached teacher embeddings: targets (:mod:`.targets`), batches
(:mod:`.batches`), losses (:mod:`.losses`), checkpoints (:mod:`.checkpoint`), the :class:`~.trainer.Trainer`
(:mod:`.trainer`) and the size sweep (:mod:`.sweep`)."""
