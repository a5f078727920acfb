"""Test-session hooks shared by every test file."""

from __future__ import annotations

import os

# One thread, as `scripts/test.sh` (CI) runs the suite, also when pytest is called directly:
# the tests that compare a Flower run with the in-process protocol to the last digit need the
# test process to sum in the order the one-thread simulation actors do (with two threads the
# census test's KL differed in the fifth digit). Set before torch is imported by any test.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files holding ``slow`` tests run first, in their usual order, the rest after them.

    CI runs the suite on two pytest-xdist workers that take whole files in this order
    (``--dist loadfile --no-loadscope-reorder``, ``scripts/test.sh``). Ordered by name, or by
    xdist's default of most tests first, a long file of few tests (the localhost deployment's
    two, 3.5 minutes) started last and ran alone at the end; started early, the short files fill
    the other worker around it. A stable sort keeps every file's own tests in order and
    contiguous."""
    slow = {item.path for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: item.path not in slow)
