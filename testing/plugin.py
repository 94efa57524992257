"""The pytest plugin (entry point `pytest11`): fixtures for plugin authors' tests."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from pylium.testing.lab import BPF_TEST_ROOT, Lab, remove_bpf_root, require_datapath, skip_or_fail


def pytest_sessionfinish(session, exitstatus) -> None:
    """The fixtures' BPF directories are removed one by one; their parent goes last."""
    remove_bpf_root()


def _need_datapath() -> None:
    reason = require_datapath()
    if reason:
        skip_or_fail(reason)


@pytest.fixture
def pylium_stage():
    """pylium_stage(plugin, sets=()) -> StageHarness: the plugin's stages in the kernel,
    driven by BPF_PROG_TEST_RUN; removed at teardown."""
    from pylium.testing.stage import StageHarness

    _need_datapath()
    made: list[StageHarness] = []

    def make(plugin: Any, sets: list[str] = ()) -> StageHarness:
        root = BPF_TEST_ROOT / f"stage-{uuid.uuid4().hex[:8]}"
        try:
            made.append(StageHarness(plugin, root, sets=sets))
        except BaseException:
            remove_bpf_root(root)  # a refused plugin leaves no pins either
            raise
        return made[-1]

    yield make
    for harness in made:
        harness.close()
    remove_bpf_root()


@pytest.fixture
def pylium_lab(tmp_path):
    """A node namespace with `start_agent()`, pods (`pod(name)`), an outside namespace."""
    _need_datapath()
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def pylium_cluster(tmp_path):
    """pylium_cluster(nodes=3, etcd_enabled=True, lease_ttl="15m", extra=()) -> ClusterLab:
    nodes on an underlay bridge with a real etcd; agents started with `node.start_agent()`."""
    from pylium.testing.cluster import ClusterLab

    _need_datapath()
    made: list[ClusterLab] = []

    def make(nodes: int = 3, **kw: Any) -> ClusterLab:
        made.append(ClusterLab(tmp_path / f"cluster{len(made)}", nodes, **kw))
        return made[-1]

    yield make
    for lab in made:
        lab.close()
