import os

from svcnet.lab.state import Record, StateFile, process_start_time


def test_records_round_trip_in_order(tmp_path):
    s = StateFile(tmp_path / "state.jsonl")
    s.record(Record("netns", "a-underlay", owner="lab"))
    s.record(Record("link", "eth0", netns="a-worker"))
    s.record_process("apiserver", os.getpid())
    recs = s.records()
    assert [r.kind for r in recs] == ["netns", "link", "process"]
    assert recs[1].netns == "a-worker"
    assert recs[2].pid == os.getpid() and recs[2].start_time == process_start_time(os.getpid())


def test_a_torn_last_line_is_ignored(tmp_path):
    s = StateFile(tmp_path / "state.jsonl")
    s.record(Record("netns", "x"))
    with open(s.path, "a") as f:
        f.write('{"kind": "netns", "na')  # crash mid-write
    assert [r.name for r in s.records()] == ["x"]


def test_includes_are_followed_once(tmp_path):
    top, node = StateFile(tmp_path / "lab.jsonl"), StateFile(tmp_path / "node.jsonl")
    node.record(Record("netns", "pod-a"))
    node.record(Record("include", str(top.path)))  # a loop must not recurse forever
    top.record(Record("netns", "node"))
    top.record(Record("include", str(node.path)))
    names = [r.name for r in top.all_records() if r.kind == "netns"]
    assert names == ["node", "pod-a"]


def test_missing_state_is_empty(tmp_path):
    assert StateFile(tmp_path / "none").records() == []


def test_start_time_of_a_gone_process_is_none():
    assert process_start_time(2**22 + 12345) is None
