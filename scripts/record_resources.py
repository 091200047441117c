"""Record a real broker's ``resource.journal`` through a resource life (a dev tool).

Usage (flux-core's ``flux`` on PATH; its Python bindings importable):

    python scripts/record_resources.py OUTDIR

Starts a 4-broker test instance (``node[0-3]``, 2 cores each; ranks 0-1 have the
property ``debug``, 2-3 ``batch``; queues ``debug`` and ``batch`` require them) that
bootstraps from a config file, so that a broker stopped with ``start.kill`` can be run
again with ``start.run`` (flux-core's ``t/scripts/startctl.py``). Inside it, this script
(``--inside``) sends one ``resource.journal`` request and writes every raw response to
``OUTDIR/journal.jsonl`` (one JSON object per line: ``{"step": ..., "payload": ...}`` or
``{"step": ..., "errno": ...}``), while it drains, undrains, stops and restarts a broker
and runs jobs; after each step it saves the truth in ``OUTDIR/steps.json``: the
``resource.status`` and ``resource.sched-status`` payloads and the text of ``flux
resource status`` and ``flux resource list``. It also records what a guest (not the
instance owner) gets from each RPC.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HOSTS = "node[0-3]"
NODES = 4
PROPERTIES = ("-p", "debug:0-1", "-p", "batch:2-3")


def _config(workdir: Path) -> Path:
    """A config dir like flux-core's sharness "system" personality, plus queues."""
    conf = workdir / "conf.d"
    conf.mkdir()
    sockdir = Path(tempfile.mkdtemp(prefix="fluxrec-sock-"))
    cert = workdir / "cert"
    subprocess.run(["flux", "keygen", "--name", "testcert", str(cert)], check=True)
    R = subprocess.run(
        ["flux", "R", "encode", f"--hosts={HOSTS}", "-r0-3", "-c0-1", *PROPERTIES],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    (workdir / "R").write_text(R)
    (conf / "bootstrap.toml").write_text(
        f"""[bootstrap]
curve_cert = "{cert}"
default_bind = "ipc://{sockdir}/tbon-%h"
default_connect = "ipc://{sockdir}/tbon-%h"
hosts = [ {{ host = "{HOSTS}" }} ]
"""
    )
    (conf / "resource.toml").write_text(
        f"""[resource]
path = "{workdir / "R"}"
noverify = true
"""
    )
    (conf / "queues.toml").write_text(
        """[queues.debug]
requires = ["debug"]

[queues.batch]
requires = ["batch"]

[policy.jobspec.defaults.system]
queue = "batch"
"""
    )
    (conf / "tbon.toml").write_text('[tbon]\ntorpid_min = "1s"\ntorpid_max = "5s"\n')
    return conf


def outside(outdir: Path) -> int:
    """Start the instance and run this script inside it."""
    outdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="fluxrec-"))
    conf = _config(workdir)
    (workdir / "state").mkdir()
    command = [
        "flux",
        "start",
        f"--test-size={NODES}",
        f"--test-hosts={HOSTS}",
        f"-c{conf}",
        "--test-exit-mode=leader",
        "--test-exit-timeout=0",
        f"-Sbroker.quorum={NODES}",
        "-Stbon.topo=kary:0",
        f"-Sstatedir={workdir / 'state'}",
        "flux",
        "python",
        __file__,
        "--inside",
        str(outdir),
    ]
    code = subprocess.run(command, check=False).returncode
    if code != 0:
        return code
    # The same instance again on its statedir: what a restarted broker's journal holds.
    command[command.index("--inside")] = "--inside-restart"
    return subprocess.run(command, check=False).returncode


class Journal(threading.Thread):
    """One ``resource.journal`` stream on its own handle, every response kept raw."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.step = "connect"
        self.lines: list[dict[str, Any]] = []
        self.lock = threading.Condition()

    def run(self) -> None:
        import flux
        import flux.constants

        handle = flux.Flux()
        future = handle.rpc("resource.journal", {}, 0, flux.constants.FLUX_RPC_STREAMING)

        def on_response(future: Any) -> None:
            try:
                record: dict[str, Any] = {"payload": json.loads(future.get_str())}
            except OSError as err:
                record = {"errno": err.errno, "error": err.strerror}
            future.reset()
            with self.lock:
                record = {"step": self.step, **record}
                self.lines.append(record)
                with self.path.open("a") as out:
                    out.write(json.dumps(record, sort_keys=True) + "\n")
                self.lock.notify_all()

        future.then(on_response)
        handle.reactor_run()

    def wait_for(self, name: str, count: int = 1, timeout: float = 120.0) -> None:
        """Wait until ``count`` events called ``name`` were streamed."""
        deadline = time.monotonic() + timeout

        def seen() -> int:
            return sum(
                1
                for line in self.lines
                for event in line.get("payload", {}).get("events", [])
                if event.get("name") == name
            )

        with self.lock:
            while seen() < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {count} {name} events in {timeout} s")
                self.lock.wait(left)


def _run(*argv: str) -> str:
    print("+", " ".join(argv), file=sys.stderr)
    out: str = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return out


def _rpc(topic: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """One RPC's payload (or its error), through a fresh ``flux python`` (``env``: a guest)."""
    code = (
        "import flux, json, sys\n"
        "try:\n"
        f"    print(json.dumps({{'payload': json.loads(flux.Flux().rpc({topic!r}).get_str())}}))\n"
        "except OSError as err:\n"
        "    print(json.dumps({'errno': err.errno, 'error': err.strerror}))\n"
    )
    out = subprocess.run(
        ["flux", "python", "-c", code],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def _guest_journal() -> dict[str, Any]:
    """What the first response to a guest's ``resource.journal`` request is."""
    code = (
        "import flux, json, flux.constants as c\n"
        "f = flux.Flux().rpc('resource.journal', {}, 0, c.FLUX_RPC_STREAMING)\n"
        "try:\n"
        "    print(json.dumps({'payload': json.loads(f.get_str())}))\n"
        "except OSError as err:\n"
        "    print(json.dumps({'errno': err.errno, 'error': err.strerror}))\n"
    )
    out = subprocess.run(
        ["flux", "python", "-c", code],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **GUEST},
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


#: The local connector lets the instance owner act as another user (a guest).
GUEST = {"FLUX_HANDLE_USERID": "4242", "FLUX_HANDLE_ROLEMASK": "0x2"}


def inside(outdir: Path) -> int:
    """The resource life, recorded."""
    journal_path = outdir / "journal.jsonl"
    journal_path.unlink(missing_ok=True)
    journal = Journal(journal_path)
    journal.start()
    steps: list[dict[str, Any]] = []

    def truth(step: str, **extra: Any) -> None:
        time.sleep(0.5)  # lets the status of the step settle; the truth is read, not timed
        steps.append(
            {
                "step": step,
                "status": _rpc("resource.status")["payload"],
                "sched_status": _rpc("resource.sched-status")["payload"],
                "flux_resource_status": _run(
                    "flux",
                    "resource",
                    "status",
                    "-s",
                    "all",
                    "-no",
                    "{state} {nnodes} {ranks} {nodelist} {reason}",
                ),
                "flux_resource_list": _run(
                    "flux",
                    "resource",
                    "list",
                    "-no",
                    "{state} {queue} {nnodes} {ncores} {ngpus} {rlist}",
                ),
                **extra,
            }
        )
        (outdir / "steps.json").write_text(json.dumps(steps, indent=1, sort_keys=True) + "\n")

    def step(name: str) -> None:
        with journal.lock:
            journal.step = name

    # All four brokers online, then the initial state.
    _run("flux", "resource", "drain", "-n")  # waits for nothing; lists drained
    journal.wait_for("online")
    _run("flux", "queue", "start", "--all")
    truth(
        "initial",
        config_queues=json.loads(_run("flux", "config", "get", "queues")),
        guest={
            "resource.journal": _guest_journal(),
            "resource.status": bool(_rpc("resource.status", GUEST).get("payload")),
            "resource.sched-status": bool(_rpc("resource.sched-status", GUEST).get("payload")),
            "config.get": bool(_rpc("config.get", GUEST).get("payload")),
        },
    )

    step("drain-1")
    _run("flux", "resource", "drain", "1", "bad dimm")
    journal.wait_for("drain")
    truth("drain-1")

    step("drain-2-3")
    _run("flux", "resource", "drain", "2-3", "ECC errors on rank 2")
    journal.wait_for("drain", 2)
    truth("drain-2-3")

    step("undrain-2")
    _run("flux", "resource", "undrain", "2")
    journal.wait_for("undrain")
    truth("undrain-2")

    step("stop-3")
    import flux

    start = flux.Flux(os.environ["FLUX_START_URI"])
    start.rpc("start.kill", {"rank": 3, "signum": 15}).get()
    journal.wait_for("offline")
    truth("stop-3")

    step("run-3")
    start.rpc("start.run", {"rank": 3}).get()
    journal.wait_for("online", 2)
    truth("run-3")

    step("torpid-3")
    start.rpc("start.kill", {"rank": 3, "signum": 19}).get()  # SIGSTOP
    journal.wait_for("torpid")
    truth("torpid-3")
    step("lively-3")
    start.rpc("start.kill", {"rank": 3, "signum": 18}).get()  # SIGCONT
    journal.wait_for("lively")
    truth("lively-3")

    step("disconnect-3")
    _run("flux", "overlay", "disconnect", "3")
    journal.wait_for("offline", 2)
    truth("disconnect-3", start_status=json.loads(start.rpc("start.status").get_str()))
    step("rejoin-3")
    deadline = time.monotonic() + 120
    while json.loads(start.rpc("start.status").get_str())["procs"][3]["pid"] != -1:
        if time.monotonic() > deadline:
            raise TimeoutError("rank 3 still running after overlay disconnect")
        time.sleep(0.2)
    start.rpc("start.run", {"rank": 3}).get()
    journal.wait_for("online", 3)
    truth("rejoin-3")

    step("undrain-3-redrain")
    _run("flux", "resource", "undrain", "3")
    journal.wait_for("undrain", 2)
    _run("flux", "resource", "drain", "--update", "0,3", "maintenance")
    journal.wait_for("drain", 3)
    truth("undrain-3-redrain")

    step("jobs")
    _run("flux", "resource", "undrain", "0")
    journal.wait_for("undrain", 3)
    jobid = _run("flux", "submit", "-q", "batch", "-N1", "-n2", "sleep", "300").strip()
    _run("flux", "job", "wait-event", "-t", "120", jobid, "start")
    _run("flux", "run", "-q", "debug", "-N1", "-n1", "hostname")
    truth("jobs-running", jobid=jobid)

    step("drain-busy")
    _run("flux", "resource", "drain", "2", "draining with a job on it")
    journal.wait_for("drain", 4)
    truth("drain-busy")
    _run("flux", "cancel", jobid)
    _run("flux", "job", "wait-event", "-t", "120", jobid, "clean")
    truth("idle")
    step("end")
    _reconnect(outdir / "journal-reconnect.jsonl")
    return 0


def _reconnect(path: Path) -> None:
    """A second stream's responses up to its sentinel: what a reconnect gets."""
    import flux
    import flux.constants

    future = flux.Flux().rpc("resource.journal", {}, 0, flux.constants.FLUX_RPC_STREAMING)
    with path.open("w") as out:
        while True:
            payload = json.loads(future.get_str())
            future.reset()
            out.write(json.dumps({"payload": payload}, sort_keys=True) + "\n")
            if not payload["events"]:
                return


def inside_restart(outdir: Path) -> int:
    """After a restart on the same statedir: the journal's history and the status."""
    import flux

    deadline = time.monotonic() + 120
    while flux.Flux().rpc("resource.status").get()["online"] != f"0-{NODES - 1}":
        if time.monotonic() > deadline:
            raise TimeoutError("not every broker came back online")
        time.sleep(0.2)
    _reconnect(outdir / "journal-restart.jsonl")
    status = {"status": _rpc("resource.status")["payload"]}
    (outdir / "restart-status.json").write_text(json.dumps(status, indent=1, sort_keys=True) + "\n")
    return 0


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--inside":
        return inside(Path(sys.argv[2]))
    if len(sys.argv) == 3 and sys.argv[1] == "--inside-restart":
        return inside_restart(Path(sys.argv[2]))
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    return outside(Path(sys.argv[1]).resolve())


if __name__ == "__main__":
    sys.exit(main())
