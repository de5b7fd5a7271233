"""Deprecated: the checkpoint functions moved to ``longnet_cli.artifacts.checkpoints``.

``from longnet_cli.checkpoints import load_model_weights`` (the path scripts may hold from before
the package was laid out by stage) keeps working for one release, with a DeprecationWarning that
names the new home. Nothing in longnet imports this module. To load a model, prefer
``from longnet_cli import load_model``, which also verifies the checkpoint's hashes.
"""

import longnet_cli.artifacts.checkpoints as _new_home
from longnet_cli.core.deprecated import forwarder

__getattr__ = forwarder(
    __name__,
    {name: _new_home.__name__ for name in dir(_new_home) if not name.startswith("_")},
)
