"""``core.deprecated``: old import paths forward each moved name with a warning naming its home."""

from __future__ import annotations

import types
import warnings

import pytest

from longnet_cli.core.deprecated import forwarder


def test_a_moved_name_warns_naming_its_new_home_and_unknown_names_do_not_exist():
    old = types.ModuleType("old_home")
    old.__getattr__ = forwarder("old_home", {"join": "os.path"})
    with pytest.warns(
        DeprecationWarning, match=r"old_home\.join is deprecated.*use os\.path\.join"
    ):
        import os.path

        assert old.join is os.path.join
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError, match="'old_home' has no attribute 'split'"):
            old.split  # noqa: B018
