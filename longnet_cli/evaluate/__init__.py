"""Evaluation: the scorer and stage, the copy probe, reports, and the context study's table."""
