"""``python -m pipelines.graph_cost``: operator counts of the mixing graph's CPU part."""

from __future__ import annotations

import json

import pytest
from conftest import run_command, user_error_line

from dali_cutmix import mixing
from dali_cutmix.config import MAX_SIDE
from pipelines import graph_cost

# Operators in the CPU part of the training graph at a known crop size (labels included).
# Before the lean graph CutMix alone took 52 operators with its targets; a change here is
# a change of the graph's per-batch CPU cost (about 0.1 ms per operator at batch 256).
OPERATORS = {
    "off": (4, 4),
    "cutmix": (21, 26),
    "cutmix prob=0.5": (23, 28),
    "cutmix batch": (24, 29),
    "cutmix pair": (22, 27),
    "switch": (27, 32),
    "mixup": (4, 9),
}


def _one_batch(name: str, **options) -> dict:
    """``measure_setting`` timed on one batch of 4, one thread: for its operator count."""
    return graph_cost.measure_setting(
        name, batch_size=4, threads=1, warmup=1, windows=1, window_batches=1, **options
    )


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_operator_counts(name: str) -> None:
    for targets, expected in zip((False, True), OPERATORS[name]):
        result = _one_batch(name, targets=targets)
        assert result["operators"] == expected
        assert result["ms_per_batch"] > 0


def test_a_side_beyond_the_tables_draws_fractions_and_builds_at_once() -> None:
    # Above mixing.TABLE_MAX_SIDE the box is drawn as fractions: six operators more than
    # with tables, and the largest side builds at once (a side of 10**8, refused now, took
    # minutes to build its tables).
    for side, expected in (
        (mixing.TABLE_MAX_SIDE, 21),
        (mixing.TABLE_MAX_SIDE + 1, 27),
        (MAX_SIDE, 27),
    ):
        assert _one_batch("cutmix", crop_size=side)["operators"] == expected, side


def test_command_writes_table_and_json(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(
        graph_cost, "SETTINGS", {k: graph_cost.SETTINGS[k] for k in ("off", "cutmix")}
    )
    out = tmp_path / "cost.json"
    assert (
        graph_cost.main(
            ["--batch-size", "4", "--threads", "1", "--repeats", "1", "--out", str(out)]
        )
        == 0
    )
    report = json.loads(out.read_text())
    cutmix = report["results"][1]
    assert cutmix["setting"] == "cutmix" and cutmix["added_operators"] == 17
    assert "| cutmix | 21 |" in capsys.readouterr().out


def test_a_bad_value_ends_the_command_with_one_line(tmp_path) -> None:
    done = run_command("pipelines.graph_cost", "--batch-size", "0", "--out", tmp_path / "c.json")
    assert user_error_line(done) == (
        "python -m pipelines.graph_cost: error: argument --batch-size: expected an int >= 1, got 0"
    )
    assert not (tmp_path / "c.json").exists()


def test_an_unusable_out_stops_it_before_the_run(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(graph_cost, "run", lambda args: pytest.fail("it ran"))
    with pytest.raises(SystemExit) as caught:
        graph_cost.main(["--out", str(tmp_path)])
    assert caught.value.code == 2
    assert capsys.readouterr().err == (
        f"python -m pipelines.graph_cost: error: --out {tmp_path} is a folder or not writable; "
        "give a file\n"
    )


def test_sizes_dali_finds_no_memory_for_end_in_one_line() -> None:
    # --batch-size 100000000 was a 43-line traceback ending in std::bad_alloc.
    done = run_command("pipelines.graph_cost", "--repeats", "1", "--batch-size", "100000000")
    assert user_error_line(done) == (
        "python -m pipelines.graph_cost: error: DALI ran out of memory for these sizes: lower "
        "--batch-size or --crop-size"
    )
