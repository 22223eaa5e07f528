"""Sentence embeddings: the sentence-transformers pipeline (modules.json), its modules and pooling, and the
streaming encode that tokenizes one chunk ahead of the model."""
