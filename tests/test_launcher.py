"""Starting nodes and fetching their files the way a host's `launch` says."""
from __future__ import annotations

from pathlib import Path

from coordinator.launcher import Launcher, node_argv, render_template
from coordinator.topology.model import HostConfig


def test_a_node_command_line_carries_only_the_control_address_name_and_keys():
    assert node_argv("acquisition", "rp1", "tcp://10.0.0.1:5550", None) == \
        ["daq-acqnode", "--coordinator", "tcp://10.0.0.1:5550", "--name", "rp1"]
    assert node_argv("processing", "p", "tcp://h:1", "/opt/py", Path("/k")) == \
        ["/opt/py", "-m", "procnode", "--coordinator", "tcp://h:1", "--name", "p", "--keys", "/k"]


def test_template_fields_are_quoted():
    assert render_template("ip netns exec x-{host} {command}", "a b", "1", "cat f") == \
        "ip netns exec x-'a b' cat f"


def test_a_file_is_fetched_through_the_host_template(tmp_path):
    """The template runs `cat` there; here the 'host' is this machine behind `sh -c`."""
    (tmp_path / "far").mkdir()
    src = tmp_path / "far" / "proc1 file.h5"
    src.write_bytes(bytes(range(256)) * 1000)
    launcher = Launcher({"h": HostConfig("h", "127.0.0.1", "env -i {command}")})
    dest = tmp_path / "proc1.h5"
    assert launcher.fetch("h", str(src), dest) == ""
    assert dest.read_bytes() == src.read_bytes()


def test_a_file_that_cannot_be_fetched_says_why_and_leaves_nothing(tmp_path):
    launcher = Launcher({"h": HostConfig("h", "127.0.0.1", "{command}"),
                         "m": HostConfig("m", "127.0.0.1", "manual")})
    dest = tmp_path / "x.h5"
    why = launcher.fetch("h", str(tmp_path / "absent.h5"), dest)
    assert "exited with 1" in why and "absent.h5" in why
    assert "started manual" in launcher.fetch("m", "/x", dest)
    assert list(tmp_path.iterdir()) == []
