"""The lab as a pytest fixture: real hosts (sshd + nginx), real simulators, real mail host.

One lab per process (per xdist worker: each on its own slot, see labtools.worker_slot), shared by the modules that
process runs. Every test starts from day zero as far as it can tell: a test that takes `fresh_lab` (it changes
things) gets a lab no other test has used since its reset; a test that takes `lab` (it only reads, and leaves the lab
as it found it) gets one no test has changed; a lab that is not fully up is reset. So no test depends on which
modules ran before it on its worker, and a reset is skipped only when nothing happened since the last one.
"""
from __future__ import annotations

from pathlib import Path

import labtools
import pytest
from labtools import labctl

HERE = Path(__file__).resolve().parent
# Longest first, so the workers take the long ones early and the short ones even out the end: seconds each module's
# tests took in all, measured on 2 loaded cores (tests that share module fixtures run as one block; see
# pytest_collection_modifyitems). A module not listed counts as short; the figures only order, they never skip.
MODULE_SECONDS = {
    "test_rollout.py": 1050, "test_trust.py": 330, "test_renew_resume.py": 240, "test_report.py": 150,
    "test_awx_runner.py": 150, "test_expiry_scan.py": 135, "test_procedure.py": 125, "test_operator_guide.py": 115,
    "test_mailbox.py": 85, "test_third_provider.py": 60, "test_simulators.py": 50, "test_procedure_sat.py": 40,
    "test_lab.py": 30, "test_mailhost.py": 15,
}
# Module fixtures of this conftest itself do not tie a module's tests together.
OWN_MODULE_FIXTURES = {"_lab_day_zero_per_module"}


def _shares_module_fixtures(item) -> bool:
    defs = getattr(item, "_fixtureinfo", None)
    return defs is not None and any(
        d.scope in ("class", "module", "package") and d.argname not in OWN_MODULE_FIXTURES
        for seq in defs.name2fixturedefs.values() for d in seq[-1:])


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(session, config, items):
    """Heavy modules first (a stable sort: the order inside a module is untouched, and it is the same in every
    worker). The tests of a module that has module fixtures (built once, shared by its tests) form one xdist group,
    so `--dist loadgroup` runs them on one worker; every other test is scheduled on its own. The hook sees the
    whole session: only this directory's items are touched, within the places they hold."""
    here = [i for i, item in enumerate(items) if item.path.parent == HERE]
    ordered = sorted((items[i] for i in here), key=lambda item: -MODULE_SECONDS.get(item.path.name, 0))
    for i, item in zip(here, ordered, strict=True):
        items[i] = item
        if _shares_module_fixtures(item):
            item.add_marker(pytest.mark.xdist_group(item.path.stem))


@pytest.fixture(scope="session")
def lab():
    """This process's lab, brought to day zero on first use (LAB_TEST_HOSTS hosts, default 3), torn down at the
    end of the session."""
    labtools.reset()
    yield labctl
    labctl.down()


def _uses_lab(item) -> bool:
    return "lab" in getattr(item, "fixturenames", ())


@pytest.fixture(scope="module", autouse=True)
def _lab_day_zero_per_module(request):
    """A module's own module-scoped fixtures are built on a lab no test has changed (they run before any test of
    the module and must not see it reset under them)."""
    if any(_uses_lab(item) for item in request.session.items if item.module is request.module):
        request.getfixturevalue("lab")
        labtools.ensure_day_zero(for_change=False)
    yield


@pytest.fixture(autouse=True)
def _lab_day_zero_per_test(request):
    if not _uses_lab(request.node):
        yield
        return
    change = "fresh_lab" in request.fixturenames
    request.getfixturevalue("lab")
    labtools.ensure_day_zero(for_change=change)
    labtools.mark_used(changed=change)
    yield


@pytest.fixture
def fresh_lab(lab):
    """The lab at day zero (RENAPO gen1, hosts trusting only it, the registry approving only it), used by no other
    test since its reset, for a test that changes things."""
    return lab
