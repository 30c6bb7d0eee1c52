"""Adapters for model families: Hugging Face transformers (:mod:`.hf`)."""
