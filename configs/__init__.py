"""Experiment configs: `default.py` declares every field; variants override."""
