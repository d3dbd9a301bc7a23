"""The pure parts of the local-WAL-end scan (walend.py) and the ttl-derived replication
timeouts (process.py). Exercised against real pg_waldump and postmasters in
tests/integration/postgres/test_standby_position.py and test_replication_timeouts.py."""

from __future__ import annotations

from pathlib import Path

from agent.model import parse_lsn
from agent.postgres.process import replication_timeout_options
from agent.postgres.walend import (
    parse_last_good_record,
    parse_record_line,
    position_timeline,
    record_end,
    replay_settled,
    segment_timelines,
)

SEG = 16 * 1024 * 1024
BLOCK = 8192


def test_the_last_good_record_is_the_one_pg_waldump_names_whatever_broke_after_it() -> None:
    stderr = (
        "pg_waldump: error: error in WAL record at 0/36226C8: "
        "invalid record length at 0/36226F0: wanted 24, got 0\n"
    )
    assert parse_last_good_record(stderr) == (parse_lsn("0/36226C8"), False)
    prev_link = (
        "pg_waldump: error: error in WAL record at 1/A0: record with incorrect prev-link "
        "0/DEAD at 1/C8\n"
    )
    assert parse_last_good_record(prev_link) == (parse_lsn("1/A0"), False)


def test_no_valid_record_after_the_start_and_an_error_without_position_are_told_apart() -> None:
    none = "pg_waldump: error: could not find a valid record after 0/3000000\n"
    assert parse_last_good_record(none) == (None, True)
    missing = 'pg_waldump: error: could not find file "000000010000000000000009": No such file\n'
    assert parse_last_good_record(missing) == (None, False)
    assert parse_last_good_record("") == (None, False)


def test_a_record_line_gives_its_position_and_total_length() -> None:
    line = (
        "rmgr: Heap        len (rec/tot):     54/    54, tx:        735, lsn: 0/036226C8, "
        "prev 0/03622690, desc: INSERT off 3 flags 0x00, blkref #0: rel 1663/5/16384 blk 0\n"
    )
    assert parse_record_line(line) == (parse_lsn("0/36226C8"), 54)
    assert parse_record_line("nothing here\n") is None


def test_a_record_inside_one_page_ends_at_its_length_rounded_to_eight() -> None:
    assert record_end(0x36226C8, 40, block_size=BLOCK, segment_size=SEG) == 0x36226F0
    assert record_end(0x36226C8, 54, block_size=BLOCK, segment_size=SEG) == 0x36226C8 + 56


def test_a_record_that_continues_on_the_next_pages_counts_their_headers() -> None:
    start = 3 * BLOCK + 8000  # 192 bytes left on its page
    assert record_end(start, 500, block_size=BLOCK, segment_size=SEG) == 4 * BLOCK + 24 + 312
    # Across a segment boundary the continuation page has the long header.
    start = SEG - 100
    assert record_end(start, 300, block_size=BLOCK, segment_size=SEG) == SEG + 40 + 200
    # Over a whole page: two short headers.
    start = 8000
    end = record_end(start, 192 + (BLOCK - 24) + 10, block_size=BLOCK, segment_size=SEG)
    assert end == 2 * BLOCK + 24 + 16


def test_only_the_segment_files_holding_the_position_count_highest_timeline_first() -> None:
    names = [
        "000000010000000000000003",
        "000000020000000000000003",
        "000000020000000000000004",
        "000000010000000000000003.partial",
        "00000002.history",
        "archive_status",
    ]
    assert segment_timelines(names, 3, SEG) == [2, 1]
    assert segment_timelines(names, 4, SEG) == [2]
    assert segment_timelines(names, 5, SEG) == []
    # The log id part counts 4 GiB / segment size segments.
    assert segment_timelines(["000000010000000100000002"], 256 + 2, SEG) == [1]


def test_replay_is_settled_only_while_the_startup_process_waits_for_wal() -> None:
    assert replay_settled("RecoveryRetrieveRetryInterval")
    assert replay_settled("RecoveryWalStream")
    for busy in (None, "RecoveryPause", "RecoveryApplyDelay", "WALRead", "BufferPin"):
        assert not replay_settled(busy)


def test_the_replication_timeouts_are_one_ttl_and_replies_come_every_quarter_ttl() -> None:
    assert replication_timeout_options(10.0) == [
        "-c",
        "wal_retrieve_retry_interval=500ms",
        "-c",
        "wal_sender_timeout=10000ms",
        "-c",
        "wal_receiver_timeout=10000ms",
        "-c",
        "wal_receiver_status_interval=2s",
    ]
    # The status interval's unit is a second: never 0 (which would turn the replies off).
    assert "wal_receiver_status_interval=1s" in replication_timeout_options(2.5)
    # A standby re-pointed at a new primary retries streaming quickly (not after PG's 5 s).
    assert "wal_retrieve_retry_interval=100ms" in replication_timeout_options(1.0)


def test_a_position_s_timeline_is_the_highest_naming_its_segment_file(tmp_path: Path) -> None:
    for name in ("000000020000000000000004", "000000030000000000000004", "00000003.history"):
        (tmp_path / name).touch()
    assert position_timeline(str(tmp_path), 4 * SEG + 100, SEG) == 3
    assert position_timeline(str(tmp_path), 5 * SEG, SEG) is None  # no file holds it
    assert position_timeline(str(tmp_path / "missing"), 4 * SEG, SEG) is None
