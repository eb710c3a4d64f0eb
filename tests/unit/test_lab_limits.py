"""The host limits a lab raises for its size (lab.netns.host_limits), and how it
says so or refuses (against a stand-in /proc/sys directory)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.netns import LabError, host_limits, raise_host_limits


def test_small_labs_need_nothing_and_400_nodes_need_a_bigger_neighbour_table() -> None:
    small = host_limits(30, 45)
    assert small["net.ipv6.neigh.default.gc_thresh3"] == 1024  # the kernel's default
    big = host_limits(400, 800)
    assert big["net.ipv6.neigh.default.gc_thresh3"] == 8 * 800 + 4 * 400
    assert big["net.ipv6.neigh.default.gc_thresh1"] < big["net.ipv6.neigh.default.gc_thresh2"] \
        < big["net.ipv6.neigh.default.gc_thresh3"]


def sysctl(root: Path, values: dict[str, int]) -> None:
    for key, value in values.items():
        path = root / key.replace(".", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{value}\n")


def test_limits_are_raised_never_lowered_and_said(tmp_path: Path) -> None:
    sysctl(tmp_path, {"net.ipv6.neigh.default.gc_thresh3": 1024, "kernel.pid_max": 4194304})
    said: list[str] = []
    changed = raise_host_limits({"net.ipv6.neigh.default.gc_thresh3": 8000,
                                 "kernel.pid_max": 32768}, said.append, tmp_path)
    assert changed == {"net.ipv6.neigh.default.gc_thresh3": (1024, 8000)}
    assert (tmp_path / "net/ipv6/neigh/default/gc_thresh3").read_text() == "8000\n"
    assert (tmp_path / "kernel/pid_max").read_text() == "4194304\n"
    assert said == ["raised the host's net.ipv6.neigh.default.gc_thresh3 from 1024 to 8000 "
                    "(a lab this size needs it)"]


def test_a_limit_that_cannot_be_raised_is_refused_by_name(tmp_path: Path) -> None:
    # A read-only sysctl of the real /proc stands in for one the host forbids (root
    # writes any plain file): ngroups_max is 0444 and refuses writes even to root.
    limit = tmp_path / "net/ipv6/neigh/default/gc_thresh3"
    limit.parent.mkdir(parents=True)
    limit.symlink_to("/proc/sys/kernel/ngroups_max")
    have = int(limit.read_text())
    with pytest.raises(LabError, match=rf"cannot raise net.ipv6.neigh.default.gc_thresh3 "
                                       rf"from {have} to {have + 1} \(Permission denied\)"):
        raise_host_limits({"net.ipv6.neigh.default.gc_thresh3": have + 1}, print, tmp_path)
    with pytest.raises(LabError, match=r"cannot read kernel\.pid_max"):
        raise_host_limits({"kernel.pid_max": 1}, print, tmp_path)


def test_the_lab_chooses_timers_that_hold_at_its_size() -> None:
    from lab.netns import describe_timers, lab_timers
    from mesh.site import parse_site

    small, mid, big = lab_timers(30, 2), lab_timers(200, 2), lab_timers(400, 2)
    assert small == {"hello_interval": 1, "dead_interval": 3, "bfd_interval_ms": 100,
                     "bfd_multiplier": 3}  # the site's defaults
    assert small["bfd_interval_ms"] < mid["bfd_interval_ms"] < big["bfd_interval_ms"]
    assert lab_timers(400, 4) == mid and lab_timers(400, 8) == small  # more cores: faster
    # With the node runtime a node weighs more: 45 of them on 2 cores get BFD 300 ms.
    assert lab_timers(45, 2) == small and lab_timers(45, 2, agent=True) == mid
    assert lab_timers(16, 2, agent=True) == small
    assert describe_timers(big) == ("hello 2 s, dead 8 s, BFD 1000 ms x 3 (a silent death "
                                    "seen after 3 s), SPF after 200 ms, then every 1000 ms "
                                    "to 5000 ms")
    assert describe_timers(mid).endswith("(a silent death seen after 0.9 s)")  # SPF at once
    # Each is a valid site: a fresh site file carries them.
    import tomllib

    from mesh.site import new_site_toml
    for t in (small, mid, big):
        site = parse_site(tomllib.loads(new_site_toml("t", timers=t)))
        assert {k: getattr(site.mesh, k) for k in t} == t
    with pytest.raises(ValueError, match="not a timer of \\[mesh\\]: hello"):
        new_site_toml("t", timers={"hello": 1})


def test_a_lab_that_does_not_fit_in_memory_is_refused_naming_what_would() -> None:
    from lab.netns import check_memory, memory_needed

    check_memory(400, False, 20000)  # FRR alone: ~6 GiB
    with pytest.raises(LabError, match=r"400 nodes with the node runtime needs about "
                                       r"20400 MiB .* 20000 MiB available; FRR alone "
                                       r"\(--frr-only\) needs about 6000 MiB"):
        check_memory(400, True, 20000)
    with pytest.raises(LabError, match="make the lab smaller"):
        check_memory(400, False, 1000)
    assert memory_needed(30, True) < 2000
