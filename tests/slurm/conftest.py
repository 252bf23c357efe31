"""``slurm_cluster``: a real one-node SLURM cluster for the session (tests/slurm/cluster.sh).

It skips only where the cluster cannot exist: not root, or slurm absent and apt unreachable.
Set ``PACOFR_REQUIRE_SLURM=1`` to turn those skips into failures (a CI that must run them).
A cluster that this session started is stopped at the end; one that was already up is left up.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from slurm_harness import ClusterUnavailable, SlurmCluster, start_cluster, stop_cluster


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    try:
        cluster = start_cluster()
    except ClusterUnavailable as exc:
        if os.environ.get("PACOFR_REQUIRE_SLURM") == "1":
            pytest.fail(f"PACOFR_REQUIRE_SLURM=1 but no SLURM test cluster: {exc}")
        pytest.skip(f"no SLURM test cluster: {exc}")
    yield cluster
    cluster.cancel_all()
    if cluster.started_here:
        stop_cluster(cluster)
