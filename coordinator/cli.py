"""`daq-coordinator`: run and validate topologies."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.logging import RichHandler

from coordinator.topology import Topology, TopologyError, load_topology
from coordinator.topology.model import EMULATOR

EXIT_INVALID = 2


def _load_or_exit(path: str) -> Topology:
    try:
        return load_topology(path)
    except TopologyError as exc:
        click.echo(f"invalid topology ({len(exc.problems)} problem{'s' * (len(exc.problems) != 1)}):", err=True)
        click.echo(str(exc), err=True)
        sys.exit(EXIT_INVALID)


def describe(topo: Topology) -> str:
    """The graph of a topology as text: hosts, streams, nodes, who sends to whom."""
    lines = [f"topology {topo.name!r} (schema {topo.version}) from {topo.path}"]
    lines.append("hosts:" if topo.hosts else "hosts: none (everything on this machine)")
    for h in topo.hosts.values():
        lines.append(f"  {h.name}: {h.address} (launch: {h.launch})")
    lines.append("streams:")
    for s in topo.streams.values():
        chans = ", ".join(f"{c}:{t}" for c, t in s.channels.items())
        lines.append(f"  {s.name}: {s.samples} samples x [{chans}] = {s.dtype.itemsize} B/frame, "
                     f"modules {list(s.modules)}, dispatch {s.dispatch}")
    lines.append("acquisition nodes:")
    for a in topo.acquisition.values():
        board = getattr(a.source, "address", None)
        where = "" if board is None else " (emulated board)" if board == EMULATOR else \
            f" (board {board}:{a.source.port})"
        size = a.ring.slots * topo.streams[a.stream].dtype.itemsize / 1e6
        mode = ", one-shot" if a.ring.capture == "one-shot" else ""
        lines.append(f"  {a.name} on {a.host}: {a.source.kind} source{where} -> ring {a.ring.slots} slots "
                     f"= {size:,.1f} MB ({a.ring.policy}{mode}) -> {', '.join(topo.downstreams(a.name))}")
    lines.append("processing nodes:")
    for p in topo.processing.values():
        stages = " -> ".join(s.stage for s in p.pipeline)
        lines.append(f"  {p.name} on {p.host}: from {', '.join(topo.upstreams(p.name))}; "
                     f"credits {p.credits}; pipeline {stages}")
    r = topo.run
    stop = (f"{r.frames} frames" if r.frames else "") + (f" {r.duration} s" if r.duration else "")
    lines.append(f"run: directory {r.directory}, stop after {stop.strip() or 'Ctrl-C'}, "
                 f"on_node_loss {r.on_node_loss}")
    return "\n".join(lines)


@click.group()
@click.version_option(package_name="daq-pulses")
def main() -> None:
    """Distributed acquisition of detector pulses: run and check topologies."""


@main.command()
@click.argument("topology", type=click.Path(dir_okay=False))
def validate(topology: str) -> None:
    """Check TOPOLOGY and print its graph (exit 2 with every problem if it is invalid)."""
    click.echo(describe(_load_or_exit(topology)))


@main.command()
@click.argument("topology", type=click.Path(dir_okay=False))
@click.option("--loopback", is_flag=True, help="Run every host's nodes on this machine.")
@click.option("--frames", type=click.IntRange(min=1), help="Stop after N events per stream.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), help="Stop after S seconds.")
@click.option("--run-dir", type=click.Path(file_okay=False), help="Parent folder of the run directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON, no live display.")
def run(topology: str, loopback: bool, frames: int | None, duration: float | None,
        run_dir: str | None, as_json: bool) -> None:
    """Run one acquisition of TOPOLOGY; exit 0 when it ended as asked."""
    from coordinator.session import RunOptions

    options = RunOptions(frames=frames, duration=duration,
                         run_dir=Path(run_dir) if run_dir else None, loopback=loopback)
    _run_once(_load_or_exit(topology), options, as_json)


def _display(console: Console, as_json: bool) -> object | None:
    """--json: no display at all; stderr a terminal: the live view with its keys; else (batch
    jobs, logs redirected): a plain line per node every few seconds.  Warnings and errors go to
    the terminal too (above the live table); everything goes to the run's log.txt."""
    from coordinator.dashboard import LiveDisplay, PlainLines
    from coordinator.keyboard import Keyboard

    live = not as_json and console.is_terminal
    handler = RichHandler(console=console, show_path=False) if live else logging.StreamHandler()
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(message)s" if live else "%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return None if as_json else LiveDisplay(console, keyboard=Keyboard()) if live else PlainLines(console)


def _run_once(topo: Topology, options: object, as_json: bool) -> None:
    """One run with the live display (or JSON), its summary, exit with its code."""
    from coordinator.dashboard import summary_table
    from coordinator.session import Coordinator

    console = Console(stderr=True)
    display = _display(console, as_json)
    coord = Coordinator(topo, options, display)
    try:
        summary = coord.run()
    finally:
        if display is not None:
            display.close()
    if as_json:
        click.echo(json.dumps(summary, default=str))
    else:
        Console().print(summary_table(summary))
    sys.exit(summary["exit_code"])


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--pipeline", type=click.Path(dir_okay=False, exists=True),
              help="Pipeline file: `pipeline: [stages]` for every processing node, or a `processing:` section.")
@click.option("--run-dir", "into", type=click.Path(file_okay=False),
              help="Parent folder of the new run directory (default: the topology's).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON, no live display.")
def process(run_dir: str, pipeline: str | None, into: str | None, as_json: bool) -> None:
    """Run a pipeline over the finished run RUN_DIR (its frames replayed from its files): the
    outputs on-line processing would have made, in a new run directory."""
    from coordinator.later import processing_topology
    from coordinator.session import RunOptions

    try:
        topo = processing_topology(Path(run_dir), Path(pipeline) if pipeline else None)
    except TopologyError as exc:
        click.echo(f"cannot process {run_dir}:\n{exc}", err=True)
        sys.exit(EXIT_INVALID)
    _run_once(topo, RunOptions(run_dir=Path(into) if into else None), as_json)


@main.command()
@click.argument("plan", type=click.Path(dir_okay=False))
@click.option("--loopback", is_flag=True, help="Run every host's nodes on this machine.")
@click.option("--run-dir", type=click.Path(file_okay=False), help="Parent folder of the run directories.")
@click.option("--restart", is_flag=True, help="Do every run again (forget the progress of an earlier try).")
@click.option("--json", "as_json", is_flag=True, help="Print the batch's rows as JSON.")
def batch(plan: str, loopback: bool, run_dir: str | None, restart: bool, as_json: bool) -> None:
    """Run the acquisitions listed in PLAN (a batch file) on one system; resumable: a second
    try does only the runs not done yet.  Exit 0 when every run completed."""
    from coordinator.api import System, SystemError
    from coordinator.batch import Progress, check_plan, execute, load_plan
    from coordinator.dashboard import batch_table

    try:
        p = load_plan(plan)
        topo = load_topology(p.topology)
        system = System(topo, loopback=loopback, run_dir=Path(run_dir) if run_dir else None)
        check_plan(p, system.prepare)
    except TopologyError as exc:
        click.echo(f"invalid batch ({len(exc.problems)} problem{'s' * (len(exc.problems) != 1)}):", err=True)
        click.echo(str(exc), err=True)
        sys.exit(EXIT_INVALID)
    console = Console(stderr=True)
    display = system.display = _display(console, as_json)   # each run's dashboard; keys act on the run shown
    progress = Progress(system.topology.run.directory / p.progress_name, restart)
    try:
        with system:
            rows, interrupted = execute(p, system, progress, lambda m: console.print(m, highlight=False))
    except SystemError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    finally:
        if display is not None:
            display.close()
    if as_json:
        click.echo(json.dumps(rows, default=str))
    else:
        Console().print(batch_table(rows, p.path.name))
    sys.exit(130 if interrupted else 0 if all(r["result"] == "completed" for r in rows) else 1)


@main.command()
@click.argument("target")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="Local port of the page (0: any free one).")
@click.option("--open/--no-open", "open_browser", default=False, help="Open the page in a browser.")
def view(target: str, port: int, open_browser: bool) -> None:
    """Live oscilloscope and histograms of a run in progress: TARGET is its run directory (or
    tap endpoints tcp://HOST:PORT,...); serves a page on http://127.0.0.1:PORT/."""
    from coordinator.viewer import main as serve

    sys.exit(serve(target, port, open_browser))


@main.group()
def keys() -> None:
    """Keys of runs with `security: curve`."""


@keys.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace a key pair that is already there.")
def generate(directory: Path, force: bool) -> None:
    """Make the cluster key pair in DIRECTORY (the topology's `keys`); copy the folder to every
    host of the cluster, readable only by the user that runs the nodes."""
    from coordinator.security import SecurityError, generate_keys

    try:
        public, secret = generate_keys(directory, force)
    except SecurityError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    click.echo(f"public key: {public}\nsecret key: {secret} (mode 600)")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print the rebuilt run.json.")
def recover(run_dir: str, as_json: bool) -> None:
    """Rebuild the record of RUN_DIR (books, missing.csv, run.h5, run.json) from the report
    files and data files its nodes left, after its coordinator died."""
    from coordinator.dashboard import summary_table
    from coordinator.recover import RecoverError, recover as rebuild

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        summary = rebuild(Path(run_dir))
    except (RecoverError, TopologyError) as exc:
        click.echo(f"cannot recover {run_dir}: {exc}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(summary, default=str))
    else:
        Console().print(summary_table(summary))
    sys.exit(0 if summary["books"]["balanced"] else 1)


if __name__ == "__main__":
    main()
