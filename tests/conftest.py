"""Shared pytest fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def droplet_store(tmp_path_factory):
    """Point the fit store at a fresh temporary folder for the whole test session.

    Set before any app or store code runs, so no test reads or writes ./.droplet-store.
    """
    root = tmp_path_factory.mktemp("droplet-store")
    mp = pytest.MonkeyPatch()
    mp.setenv("DROPLET_STORE", str(root))
    yield root
    mp.undo()
