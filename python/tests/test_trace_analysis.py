"""The trace analyzer through fireflyer._C.trace.analyze_json and the ff-trace command line."""

from __future__ import annotations

import gzip
import json
import pathlib
import subprocess

import pytest

from fireflyer import _C

analyze_json = _C.trace.analyze_json


def _kernel(name, pid, tid, ts, dur, cat="kernel"):
    return {"ph": "X", "cat": cat, "name": name, "pid": pid, "tid": tid, "ts": ts, "dur": dur, "args": {"grid": [1, 1, 1]}}


def _pytorch_trace():
    # GPU 0: gemm [0, 100) on stream 7, NCCL [50, 170) on stream 20 -> hidden 50 of 120 us.
    # GPU 1: gemm [100, 200): must not hide GPU 0's communication. Host op: neither class.
    return {
        "schemaVersion": 1,
        "deviceProperties": [{"id": 0, "name": "NVIDIA H800"}, {"id": 1, "name": "NVIDIA H800"}],
        "traceEvents": [
            {"ph": "M", "name": "process_name", "pid": 0, "tid": 0, "args": {"name": "GPU 0"}},
            {"ph": "M", "name": "thread_name", "pid": 0, "tid": 7, "args": {"name": "stream 7"}},
            _kernel("sm90_xmma_gemm_bf16bf16_bf16f32", 0, 7, 0.0, 100.0),
            _kernel("ncclDevKernel_AllReduce_Sum_bf16_RING_LL", 0, 20, 50.0, 120.0),
            _kernel("sm90_xmma_gemm_bf16bf16_bf16f32", 1, 7, 100.0, 100.0),
            _kernel("aten::mm", 4242, 4242, 0.0, 30.0, cat="cpu_op"),
            {"ph": "s", "id": 1, "pid": 4242, "tid": 4242, "ts": 1.0, "cat": "ac2g", "name": "ac2g"},
        ],
    }


@pytest.fixture()
def trace_file(tmp_path):
    path = tmp_path / "rank0.json"
    path.write_text(json.dumps(_pytorch_trace()))
    return path


def _process(report, pid):
    return next(p for p in report["processes"] if p["pid"] == pid)


def test_analyze_json_reports_hidden_comm_per_gpu(trace_file):
    report = json.loads(analyze_json(str(trace_file)))
    gpu0 = _process(report, "0")
    assert gpu0["name"] == "GPU 0"
    assert gpu0["comm_ns"] == 120_000
    assert gpu0["compute_ns"] == 100_000
    assert gpu0["hidden_comm_ns"] == 50_000
    assert gpu0["hidden_fraction"] == pytest.approx(50 / 120)
    assert _process(report, "1")["hidden_comm_ns"] == 0
    host = _process(report, "4242")
    assert host["busy_ns"] == 30_000 and host["compute_ns"] == 0 and host["comm_ns"] == 0
    assert report["events"]["flow"] == 1
    assert report["events"]["metadata"] == 2
    stream = next(t for t in report["tracks"] if t["pid"] == "0" and t["tid"] == "7")
    assert stream["thread_name"] == "stream 7"
    assert [t["name"] for t in report["top"]][:2] == [
        "sm90_xmma_gemm_bf16bf16_bf16f32",
        "ncclDevKernel_AllReduce_Sum_bf16_RING_LL",
    ]
    assert report["top"][1]["class"] == "comm"


def test_options_top_patterns_categories_and_svg(trace_file, tmp_path):
    svg = tmp_path / "timeline.svg"
    report = json.loads(
        analyze_json(str(trace_file), top=1, comm_patterns=["gemm"], ignore_categories=[], svg_path=str(svg))
    )
    assert len(report["top"]) == 1
    gpu0 = _process(report, "0")
    # Now the gemm is communication and NCCL is compute.
    assert gpu0["comm_ns"] == 100_000
    assert gpu0["compute_ns"] == 120_000
    # With no ignored categories, the host op counts as compute.
    assert _process(report, "4242")["compute_ns"] == 30_000
    text = svg.read_text()
    assert text.startswith("<svg") or "<svg" in text[:200]
    assert "GPU 0 / stream 7" in text
    assert report["svg_path"] == str(svg)


def test_defaults_are_exposed():
    assert "nccl" in _C.trace.default_comm_patterns()
    assert "cpu_op" in _C.trace.default_ignore_categories()


def test_gzip_and_spill_match_plain(trace_file, tmp_path):
    gz = tmp_path / "rank0.json.gz"
    gz.write_bytes(gzip.compress(trace_file.read_bytes()))
    plain = json.loads(analyze_json(str(trace_file)))
    compressed = json.loads(analyze_json(str(gz), memory_limit_mb=1))
    for key in ("busy_ns", "comm_ns", "compute_ns", "hidden_comm_ns", "processes", "tracks", "top"):
        assert compressed[key] == plain[key], key


def test_bad_json_raises_value_error_with_offset(tmp_path):
    path = tmp_path / "bad.json"
    good = '{"traceEvents":[{"ph":"X","name":"a","ts":1,"dur":2,"pid":1,"tid":1} '
    path.write_text(good + '{"ph":"X"}]}')
    with pytest.raises(ValueError, match=rf"byte {len(good)}: expected ',' or '\]' after an event"):
        analyze_json(str(path))


def test_missing_file_raises_os_error(tmp_path):
    with pytest.raises(OSError, match="No such file"):
        analyze_json(str(tmp_path / "missing.json"))


def test_bad_pattern_raises_value_error(trace_file):
    with pytest.raises(ValueError, match="not a valid regular expression"):
        analyze_json(str(trace_file), comm_patterns=["(unclosed"])


@pytest.fixture(scope="session")
def ff_trace(build_dir) -> pathlib.Path:
    binary = build_dir / "bin" / "ff-trace"
    if not binary.exists():
        pytest.skip(f"ff-trace is not built at {binary} (build it, or set FF_BUILD_DIR to the build directory)")
    return binary


def test_cli_prints_report_and_writes_json_and_svg(ff_trace, trace_file, tmp_path):
    out_json = tmp_path / "report.json"
    out_svg = tmp_path / "timeline.svg"
    result = subprocess.run(
        [str(ff_trace), str(trace_file), "--top", "3", "--json", str(out_json), "--svg", str(out_svg), "--progress"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "GPU 0 / stream 7" in result.stdout
    assert "ncclDevKernel_AllReduce_Sum_bf16_RING_LL" in result.stdout
    assert "MB/s" in result.stderr  # --progress forces progress lines even without a terminal.
    report = json.loads(out_json.read_text())
    assert _process(report, "0")["hidden_comm_ns"] == 50_000
    assert len(report["top"]) == 3
    assert "<svg" in out_svg.read_text()


def test_cli_comm_pattern_and_ignore_category(ff_trace, trace_file, tmp_path):
    out_json = tmp_path / "report.json"
    result = subprocess.run(
        [str(ff_trace), str(trace_file), "--json", str(out_json), "--no-default-comm-patterns",
         "--comm-pattern", "gemm", "--ignore-category", "kernel"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    gpu0 = _process(json.loads(out_json.read_text()), "0")
    assert gpu0["comm_ns"] == 0 and gpu0["compute_ns"] == 0  # Every kernel is ignored now.


def test_cli_bad_input_exits_nonzero_with_message(ff_trace, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[{"ph":"X","name":"a","ts":1,"dur":2} x')
    result = subprocess.run([str(ff_trace), str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert "byte 38: expected ',' or ']' after an event, found 'x'" in result.stderr
    missing = subprocess.run([str(ff_trace), str(tmp_path / "nope.json")], capture_output=True, text=True,
                             timeout=60, check=False)
    assert missing.returncode != 0
    assert "No such file" in missing.stderr
