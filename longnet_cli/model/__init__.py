"""Model code: dilated attention, its kernels, layers and the LongNet transformer, and the one
definition of the model's options (``config.py``, torch-free: importable without torch).

Nothing here imports ``longnet_cli.data`` or a stage module; single-device code only.
"""
