"""Training data: the corpus read and normalized, what resembles the evaluation sets dropped (MMseqs2), a
seeded subset split into train and validation (:mod:`.dataset`)."""
