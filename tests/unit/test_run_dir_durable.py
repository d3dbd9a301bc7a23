"""The warning for a run_dir that a reboot empties while the data directory survives: it holds
the marker of a copy or pg_rewind in progress (agent/postgres/datadir.py `copy_marker`), and a
torn data directory whose marker was lost is taken as whole."""

from __future__ import annotations

from agent.postgres.datadir import volatile_run_dir

MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 259:1 / / rw,relatime shared:1 - ext4 /dev/root rw
30 27 0:25 / /run rw,nosuid,nodev shared:5 - tmpfs tmpfs rw,size=2457600k,mode=755
31 30 0:26 / /run/lock rw,nosuid,nodev shared:6 - tmpfs tmpfs rw,size=5120k
40 27 259:2 / /var/lib/postgresql rw,relatime shared:9 - xfs /dev/sdb1 rw
41 27 259:3 / /srv/run\\040dir rw,relatime shared:10 - ext4 /dev/sdc1 rw
42 41 0:30 / /srv/run\\040dir/volatile rw,relatime shared:11 - tmpfs tmpfs rw
"""

DATA = "/var/lib/postgresql/15/main"


def test_a_run_dir_on_a_tmpfs_beside_a_lasting_data_directory_is_named() -> None:
    why = volatile_run_dir("/run/pgwarden", DATA, MOUNTINFO)
    assert why == "run_dir /run/pgwarden is on tmpfs, the data directory on xfs"


def test_a_run_dir_on_the_data_volume_or_the_root_filesystem_is_durable() -> None:
    assert volatile_run_dir("/var/lib/postgresql/data/pgwarden", DATA, MOUNTINFO) is None
    assert volatile_run_dir("/var/lib/pgwarden", DATA, MOUNTINFO) is None
    # A mount point that only starts with the same letters is another directory.
    assert volatile_run_dir("/runner/pgwarden", DATA, MOUNTINFO) is None


def test_the_deepest_mount_point_decides_and_escaped_spaces_are_read() -> None:
    assert volatile_run_dir("/srv/run dir/pgwarden", DATA, MOUNTINFO) is None
    assert volatile_run_dir("/srv/run dir/volatile/x", DATA, MOUNTINFO) is not None


def test_both_on_a_tmpfs_vanish_together_and_are_not_warned_about() -> None:
    assert volatile_run_dir("/run/pgwarden", "/run/lock/pgdata", MOUNTINFO) is None
