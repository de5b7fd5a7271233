"""Data: corpus sources, tokenizers, the corpus format on disk (``format/``), versions, splits,
training windows.

Never imports model/ or a stage; only core/ from outside data/.
"""
