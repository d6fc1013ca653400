"""Topology loader: bad corpus files fail with the right message and line; good ones load and round-trip."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from coordinator.topology import (
    LOCALHOST,
    Component,
    RingConfig,
    StageConfig,
    SyntheticSource,
    Topology,
    TopologyError,
    load_topology,
    topology_from_dict,
)

HERE = Path(__file__).parent
BAD = sorted((HERE / "topologies" / "bad").glob("*.yaml"))
GOOD = sorted((HERE / "topologies" / "good").glob("*.yaml"))
LOOPBACK = HERE.parent / "topologies" / "loopback.yaml"

SAVE_DEFAULTS = {"format": "hdf5", "mode": "full", "table": "pulses", "window": (16, 48), "compression": None,
                 "compression_level": None, "chunk_frames": None, "flush_interval": 1.0, "data": "both"}


def _header(path: Path) -> tuple[str, int | None]:
    """The `# expect: <substring>` and optional `# line: N` comments at the top of a corpus file."""
    text = path.read_text()
    expect = re.match(r"# expect: (.*)", text)
    assert expect, f"{path.name} has no '# expect:' first line"
    line = re.search(r"^# line: (\d+)$", text, re.M)
    return expect.group(1).strip(), int(line.group(1)) if line else None


def _problems(path: Path) -> TopologyError:
    with pytest.raises(TopologyError) as info:
        load_topology(path)
    return info.value


# ---- bad corpus --------------------------------------------------------------------------

def test_bad_corpus_is_big_enough() -> None:
    assert len(BAD) >= 25


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_file_is_rejected(path: Path) -> None:
    expect, line = _header(path)
    error = _problems(path)
    text = str(error)
    assert expect in text
    matching = [p for p in error.problems if expect in str(p)]
    assert matching, text
    if line is not None:
        assert matching[0].line == line, text
    assert all(p.file == str(path) for p in error.problems)


def test_all_problems_of_a_file_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "three.yaml"
    path.write_text(
        "topology: 1\n"
        "name: three\n"
        "run: {frames: 0}\n"                       # 1: frames < 1
        "streams:\n"
        "  pulses: {samples: 64, channels: {IN1: int17}}\n"   # 2: bad dtype
        "acquisition:\n"
        "  rp1: {stream: pulses, source: {kind: synthetic}, ring: {slot: 8}}\n"  # 3: typo
        "processing:\n"
        "  proc1: {}\n")
    error = _problems(path)
    assert [(p.line, p.key) for p in error.problems] == [
        (3, "run.frames"), (5, "streams.pulses.channels.IN1"), (7, "acquisition.rp1.ring.slot")]
    assert str(error).splitlines() == [
        f"{path}:3: run.frames: expected an integer >= 1 or null, got 0",
        f"{path}:5: streams.pulses.channels.IN1: NumPy does not know the dtype 'int17' "
        "(data type 'int17' not understood)",
        f"{path}:7: acquisition.rp1.ring.slot: unknown key 'slot' (did you mean 'slots'?)",
    ]


def test_missing_file_is_a_topology_error(tmp_path: Path) -> None:
    error = _problems(tmp_path / "nope.yaml")
    assert [(p.key, p.line, p.message) for p in error.problems] == [("", None, "file not found")]


def test_directory_is_a_topology_error(tmp_path: Path) -> None:
    error = _problems(tmp_path)
    assert "cannot read the file" in str(error)


def test_dict_errors_have_no_line() -> None:
    with pytest.raises(TopologyError) as info:
        topology_from_dict({"topology": 1, "name": "x", "streams": []}, source="configure message")
    problems = info.value.problems
    assert {p.line for p in problems} == {None}
    assert "configure message: streams: expected a mapping, got an empty list" in str(info.value)
    assert "configure message: acquisition: required key is missing" in str(info.value)


def test_dict_top_level_must_be_a_mapping() -> None:
    with pytest.raises(TopologyError, match="expected a mapping at the top level, got a list"):
        topology_from_dict([1, 2])  # type: ignore[arg-type]


# ---- good corpus -------------------------------------------------------------------------

def test_good_corpus_has_minimal_and_full() -> None:
    assert {"minimal", "full"} <= {p.stem for p in GOOD} and len(GOOD) >= 3


@pytest.mark.parametrize("path", GOOD, ids=[p.stem for p in GOOD])
def test_good_file_loads_and_round_trips(path: Path) -> None:
    topo = load_topology(path)
    assert topo.path == path.absolute()
    assert topo.run.directory.is_absolute()
    text = yaml.safe_dump(topo.to_dict(), sort_keys=False)
    again = topology_from_dict(yaml.safe_load(text), source="round trip")
    assert dataclasses.replace(again, path=topo.path) == topo


@pytest.mark.parametrize("path", GOOD, ids=[p.stem for p in GOOD])
def test_resolved_file_loads_again(path: Path, tmp_path: Path) -> None:
    """to_dict() is what the run directory keeps as topology.yaml: it must be a valid file."""
    topo = load_topology(path)
    resolved = tmp_path / "topology.yaml"
    resolved.write_text(yaml.safe_dump(topo.to_dict(), sort_keys=False))
    assert dataclasses.replace(load_topology(resolved), path=topo.path) == topo


def test_minimal_defaults() -> None:
    path = HERE / "topologies" / "good" / "minimal.yaml"
    topo = load_topology(path)
    assert topo.version == 1 and topo.hosts == {}
    assert topo.run.directory == path.parent.absolute() / "runs"
    assert (topo.run.frames, topo.run.duration, topo.run.on_node_loss) == (None, None, "continue")
    assert (topo.run.heartbeat_timeout, topo.run.drain_timeout, topo.run.start_timeout) == (2.0, 5.0, 20.0)
    assert (topo.control.address, topo.control.port) == ("127.0.0.1", 0)
    (stream,) = topo.streams.values()
    assert stream.modules == tuple(topo.acquisition) and stream.dispatch == "full"
    (acq,) = topo.acquisition.values()
    assert acq.host == LOCALHOST and acq.ring == RingConfig(1024, "block")
    assert acq.batch is None and acq.data_port == 0
    assert acq.source == SyntheticSource()
    assert acq.source.rate == 1000.0 and acq.source.pretrigger is None and len(acq.source.amplitude) == 2
    (proc,) = topo.processing.values()
    assert proc.streams == tuple(topo.streams) and proc.credits == 64 and proc.host == LOCALHOST
    assert proc.pipeline == (StageConfig("save", SAVE_DEFAULTS),)


def test_full_file_values() -> None:
    topo = load_topology(HERE / "topologies" / "good" / "full.yaml")
    assert topo.run.frames == 100000 and topo.run.duration == 60.0 and topo.run.on_node_loss == "abort"
    assert topo.run.directory == Path("/tmp/daq-runs")
    assert topo.hosts["daq1"].launch == "ssh" and "{command}" in topo.hosts["daq3"].launch
    assert topo.streams["pulses"].modules == ("rp2", "rp1")          # as listed, not file order
    rp1 = topo.acquisition["rp1"]
    assert rp1.host == "daq1" and rp1.ring == RingConfig(4096, "drop") and rp1.batch == 32
    assert rp1.source.rate is None                                  # rate: max
    assert rp1.source.amplitude == (Component("uniform", weight=1.0, low=0.1, high=0.9),)
    assert topo.acquisition["rp2"].source.amplitude[1] == Component("gaussian", 3.0, mean=0.25, sigma=0.01)
    save = topo.processing["proc1"].pipeline[0]
    assert save.params == {**SAVE_DEFAULTS, "compression": "gzip", "compression_level": 4,
                           "chunk_frames": 128, "flush_interval": 0.5}
    assert topo.processing["proc2"].pipeline == (StageConfig("drain", {}),)
    assert topo.upstreams("proc2") == ["rp3"] and topo.downstreams("rp1") == ["proc1"]


def test_from_dict_resolves_directory_against_base_dir(tmp_path: Path) -> None:
    data = load_topology(HERE / "topologies" / "good" / "minimal.yaml").to_dict()
    data["run"]["directory"] = "out"
    topo = topology_from_dict(data, base_dir=tmp_path)
    assert topo.run.directory == tmp_path / "out"
    assert topology_from_dict(data, base_dir=tmp_path) == topo


def test_from_dict_does_not_change_its_input() -> None:
    data = load_topology(HERE / "topologies" / "good" / "minimal.yaml").to_dict()
    before = yaml.safe_dump(data)
    topology_from_dict(data)
    assert yaml.safe_dump(data) == before


def test_loopback_topology_loads() -> None:
    topo = load_topology(LOOPBACK)
    assert topo.name == "loopback" and list(topo.processing) == ["proc1", "proc2"]
    assert topo.hosts == {} and topo.run.directory == LOOPBACK.parent / "runs"
    stream = topo.streams["pulses"]
    assert stream.samples == 4096 and stream.channels == {"IN1": "int16", "IN2": "int16"}
    assert topo.emulated_boards() == ["rp1", "rp2"] and topo.emulator.shared
    for name in ("rp1", "rp2"):
        board = topo.acquisition[name].source
        assert (board.kind, board.decimation, board.pretrigger) == ("redpitaya", 8, 512)
        assert (board.trigger.source, board.trigger.slope, board.trigger.level) == ("IN1", "rising", 0.05)
        assert topo.acquisition[name].ring == RingConfig(256, "block")
    assert topo.upstreams("proc1") == topo.upstreams("proc2") == ["rp1", "rp2"]
    assert stream.modules == ("rp1", "rp2")
    assert all(p.pipeline == (StageConfig("save", SAVE_DEFAULTS),) for p in topo.processing.values())


# ---- documentation and YAML details --------------------------------------------------------

def test_docs_examples_are_valid_topologies() -> None:
    """The complete and minimal examples in docs/topology.md load (the reference stays true)."""
    text = (HERE.parent / "docs" / "topology.md").read_text()
    examples = [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", text, re.S)]
    assert len(examples) >= 2
    for example in examples:
        assert isinstance(topology_from_dict(example, source="docs/topology.md"), Topology)


def test_merged_keys_are_own_keys_first() -> None:
    topo = load_topology(HERE / "topologies" / "good" / "anchors.yaml")
    a, b = topo.acquisition["board_a"].source, topo.acquisition["board_b"].source
    assert (a.seed, b.seed) == (1, 2) and a.rate == b.rate == 5000.0
    assert topo.processing["sink_a"].pipeline == topo.processing["sink_b"].pipeline


def test_problem_in_merged_value_points_at_the_anchor(tmp_path: Path) -> None:
    path = tmp_path / "anchor.yaml"
    path.write_text(
        "topology: 1\nname: a\n"
        "streams: {pulses: {samples: 64, channels: {IN1: int16}}}\n"
        "common: &ring {slots: 1}\n"                      # line 4: bad value, and an unknown key
        "acquisition:\n"
        "  rp1:\n"
        "    stream: pulses\n"
        "    source: {kind: synthetic}\n"
        "    ring: {<<: *ring, policy: drop}\n"
        "processing: {proc1: {}}\n")
    error = _problems(path)
    assert [(p.line, p.key) for p in error.problems] == [(4, "common"), (4, "acquisition.rp1.ring.slots")]


def test_control_character_is_a_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "ctl.yaml"
    path.write_text("topology: 1\nname: x\x01\n")
    (problem,) = _problems(path).problems
    assert problem.line == 2 and "YAML syntax error" in problem.message


def test_bad_explicit_tag_is_a_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "tag.yaml"
    path.write_text("topology: 1\nname: x\nstreams: !!int many\n")
    (problem,) = _problems(path).problems
    assert problem.line == 3 and "cannot read 'many'" in problem.message


def test_recursive_alias_is_a_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text("topology: 1\nname: x\nstreams: &s {a: *s}\n")
    (problem,) = _problems(path).problems
    assert problem.line == 3 and "recursive alias" in problem.message


def test_error_survives_pickling() -> None:
    """Errors may cross process boundaries (node launch, multiprocessing)."""
    import pickle

    with pytest.raises(TopologyError) as info:
        topology_from_dict({"topology": 2})
    again = pickle.loads(pickle.dumps(info.value))
    assert again.problems == info.value.problems and str(again) == str(info.value)


def test_scientific_notation_is_a_number_and_quoted_text_is_not() -> None:
    from coordinator.topology import yamlpos
    data = yamlpos.parse("a: 1e9\nb: -2.5E-3\nc: '1e9'\nd: 1e\n").data
    assert data == {"a": 1e9, "b": -2.5e-3, "c": "1e9", "d": "1e"}
