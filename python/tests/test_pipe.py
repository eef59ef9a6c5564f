"""fireflyer.pipe: generators, validator, simulator, executor and the ff-pipe command line."""

from __future__ import annotations

import json
import subprocess

import pytest

from fireflyer import pipe

UNIT = {"F": 1, "B": 2, "W": 1, "FB": 2.5}


def test_demo_call_returns_per_rank_numbers(tmp_path):
    trace_path, svg_path = tmp_path / "dp.json", tmp_path / "dp.svg"
    result = pipe.simulate(schedule="dualpipe", pp=8, chunks=20, costs=UNIT, trace_path=trace_path, svg_path=svg_path)
    assert result["num_ranks"] == 8
    assert len(result["bubble"]) == 8 and len(result["peak_memory"]) == 8
    # The anchor's table: (PP/2-1)(F&B+B-3W) = 3 * (2.5 + 2 - 3) = 4.5.
    assert result["max_bubble"] == pytest.approx(4.5)
    assert result["table_bubble"] == pytest.approx(4.5)
    assert max(result["peak_activations"]) == 9 and max(result["parameters"]) == 2
    trace = json.loads(trace_path.read_text())
    assert sum(1 for e in trace["traceEvents"] if e.get("ph") == "X") == result["num_ops"]
    assert svg_path.read_text().startswith("<svg") or "<svg" in svg_path.read_text()


@pytest.mark.parametrize("kind", pipe.SCHEDULES)
@pytest.mark.parametrize("pp", [4, 8])
def test_every_schedule_matches_the_table(kind, pp):
    result = pipe.simulate(kind, pp=pp, chunks=2 * pp + 4, costs=UNIT)
    assert result["max_bubble"] == pytest.approx(pipe.table_bubble(kind, pp, UNIT))
    assert result["step_time"] == pytest.approx(max(result["finish"]))


def test_one_f_one_b_order_and_round_trip(tmp_path):
    schedule = pipe.generate("1f1b", pp=4, chunks=8)
    rank0 = " ".join(f"{op['op']}{op['mb']}" for op in schedule.ranks[0])
    assert rank0 == "F0 F1 F2 F3 B0 F4 B1 F5 B2 F6 B3 F7 B4 B5 B6 B7"
    path = tmp_path / "s.json"
    schedule.save(path)
    assert pipe.load(path).ranks == schedule.ranks


def test_validator_names_the_blocked_op_of_a_hand_edited_schedule():
    document = pipe.generate("1f1b", pp=2, chunks=2).document
    r0, r1 = document["ranks"]
    r0[1], r0[2] = r0[2], r0[1]  # rank 0: F0 B0 F1 B1
    r1[1], r1[2] = r1[2], r1[1]  # rank 1: F0 F1 B0 B1
    with pytest.raises(ValueError, match=r"deadlock: rank 0 op #1 B\(mb=0 s=0 d=0\) waits forever for the gradient"):
        pipe.validate(document)
    with pytest.raises(ValueError, match="deadlock"):
        pipe.simulate(pipe.from_document(document))


def test_bad_input_is_value_error():
    with pytest.raises(ValueError, match="even pp"):
        pipe.generate("dualpipe", pp=5, chunks=20)
    with pytest.raises(ValueError, match=">= 2\\*pp"):
        pipe.generate("dualpipe", pp=8, chunks=10)
    with pytest.raises(ValueError, match="must be a finite number >= 0"):
        pipe.simulate("1f1b", pp=4, chunks=8, costs={"F": -1})
    with pytest.raises(ValueError, match="unknown schedule"):
        pipe.simulate("gpipe", pp=4, chunks=8)
    broken = pipe.generate("1f1b", pp=2, chunks=2).document
    broken["ranks"][1].pop()
    with pytest.raises(ValueError, match="rank 1"):
        pipe.validate(broken)


def test_best_respects_memory_limit():
    ranked = pipe.best(8, 20, UNIT)
    assert ranked[0]["schedule"] == "dualpipe"
    limited = pipe.best(8, 20, UNIT, memory_limit=10)
    assert limited[0]["schedule"] == "zb1p"
    assert not limited[-1]["feasible"] and "exceeds" in limited[-1]["reason"]


@pytest.mark.parametrize("kind", pipe.SCHEDULES)
def test_executor_gradients_match_unpipelined(kind, tmp_path):
    schedule = pipe.generate(kind, pp=4, chunks=8)
    result = pipe.execute(schedule, trace_path=tmp_path / "exec.json")
    assert result["max_relative_error"] < 1e-6
    assert result["wall_s"] > 0
    events = json.loads((tmp_path / "exec.json").read_text())["traceEvents"]
    assert sum(1 for e in events if e.get("ph") == "X") == sum(len(ops) for ops in schedule.ranks)


def test_ff_pipe_command_line(build_dir, tmp_path):
    tool = build_dir / "bin" / "ff-pipe"
    if not tool.exists():
        pytest.skip(f"{tool} not built (set FF_BUILD_DIR)")
    out = subprocess.run(
        [str(tool), "simulate", "--schedule", "dualpipe", "--pp", "8", "--chunks", "20",
         "--cost", "F=1,B=2,W=1,FB=2.5", "--trace", str(tmp_path / "t.json"), "--svg", str(tmp_path / "t.svg")],
        capture_output=True, text=True, check=True).stdout
    assert "step time 59.000" in out and "anchor table: 4.500" in out
    assert (tmp_path / "t.json").exists() and (tmp_path / "t.svg").exists()
    path = tmp_path / "s.json"
    subprocess.run([str(tool), "generate", "--schedule", "zb1p", "--pp", "4", "--chunks", "8", "--out", str(path)],
                   check=True, capture_output=True)
    assert "valid zb1p schedule" in subprocess.run([str(tool), "validate", str(path)], capture_output=True,
                                                   text=True, check=True).stdout
    document = json.loads(path.read_text())
    document["ranks"][0].reverse()
    path.write_text(json.dumps(document))
    bad = subprocess.run([str(tool), "validate", str(path)], capture_output=True, text=True)
    assert bad.returncode != 0 and "deadlock: rank 0 op #0" in bad.stderr
    odd = subprocess.run([str(tool), "simulate", "--schedule", "dualpipe", "--pp", "5"], capture_output=True, text=True)
    assert odd.returncode != 0 and "even pp" in odd.stderr


def test_dualpipe_needs_two_messages_of_room_per_link() -> None:
    """With blocking sends and one message of room per link, DualPipe and DualPipeV deadlock (the validator
    names the blocked op); two messages of room suffice. 1F1B and ZB1P run with one (docs/pipe.md)."""
    for name in ("dualpipe", "dualpipev"):
        schedule = pipe.generate(name, pp=8, chunks=16)
        with pytest.raises(ValueError, match=r"deadlock: rank 0 op #8 .*capacity 1"):
            pipe.validate(schedule, channel_capacity=1)
        assert pipe.validate(schedule, channel_capacity=2)
    for name in ("1f1b", "zb1p"):
        assert pipe.validate(pipe.generate(name, pp=8, chunks=16), channel_capacity=1)
