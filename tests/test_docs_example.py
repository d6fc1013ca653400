"""The user stage of docs/stages.md (docs/examples/baseline_stage.py), tested alone as the page shows.

It is loaded the way a processing node loads it (`load_file_function`), run on a batch
made with `procnode.testing.make_batch`, and its topology snippet in docs/stages.md is
validated with the real loader, so the page cannot drift from the code.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from coordinator.topology import topology_from_dict
from coordinator.topology.userstage import load_file_function
from procnode.stages.user import UserStage
from procnode.testing import make_batch

DOCS = Path(__file__).resolve().parent.parent / "docs"
EXAMPLE = DOCS / "examples" / "baseline_stage.py"

SAMPLES, PRE = 16, 4                       # 4 samples before the trigger
COUNTS_PER_VOLT = 8192


def waveforms(baselines_counts: list[int]) -> np.ndarray:
    """One row per event: a flat baseline, then a pulse from the trigger on."""
    w = np.repeat(np.array(baselines_counts, np.int16)[:, None], SAMPLES, axis=1)
    w[:, PRE:PRE + 3] += 4000              # the pulse must not count towards the baseline
    return w


@pytest.fixture(scope="module")
def baseline():
    return load_file_function(EXAMPLE, "baseline")


@pytest.fixture()
def batch():
    return make_batch({"rp1.IN1": waveforms([82, 82, 410]), "rp2.IN1": waveforms([0, -164, 0])},
                      pretrigger=PRE, seq0=100)


def test_adds_a_baseline_table_in_volts(baseline, batch):
    assert baseline(batch, {"channel": "IN1"}) is None       # no limit: every event goes on
    t = batch.tables["baseline"]
    assert set(t.dtype.names) == {"seq", "module", "volts"}
    np.testing.assert_array_equal(t["seq"], [100, 100, 101, 101, 102, 102])   # rows in seq order
    np.testing.assert_array_equal(t["module"], [0, 1, 0, 1, 0, 1])            # rp1, rp2
    np.testing.assert_allclose(t["volts"], np.array([82, 0, 82, -164, 410, 0]) / COUNTS_PER_VOLT)


def test_keep_mask_vetoes_events_outside_the_limit(baseline, batch):
    keep = baseline(batch, {"channel": "IN1", "max_volts": 0.015})
    assert keep.dtype == bool
    np.testing.assert_array_equal(keep, [True, False, False])  # -0.02 V on rp2, 0.05 V on rp1


def test_module_channel_reference_reads_one_module(baseline, batch):
    baseline(batch, {"channel": "rp2.IN1"})
    np.testing.assert_array_equal(batch.tables["baseline"]["module"], [1, 1, 1])


def test_absent_parts_are_skipped(baseline, batch):
    batch.events["present"][1] = 0b01      # event 101 lost its rp2 part
    keep = baseline(batch, {"max_volts": 0.015})
    np.testing.assert_array_equal(keep, [True, True, False])
    np.testing.assert_array_equal(batch.tables["baseline"]["seq"], [100, 100, 101, 102, 102])


def test_in_the_nodes_user_stage_wrapper(batch):
    stage = UserStage({"file": str(EXAMPLE), "function": "baseline", "params": {"max_volts": 0.015}}, None)
    out = stage.process(batch)
    np.testing.assert_array_equal(out.seq, [100])                     # the others are vetoed
    np.testing.assert_array_equal(out.tables["baseline"]["seq"], [100, 100])


def test_the_topology_snippet_of_the_page_is_valid():
    text = (DOCS / "stages.md").read_text()
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "function: baseline" in b]
    assert blocks, "docs/stages.md has no yaml block with the baseline stage"
    topo = topology_from_dict(yaml.safe_load(blocks[0]), base_dir=EXAMPLE.parent)
    (user,) = [st for p in topo.processing.values() for st in p.pipeline if st.stage == "user"]
    assert Path(user.params["file"]) == EXAMPLE


def test_the_testing_snippet_of_the_page_runs(monkeypatch):
    text = (DOCS / "stages.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "make_batch(" in b]
    assert blocks, "docs/stages.md has no python block that uses make_batch"
    monkeypatch.chdir(DOCS.parent)         # the snippet names the example relative to the repository
    for block in blocks:
        exec(compile(block, "docs/stages.md", "exec"), {})
