"""Tests of fireflyer.eplb: the anchor's example, input types, errors, agreement with the numpy
transcription of the anchor (bench/eplb/eplb_numpy.py), the refine policy, and the ff-eplb CLI."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from fireflyer import eplb

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "bench" / "eplb"))
import eplb_numpy  # noqa: E402

# DeepSeek EPLB's README example (its first row ends in 183, 86) and its published phy2log.
README_WEIGHT = [
    [90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
    [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27],
]
README_PHY2LOG = [
    [5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
    [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1],
]


def check_consistent(phy2log, log2phy, logcnt, num_gpus, num_nodes=1, group_size=None):
    """Every property a user of a placement relies on."""
    layers, replicas = phy2log.shape
    experts = logcnt.shape[1]
    assert phy2log.dtype == log2phy.dtype == logcnt.dtype == np.int64
    assert log2phy.shape == (layers, experts, int(logcnt.max()))
    assert (logcnt >= 1).all()
    assert replicas % num_gpus == 0
    for layer in range(layers):
        counts = np.bincount(phy2log[layer], minlength=experts)
        np.testing.assert_array_equal(counts, logcnt[layer])
        for expert in range(experts):
            slots = log2phy[layer, expert]
            assert (slots[logcnt[layer, expert] :] == -1).all()
            live = slots[: logcnt[layer, expert]]
            assert sorted(live.tolist()) == sorted(np.flatnonzero(phy2log[layer] == expert).tolist())
        if group_size is not None:
            node_of_slot = np.arange(replicas) // (replicas // num_nodes)
            group_of_slot = phy2log[layer] // group_size
            for group in np.unique(group_of_slot):
                assert len(set(node_of_slot[group_of_slot == group])) == 1, f"group {group} on two nodes"


def test_readme_example():
    phy2log, log2phy, logcnt = eplb.rebalance_experts(README_WEIGHT, 16, 4, 2, 8)
    assert isinstance(phy2log, np.ndarray)
    np.testing.assert_array_equal(phy2log, README_PHY2LOG)
    assert phy2log.shape == (2, 16) and log2phy.shape == (2, 12, 2) and logcnt.shape == (2, 12)
    check_consistent(phy2log, log2phy, logcnt, 8, 2, 3)


@pytest.mark.parametrize(
    "weight",
    [
        np.array(README_WEIGHT, dtype=np.int64),
        np.array(README_WEIGHT, dtype=np.int32),
        np.array(README_WEIGHT, dtype=np.float64),
        np.asfortranarray(np.array(README_WEIGHT, dtype=np.float32)),
        [[float(x) for x in row] for row in README_WEIGHT],
    ],
    ids=["int64", "int32", "float64", "float32-fortran", "float-list"],
)
def test_input_types(weight):
    phy2log, _, _ = eplb.rebalance_experts(weight, 16, 4, 2, 8)
    np.testing.assert_array_equal(phy2log, README_PHY2LOG)


def test_torch_tensors_in_and_out():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    weight = torch.tensor(README_WEIGHT)
    phy2log, log2phy, logcnt = eplb.rebalance_experts(weight, 16, 4, 2, 8)
    assert isinstance(phy2log, torch.Tensor) and phy2log.dtype == torch.int64
    assert phy2log.tolist() == README_PHY2LOG
    assert log2phy.shape == (2, 12, 2) and logcnt.shape == (2, 12)


@pytest.mark.parametrize(
    "args, message",
    [
        ((README_WEIGHT, 10, 4, 2, 4), "num_replicas=10 is not a multiple of num_gpus=4"),
        ((README_WEIGHT, 16, 4, 4, 6), "num_replicas=16 is not a multiple of num_gpus=6"),
        ((README_WEIGHT, 12, 4, 4, 6), "num_gpus=6 is not a multiple of num_nodes=4"),
        ((README_WEIGHT, 8, 4, 2, 8), "num_replicas=8 is fewer than the 12 experts"),
        ((README_WEIGHT, 16, 8, 2, 8), "12 experts cannot be divided into num_groups=8 groups"),
        ((README_WEIGHT, 16, 4, 0, 8), "num_nodes=0 must be positive"),
        ((README_WEIGHT, 16, 4, 2, -8), "num_gpus=-8 must be positive"),
        (([[1, 2, -3, 4]], 4, 1, 1, 1), "load at layer 0, expert 2 is -3"),
        (([[1.0, 2.0], [np.nan, 4.0]], 4, 1, 1, 1), "load at layer 1, expert 0 is nan"),
        ((np.array([[1, 2], [3, np.inf]], dtype=np.float32), 4, 1, 1, 1), "load at layer 1, expert 1 is inf"),
        (([1, 2, 3, 4], 4, 1, 1, 1), "expected 2-D (layers, experts)"),
        (([[[1, 2]]], 4, 1, 1, 1), "weight has shape (1, 1, 2) (3-D)"),
        (([["a", "b"]], 4, 1, 1, 1), "expected integer or floating-point loads"),
        ((README_WEIGHT, 16.0, 4, 2, 8), "num_replicas=16.0 must be an integer"),
    ],
)
def test_errors_name_the_values(args, message):
    with pytest.raises(ValueError) as error:
        eplb.rebalance_experts(*args)
    assert message in str(error.value)


def test_unknown_policy():
    with pytest.raises(ValueError, match="policy='best' is not known"):
        eplb.rebalance_experts(README_WEIGHT, 16, 4, 2, 8, policy="best")


def random_case(rng, trial):
    nodes = int(rng.integers(1, 5))
    gpus = nodes * int(rng.integers(1, 5))
    groups = nodes * int(rng.integers(1, 4)) if trial % 2 == 0 else nodes + int(rng.integers(1, 4))
    experts = groups * int(rng.integers(1, 5))
    replicas = (-(-experts // gpus) + int(rng.integers(0, 3))) * gpus
    layers = int(rng.integers(1, 4))
    if trial % 3 == 0:
        weight = rng.integers(0, 5, (layers, experts))  # many ties
    else:
        weight = rng.exponential(100.0, (layers, experts))
    return weight, replicas, groups, nodes, gpus


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_equals_numpy_transcription(seed):
    rng = np.random.default_rng(seed)
    for trial in range(60):
        weight, replicas, groups, nodes, gpus = random_case(rng, trial)
        ours = eplb.rebalance_experts(weight, replicas, groups, nodes, gpus)
        reference = eplb_numpy.rebalance_experts(weight, replicas, groups, nodes, gpus)
        for name, a, b in zip(("phy2log", "log2phy", "logcnt"), ours, reference):
            np.testing.assert_array_equal(
                a, b, err_msg=f"{name}, seed={seed} trial={trial}: {replicas=} {groups=} {nodes=} {gpus=}"
            )


@pytest.mark.parametrize("gpus, nodes, groups", [(48, 1, 1), (40, 5, 3), (96, 2, 8)])
def test_equals_numpy_transcription_many_gpus(gpus, nodes, groups):
    # More than 16 GPUs per node: the packing takes its tournament-tree path instead of a linear scan.
    rng = np.random.default_rng(gpus)
    for trial in range(4):
        weight = rng.integers(0, 50, (3, 64)) if trial % 2 else rng.exponential(10.0, (3, 64))
        args = (weight, 2 * gpus + (gpus if trial == 3 else 0), groups, nodes, gpus)
        for a, b in zip(eplb.rebalance_experts(*args), eplb_numpy.rebalance_experts(*args)):
            np.testing.assert_array_equal(a, b, err_msg=f"{gpus=} {nodes=} {groups=} {trial=}")


@pytest.mark.parametrize("seed", [4, 5])
def test_refine_keeps_constraints_and_is_never_worse(seed):
    rng = np.random.default_rng(seed)
    improved = 0
    for trial in range(40):
        weight, replicas, groups, nodes, gpus = random_case(rng, trial)
        hierarchical = groups % nodes == 0
        phy2log, log2phy, logcnt, stats = eplb.rebalance_experts(
            weight, replicas, groups, nodes, gpus, policy="refine", return_stats=True
        )
        check_consistent(
            phy2log, log2phy, logcnt, gpus, nodes if hierarchical else 1,
            weight.shape[1] // groups if hierarchical else None,
        )
        anchor = eplb.rebalance_experts(weight, replicas, groups, nodes, gpus)
        anchor_per_layer = eplb.imbalance(weight, anchor[0], anchor[2], gpus, per_layer=True)
        refined_per_layer = eplb.imbalance(weight, phy2log, logcnt, gpus, per_layer=True)
        np.testing.assert_allclose(stats["anchor_imbalance_per_layer"], anchor_per_layer, rtol=1e-12)
        np.testing.assert_allclose(stats["refined_imbalance_per_layer"], refined_per_layer, rtol=1e-12)
        assert (refined_per_layer <= anchor_per_layer * (1 + 1e-12)).all(), f"seed={seed} trial={trial}"
        assert stats["refined_imbalance"] == pytest.approx(refined_per_layer.mean())
        improved += stats["refined_imbalance"] < stats["anchor_imbalance"]
    assert improved > 0, "refine never improved on 40 random cases"


def test_gpu_loads_and_imbalance():
    weight = [[6, 2, 4]]
    loads = eplb.gpu_loads(weight, [[0, 0, 1, 2]], [[2, 1, 1]], 2)
    np.testing.assert_allclose(loads, [[6.0, 6.0]])
    # GPU 0 = expert 0's half (3) + expert 1 (2) = 5, GPU 1 = 3 + 4 = 7; mean 6.
    assert eplb.imbalance(weight, [[0, 1, 0, 2]], [[2, 1, 1]], 2) == pytest.approx(7.0 / 6.0)
    with pytest.raises(ValueError, match=r"phy2log\[0, 3\]=9 is not an expert"):
        eplb.gpu_loads(weight, [[0, 0, 1, 9]], [[2, 1, 1]], 2)


def test_anchor_stats_equal_for_both_fields():
    *_, stats = eplb.rebalance_experts(README_WEIGHT, 16, 4, 2, 8, return_stats=True)
    assert stats["anchor_imbalance"] == stats["refined_imbalance"] > 1.0
    assert stats["hierarchical"] is True


# ---- the ff-eplb command line ------------------------------------------------------------------


@pytest.fixture(scope="module")
def ff_eplb() -> pathlib.Path:
    binary = REPO_ROOT / os.environ.get("FF_BUILD_DIR", "build") / "bin" / "ff-eplb"
    if not binary.exists():
        pytest.skip(f"{binary} is not built (build it, or set FF_BUILD_DIR to the build directory)")
    return binary


def run_cli(binary, *args):
    return subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, timeout=60)


def write_inputs(directory: pathlib.Path):
    weight = np.array(README_WEIGHT, dtype=np.float32)
    csv = directory / "loads.csv"
    csv.write_text("\n".join(",".join(str(int(x)) for x in row) for row in README_WEIGHT) + "\n")
    js = directory / "loads.json"
    js.write_text(json.dumps({"weight": README_WEIGHT}))
    npy = directory / "loads.npy"
    np.save(npy, weight.astype(np.float64))
    return weight, [csv, js, npy]


def test_cli_end_to_end(ff_eplb, tmp_path):
    weight, inputs = write_inputs(tmp_path)
    for path in inputs:
        out = tmp_path / f"{path.suffix[1:]}.json"
        svg = tmp_path / f"{path.suffix[1:]}.svg"
        result = run_cli(ff_eplb, path, "--replicas", 16, "--groups", 4, "--nodes", 2, "--gpus", 8,
                         "--out", out, "--svg", svg)
        assert result.returncode == 0, result.stderr
        assert "imbalance" in result.stdout and "anchor" in result.stdout and "refine" in result.stdout
        placement = json.loads(out.read_text())
        assert placement["phy2log"] == README_PHY2LOG
        phy2log = np.array(placement["phy2log"])
        logcnt = np.array(placement["logcnt"])
        check_consistent(phy2log, np.array(placement["log2phy"]), logcnt, 8, 2, 3)
        np.testing.assert_allclose(placement["gpu_loads"], eplb.gpu_loads(weight, phy2log, logcnt, 8))
        assert placement["imbalance"]["mean"] == pytest.approx(eplb.imbalance(weight, phy2log, logcnt, 8))
        text = svg.read_text()
        assert text.startswith("<svg") and text.count("<rect") >= 2 * 2 * 8 and "load / layer mean" in text


def test_cli_refine_policy(ff_eplb, tmp_path):
    out = tmp_path / "placement.json"
    sample = REPO_ROOT / "deploy" / "samples" / "eplb_loads.csv"
    result = run_cli(ff_eplb, sample, "--replicas", 40, "--groups", 8, "--nodes", 2, "--gpus", 8,
                     "--policy", "refine", "--out", out)
    assert result.returncode == 0, result.stderr
    placement = json.loads(out.read_text())
    assert placement["policy"] == "refine"
    assert placement["refined_imbalance"] <= placement["anchor_imbalance"]
    assert placement["imbalance"]["mean"] == pytest.approx(placement["refined_imbalance"])


@pytest.mark.parametrize(
    "content, suffix, message",
    [
        ("1,2,3\n4,x,6\n", ".csv", "bad.csv:2: column 2 is 'x', expected a number"),
        ("[[1, 2], [3]]", ".json", "row has 1 values, expected 2"),
        ("not a numpy file", ".npy", "offset 0: expected the .npy magic"),
        ("1,2", ".txt", "expected a .csv, .json or .npy file"),
    ],
)
def test_cli_bad_input(ff_eplb, tmp_path, content, suffix, message):
    path = tmp_path / f"bad{suffix}"
    path.write_text(content)
    result = run_cli(ff_eplb, path, "--replicas", 4, "--gpus", 2)
    assert result.returncode != 0
    assert message in result.stderr
    assert str(path) in result.stderr


def test_cli_bad_configuration(ff_eplb, tmp_path):
    _, inputs = write_inputs(tmp_path)
    result = run_cli(ff_eplb, inputs[0], "--replicas", 10, "--gpus", 4)
    assert result.returncode != 0
    assert "num_replicas=10 is not a multiple of num_gpus=4" in result.stderr
