"""Ingest: decode the user's photos upright in RGB, refuse what cannot be trained on, say why."""
