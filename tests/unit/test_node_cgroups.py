"""The real node's cgroup path: one path for every hierarchy, under this process's own."""

from __future__ import annotations

from pathlib import Path

import pytest

from devcluster.node import NodeStartError, common_cgroup_path

CPU, MEMORY, PIDS = Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup/pids")


def test_the_deepest_own_path_when_the_others_lead_to_it() -> None:
    own = {CPU: "/", MEMORY: "/process_api/abc", PIDS: "/process_api"}
    assert common_cgroup_path(own) == "/process_api/abc"


def test_all_at_the_root() -> None:
    assert common_cgroup_path({CPU: "/", MEMORY: "/"}) == "/"


def test_own_paths_on_different_branches_are_refused() -> None:
    with pytest.raises(NodeStartError, match="none lies under both"):
        common_cgroup_path({CPU: "/a/b", MEMORY: "/c/d"})


def test_a_sibling_with_a_common_prefix_is_not_a_parent() -> None:
    with pytest.raises(NodeStartError):
        common_cgroup_path({CPU: "/job1", MEMORY: "/job10/x"})


def test_no_hierarchy_at_all() -> None:
    with pytest.raises(NodeStartError, match="no cgroup hierarchy"):
        common_cgroup_path({})
