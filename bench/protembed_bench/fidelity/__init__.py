"""Student fidelity measured as users get it (issue 17): full evaluation sets, whole sequences up to one
documented bound, the served variant, paired bootstrap intervals, and per-residue retention against the
teachers' residue states on chains held out of distillation."""
