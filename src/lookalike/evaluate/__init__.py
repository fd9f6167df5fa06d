"""Evaluate: measure a trained LoRA on the person (likeness, leakage, preservation) from generated images."""
