"""The trace recorder through the Python binding: events land in a valid Chrome trace."""

from __future__ import annotations

import json
import threading

import pytest

from fireflyer import trace


def _events(recorder, phase):
    return [e for e in json.loads(recorder.to_json())["traceEvents"] if e["ph"] == phase]


def test_disabled_recorder_records_nothing():
    recorder = trace.Recorder()
    recorder.complete("x", "c", 0, 5)
    assert recorder.stats()["recorded"] == 0
    assert _events(recorder, "X") == []


def test_span_counter_instant_and_flow(tmp_path):
    recorder = trace.Recorder(process_name="pytest")
    recorder.enabled = True
    recorder.set_thread_name("main")
    with trace.span("work", "test", recorder=recorder):
        recorder.counter("queue", 4.0, "depth")
        recorder.instant("mark", "test")
        recorder.flow("start", "msg", 9)
        recorder.flow("end", "msg", 9)
    path = tmp_path / "t.json"
    recorder.write_json(str(path))
    events = json.loads(path.read_text())["traceEvents"]
    complete = [e for e in events if e["ph"] == "X"]
    assert [e["name"] for e in complete] == ["work"]
    assert complete[0]["dur"] >= 0
    assert [e["args"]["depth"] for e in events if e["ph"] == "C"] == [4.0]
    assert [e["name"] for e in events if e["ph"] == "i"] == ["mark"]
    assert sorted(e["ph"] for e in events if e.get("id") == 9) == ["f", "s"]
    names = {(e["name"], e["args"]["name"]) for e in events if e["ph"] == "M"}
    assert ("process_name", "pytest") in names
    assert ("thread_name", "main") in names


def test_threads_record_on_their_own_tracks():
    recorder = trace.Recorder()
    recorder.enabled = True

    def work(index):
        for i in range(100):
            recorder.complete(f"t{index}", "test", i, 1)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    complete = _events(recorder, "X")
    assert len(complete) == 300
    assert len({e["tid"] for e in complete}) == 3


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="events_per_thread=3 must be a power of two"):
        trace.Recorder(events_per_thread=3)
    recorder = trace.Recorder()
    with pytest.raises(ValueError, match="flow phase 'middle'"):
        recorder.flow("middle", "x", 1)
    with pytest.raises(OSError, match="/nonexistent-dir/t.json"):
        recorder.write_json("/nonexistent-dir/t.json")


def test_global_recorder_is_shared():
    assert trace.global_recorder() is not None
    first = trace.global_recorder()
    first.enabled = True
    try:
        with trace.span("global span"):
            pass
        assert any(e["name"] == "global span" for e in _events(first, "X"))
    finally:
        first.enabled = False
        first.clear()
