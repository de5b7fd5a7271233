"""Model code: dilated attention, its kernels, layers and the LongNet transformer.

Nothing here imports ``longnet_cli.data`` or a stage module; single-device code only.
"""
