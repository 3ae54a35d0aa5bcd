"""The lab as a pytest fixture: real hosts (sshd + nginx), real simulators, real mail host."""
from __future__ import annotations

import pytest
from labtools import LAB_HOSTS, labctl, seed_registry


@pytest.fixture(scope="session")
def lab():
    """A fresh lab for the session: LAB_TEST_HOSTS hosts (default 3), torn down at the end."""
    labctl.up(LAB_HOSTS, fresh=True)
    yield labctl
    labctl.down()


@pytest.fixture
def fresh_lab(lab):
    """The lab reset to day zero (RENAPO gen1, hosts trusting only it, the registry approving only it) for a test
    that changes things."""
    labctl.up(LAB_HOSTS, fresh=True)
    seed_registry()
    return lab
