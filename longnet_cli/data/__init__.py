"""Data: corpus sources, tokenizers, token shards, training windows.

Never imports model/ or a stage.
"""
