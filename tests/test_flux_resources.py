"""The resource stream against a real broker (``flux start --test-size=4``).

A 4-broker instance (``node[0-3]``, 2 cores each, queues ``debug`` on ranks 0-1 and
``batch`` on 2-3) bootstrapped from a config file, so that a broker stopped with
``start.kill`` can be run again (``start.run``, flux-core's ``t/scripts/startctl.py``).
A FluxSource with the real bindings follows it while the test drains two ranks with
reasons, undrains one and stops a broker and brings it back; after each step the state
the delivered events imply must become what ``resource.status`` (what ``flux resource
status`` shows) and ``flux resource status`` say. Once as the owner (journal mode), once
as a guest (EPERM: poll mode). Needs flux-core on PATH and its bindings importable here.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fluxmon.config import load_settings
from fluxmon.events import ResourceEvent
from fluxmon.logs import make_logger
from fluxmon.sources.flux import FluxSource
from fluxmon.sources.flux.resources import format_idset, parse_idset
from tests.test_resource_stream import Recorder, State

FLUX = shutil.which("flux")


def _bindings_missing() -> str | None:
    try:
        import flux  # noqa: F401
    except ImportError as err:
        return f"needs the flux-core bindings importable here ({err}; README, Testing)"
    return None


BINDINGS_MISSING = _bindings_missing() if FLUX else None
pytestmark = [
    pytest.mark.flux,
    pytest.mark.slow,
    pytest.mark.skipif(FLUX is None, reason="needs a Flux broker: `flux` is not on PATH"),
    pytest.mark.skipif(BINDINGS_MISSING is not None, reason=str(BINDINGS_MISSING)),
]

HOSTS = "node[0-3]"
PROPERTIES = ("-p", "debug:0-1", "-p", "batch:2-3")
#: The local connector lets the instance owner act as another user (flux-core's tests
#: do this); it reads these at connect, so handles are opened under this lock.
GUEST = {"FLUX_HANDLE_USERID": "4242", "FLUX_HANDLE_ROLEMASK": "0x2"}
HANDLES = threading.Lock()
#: Generous: the CI machine has 2 cores shared with other work.
TIMEOUT = 180.0


def until(condition: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    """Wait for ``condition`` (polled), False if it did not hold within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


@dataclasses.dataclass
class Instance:
    """The 4-broker instance: its URI, the ``flux start`` control URI, and commands."""

    uri: str
    start_uri: str
    env: dict[str, str]

    def flux(self, *args: str) -> str:
        """``flux ARGS`` in the instance (as the owner): stdout."""
        assert FLUX is not None
        proc = subprocess.run(
            [FLUX, *args], env=self.env, capture_output=True, text=True, timeout=120, check=False
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def status(self) -> dict[str, Any]:
        """The ``resource.status`` payload, as the owner."""
        import flux

        with HANDLES:
            handle = flux.Flux(self.uri)
        payload: dict[str, Any] = handle.rpc("resource.status").get()
        return payload

    def cli_status(self) -> dict[str, str]:
        """``flux resource status``: ranks by state (``offline``: every rank shown offline)."""
        out = self.flux("resource", "status", "-s", "all", "-no", "{state} {ranks}")
        states: dict[str, set[int]] = {"offline": set()}
        for line in out.splitlines():
            state, _, text = line.partition(" ")
            ranks = parse_idset(text.strip(), state)
            states.setdefault(state.rstrip("*"), set()).update(ranks)
            if state.endswith("*"):  # offline (flux-resource(1): "*" marks offline nodes)
                states["offline"].update(ranks)
        return {state: format_idset(ranks) for state, ranks in states.items()}

    def start_rpc(self, topic: str, payload: dict[str, Any]) -> None:
        """An RPC to ``flux start`` (``start.kill``, ``start.run``)."""
        import flux

        with HANDLES:
            handle = flux.Flux(self.start_uri)
        handle.rpc(topic, payload).get()


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[Instance]:
    """A running 4-broker instance; shut down afterwards."""
    assert FLUX is not None
    work = Path(tempfile.mkdtemp(prefix="fmres-"))  # short: ipc socket paths are bounded
    conf, rundir, state = work / "conf", work / "run", work / "state"
    for d in (conf, rundir, state):
        d.mkdir()
    subprocess.run([FLUX, "keygen", "--name", "testcert", str(work / "cert")], check=True)
    R = subprocess.run(
        [FLUX, "R", "encode", f"--hosts={HOSTS}", "-r0-3", "-c0-1", *PROPERTIES],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    (work / "R").write_text(R)
    (conf / "bootstrap.toml").write_text(
        f'[bootstrap]\ncurve_cert = "{work / "cert"}"\n'
        f'default_bind = "ipc://{work}/tbon-%h"\ndefault_connect = "ipc://{work}/tbon-%h"\n'
        f'hosts = [ {{ host = "{HOSTS}" }} ]\n'
    )
    (conf / "resource.toml").write_text(f'[resource]\npath = "{work / "R"}"\nnoverify = true\n')
    (conf / "queues.toml").write_text(
        '[queues.debug]\nrequires = ["debug"]\n[queues.batch]\nrequires = ["batch"]\n'
        '[policy.jobspec.defaults.system]\nqueue = "batch"\n'
    )
    start_file = work / "start-uri"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUX_")}
    log = (tmp_path / "broker.log").open("w")
    proc = subprocess.Popen(
        [FLUX, "start", "--test-size=4", f"--test-hosts={HOSTS}", f"-c{conf}",
         f"--test-rundir={rundir}", "--test-exit-mode=leader", "--test-exit-timeout=0",
         "-Sbroker.quorum=4", "-Stbon.topo=kary:0", f"-Sstatedir={state}",
         "sh", "-c", f'echo "$FLUX_START_URI" > {start_file}; exec sleep 100000'],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    uri = f"local://{rundir}/local-0"
    inst = Instance(uri, "", {**env, "FLUX_URI": uri})
    try:
        assert until(lambda: start_file.exists() and bool(start_file.read_text().strip()))
        inst.start_uri = start_file.read_text().strip()
        assert until(lambda: _online(inst) == "0-3")
        yield inst
    finally:
        subprocess.run(
            [FLUX, "shutdown", "--quiet"], env=inst.env, capture_output=True, timeout=300,
            check=False,
        )  # fmt: skip
        try:
            proc.wait(timeout=300)
        except subprocess.TimeoutExpired:  # pragma: no cover - a stuck broker
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(work, ignore_errors=True)


def _online(inst: Instance) -> str | None:
    try:
        return str(inst.status()["online"])
    except OSError:
        return None


@dataclasses.dataclass
class Following:
    """A FluxSource following the instance on its own thread, delivering to a Recorder."""

    recorder: Recorder
    stop: threading.Event
    thread: threading.Thread

    def state(self) -> State:
        """What the events delivered so far imply."""
        state = State()
        for event, _ in list(self.recorder.resources):
            state.apply(event)
        return state

    def events(self) -> list[tuple[ResourceEvent, bool]]:
        """The events delivered so far, each with its live flag."""
        return list(self.recorder.resources)


def follow(inst: Instance, poll_interval: float, *, guest: bool = False) -> Following:
    """Start a FluxSource with the real bindings on the instance (as a guest if ``guest``)."""
    from fluxmon.sources.flux.bindings import FluxBindings

    class Bindings(FluxBindings):
        def connect(self, uri: str) -> Any:
            with HANDLES:
                saved = {k: os.environ.get(k) for k in GUEST}
                if guest:
                    os.environ.update(GUEST)
                try:
                    return super().connect(uri)
                finally:
                    for key, value in saved.items():
                        if value is None:
                            os.environ.pop(key, None)
                        else:
                            os.environ[key] = value

    base = load_settings(None)
    settings = dataclasses.replace(base.flux, poll_interval=poll_interval)
    log = make_logger(io.StringIO(), "json")
    recorder = Recorder()
    source = FluxSource(settings, uri=inst.uri, bindings=Bindings(), stats=_NoStats(), log=log)
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(recorder, stop), daemon=True)
    thread.start()
    return Following(recorder, stop, thread)


class _NoStats:
    """WatchStats that keeps nothing."""

    def watch_opened(self, eventlog: str) -> None:
        """Nothing."""

    def watch_closed(self, eventlog: str) -> None:
        """Nothing."""

    def watch_failed(self, errno_name: str) -> None:
        """Nothing."""

    def exec_abandoned(self, reason: str) -> None:
        """Nothing."""


def agrees(inst: Instance, following: Following) -> Callable[[], bool]:
    """Whether the delivered events imply what the broker and ``flux resource status`` say."""

    def check() -> bool:
        state = following.state()
        try:
            state.matches(inst.status())
        except AssertionError:
            return False
        cli = inst.cli_status()
        offline = format_idset({0, 1, 2, 3} - state.online)
        return _drained_cli(cli) == format_idset(state.drained) and cli["offline"] == offline

    return check


def _drained_cli(cli: dict[str, str]) -> str:
    ranks: set[int] = set()
    for state in ("drained", "draining"):
        ranks |= parse_idset(cli.get(state, ""), state)
    return format_idset(ranks)


def drive(inst: Instance, following: Following) -> None:
    """The resource life; after each step the delivered state agrees with the broker's."""
    check = agrees(inst, following)
    assert until(check), ("initial", following.state(), inst.status())
    inst.flux("resource", "drain", "1", "bad dimm")
    assert until(check), ("drain 1", following.state(), inst.status())
    inst.flux("resource", "drain", "2-3", "ECC errors")
    assert until(check), ("drain 2-3", following.state(), inst.status())
    inst.flux("resource", "undrain", "2")
    assert until(check), ("undrain 2", following.state(), inst.status())
    inst.start_rpc("start.kill", {"rank": 3, "signum": 15})
    assert until(lambda: inst.status()["offline"] == "3")
    assert until(check), ("stop 3", following.state(), inst.status())
    inst.start_rpc("start.run", {"rank": 3})
    assert until(lambda: inst.status()["online"] == "0-3")
    assert until(check), ("run 3", following.state(), inst.status())


def test_journal_follows_drains_and_a_broker_restart(instance: Instance) -> None:
    """As the owner: journal mode; drains carry hostnames and reasons; state agrees at each step."""
    following = follow(instance, poll_interval=10.0)
    try:
        drive(instance, following)
    finally:
        following.stop.set()
        following.thread.join(timeout=TIMEOUT)
    recorder = following.recorder
    assert recorder.modes == ["journal"]
    assert recorder.queue_nodes == [{"batch": ["batch"], "debug": ["debug"]}]
    assert recorder.rejected == []
    events = following.events()
    assert events[0][0].name == "resource-define"
    assert not events[0][1]
    assert events[0][0].context["R"]["execution"]["nodelist"] == [HOSTS]
    drains = [
        (e.context["nodelist"], e.context["reason"]) for e, live in events if e.name == "drain"
    ]
    assert drains == [("node1", "bad dimm"), ("node[2-3]", "ECC errors")]
    assert all(live for e, live in events if e.name in ("drain", "undrain", "offline"))
    assert [e.context["idset"] for e, _ in events if e.name == "offline"] == ["3"]


def test_guest_polls_status_and_agrees(instance: Instance) -> None:
    """As a guest the journal answers EPERM: resource.status polls give the same state."""
    following = follow(instance, poll_interval=0.5, guest=True)
    try:
        drive(instance, following)
    finally:
        following.stop.set()
        following.thread.join(timeout=TIMEOUT)
    recorder = following.recorder
    assert recorder.modes == ["poll"]
    assert recorder.rejected == []
    events = following.events()
    assert events[0][0].name == "resource-define"
    assert json.dumps(events[0][0].context["R"], sort_keys=True) == json.dumps(
        instance.status()["R"], sort_keys=True
    )
    reasons = [e.context.get("reason") for e, live in events if e.name == "drain" and live]
    assert reasons == ["bad dimm", "ECC errors"]


# -- fluxmon run end to end: its node and core figures against flux resource ----------


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """fluxmon's /metrics as {(sample name, sorted labels): value} ({} while it is not up)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _broker_figures(inst: Instance) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """What ``flux resource status`` and ``flux resource list -q`` say, as fluxmon's samples."""
    cli = inst.cli_status()
    ranks = {0, 1, 2, 3}
    down = parse_idset(cli["offline"], "offline")
    drained = parse_idset(cli.get("drained", ""), "drained") - down
    draining = parse_idset(cli.get("draining", ""), "draining") - down
    up = ranks - down - drained - draining
    want: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for state, nodes in (("up", up), ("down", down), ("drained", drained),
                         ("draining", draining)):  # fmt: skip
        want[("flux_resource_nodes", (("state", state),))] = float(len(nodes))
    names = {"free": "free", "allocated": "allocated", "down": "unavailable"}
    for queue in ("debug", "batch"):
        out = inst.flux("resource", "list", "-q", queue, "-s", "free,allocated,down",
                        "-no", "{state} {ncores}")  # fmt: skip
        cores = dict.fromkeys(names.values(), 0.0)
        for line in out.splitlines():
            state, ncores = line.split()
            cores[names[state]] += float(ncores)
        if draining:
            # flux resource list counts a draining node's allocated cores both as
            # allocated and as down; fluxmon's states partition the cores (allocated first).
            busy = inst.flux("resource", "list", "-q", queue, "-s", "allocated",
                             "-i", format_idset(draining), "-no", "{ncores}")  # fmt: skip
            cores["unavailable"] -= sum(float(n) for n in busy.split())
        for state, count in cores.items():
            want[("flux_resource_cores", (("queue", queue), ("state", state)))] = count
    return want


def test_fluxmon_figures_equal_flux_resource_at_each_step(
    instance: Instance, tmp_path: Path
) -> None:
    """``fluxmon run`` on the instance: nodes by state and cores per queue equal what
    ``flux resource status``/``list`` say after each drain, undrain, job and broker stop,
    and the node records carry the hostnames, reasons and durations.
    """
    import socket
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    conf = tmp_path / "fluxmon.toml"
    conf.write_text('[log]\nformat = "json"\n')
    log_path = tmp_path / "fluxmon.log"
    env = {k: v for k, v in instance.env.items() if k != "PYTHONPATH"}
    fluxmon = str(Path(sys.executable).parent / "fluxmon")
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [fluxmon, "run", "--listen", f"127.0.0.1:{port}", "-c", str(conf)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    seen: list[tuple[str, Any, Any]] = []

    def agrees_now(step: str) -> Callable[[], bool]:
        def check() -> bool:
            got, want = _scrape(port), _broker_figures(instance)
            wrong = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
            seen[:] = [(step, wrong, None)]
            return not wrong

        return check

    def step(name: str, *command: str) -> None:
        if command:
            instance.flux(*command)
        assert until(agrees_now(name)), seen

    try:
        step("initial")
        step("drain 1", "resource", "drain", "1", "bad dimm")
        step("drain 2-3", "resource", "drain", "2-3", "ECC errors")
        step("undrain 2", "resource", "undrain", "2")
        instance.flux("queue", "start", "--all")  # named queues start stopped
        debug = instance.flux("submit", "-q", "debug", "-n2", "sleep", "300").strip()
        batch = instance.flux("submit", "-q", "batch", "-n1", "sleep", "300").strip()
        for job in (debug, batch):
            instance.flux("job", "wait-event", "-t", "100", job, "start")
        step("jobs running")
        step("drain 0 under a job", "resource", "drain", "0", "nhc: /tmp full")
        instance.start_rpc("start.kill", {"rank": 3, "signum": 15})
        assert until(lambda: instance.status()["offline"] == "3")
        step("stop 3")
        instance.start_rpc("start.run", {"rank": 3})
        assert until(lambda: instance.status()["online"] == "0-3")
        step("run 3")
        instance.flux("cancel", debug, batch)
        for job in (debug, batch):
            instance.flux("job", "wait-event", "-t", "100", job, "clean")
        step("idle")
        step("undrain 0", "resource", "undrain", "0")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    records = [json.loads(x) for x in log_path.read_text().splitlines() if x.startswith("{")]

    def of(msg: str) -> list[dict[str, Any]]:
        return [r for r in records if r["msg"] == msg]

    assert [(r["nodelist"], r["reason"]) for r in of("node.drain")] == [
        ("node1", "bad dimm"), ("node[2-3]", "ECC errors"), ("node0", "nhc: /tmp full"),
    ]  # fmt: skip
    undrains = {r["nodelist"]: r["drained_seconds"] for r in of("node.undrain")}
    assert set(undrains) == {"node2", "node0"}
    assert all(seconds > 0 for seconds in undrains.values())
    assert [r["nodelist"] for r in of("node.offline")] == ["node3"]
    (online,) = [r for r in of("node.online") if r["nodelist"] == "node3"]
    assert online["down_seconds"] > 0
    assert of("event.rejected") == []
    finished = {r["id"]: r for r in of("job.finished")}
    assert {r["nodelist"] for r in finished.values()} == {"node0", "node2"}
