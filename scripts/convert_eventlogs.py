"""Convert recorded flux-core eventlogs into fluxmon's replay format (a dev tool).

Usage: python scripts/convert_eventlogs.py SRC_DIR DEST_DIR

SRC_DIR holds ``<scenario>.eventlog.jsonl`` (``flux job eventlog -f json``),
``<scenario>.exec.eventlog.jsonl``, ``<scenario>.jobspec.json``, its README.md (whose
scenario table gives each job's id) and ``journal.jsonl`` (JournalConsumer output).
DEST_DIR receives ``scenarios/<scenario>.jsonl`` (main and exec events merged in
timestamp order, jobspec on submit), ``journal.replay.jsonl`` and ``expected.json``
(each scenario's jobid and the result/returncode the README's table gives).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

ROW = re.compile(
    r"^\| (?P<prefix>[\w-]+) \| .* \| \S+ / (?P<id>\d+) \| (?P<result>[A-Z]+) (?P<rc>-?\d+)"
)


def scenario_table(readme: str) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for line in readme.splitlines():
        match = ROW.match(line)
        if match:
            table[match["prefix"]] = {
                "id": int(match["id"]),
                "result": match["result"].lower(),
                "returncode": int(match["rc"]),
            }
    return table


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def convert_scenario(src: Path, prefix: str, jobid: int) -> list[str]:
    main = load_jsonl(src / f"{prefix}.eventlog.jsonl")
    exec_path = src / f"{prefix}.exec.eventlog.jsonl"
    execs = load_jsonl(exec_path) if exec_path.exists() else []
    jobspec = json.loads((src / f"{prefix}.jobspec.json").read_text())
    rows: list[tuple[float, int, dict[str, Any]]] = []
    for order, entry in enumerate(main):
        line: dict[str, Any] = {"id": jobid, "eventlog": "eventlog", **entry}
        if entry["name"] == "submit":
            line["jobspec"] = jobspec
        rows.append((entry["timestamp"], order, line))
    for order, entry in enumerate(execs):
        rows.append(
            (
                entry["timestamp"],
                1000 + order,
                {"id": jobid, "eventlog": "guest.exec.eventlog", **entry},
            )
        )
    # Main events are already in timestamp order; exec events are slotted in by time.
    rows.sort(key=lambda row: (row[0], row[1]))
    return [json.dumps(line, separators=(",", ":")) for _, _, line in rows]


def convert_journal(path: Path) -> list[str]:
    out = []
    for entry in load_jsonl(path):
        if entry.get("sentinel"):
            continue
        line: dict[str, Any] = {
            "id": entry["jobid"],
            "eventlog": "eventlog",
            "timestamp": entry["timestamp"],
            "name": entry["name"],
            "context": entry.get("context") or {},
        }
        for key in ("jobspec", "R"):
            if entry.get(key) is not None:
                line[key] = entry[key]
        out.append(json.dumps(line, separators=(",", ":")))
    return out


def main(argv: list[str]) -> int:
    src, dest = Path(argv[1]), Path(argv[2])
    table = scenario_table((src / "README.md").read_text())
    (dest / "scenarios").mkdir(parents=True, exist_ok=True)
    expected = {}
    for prefix, row in sorted(table.items()):
        if not (src / f"{prefix}.eventlog.jsonl").exists():
            continue
        lines = convert_scenario(src, prefix, row["id"])
        (dest / "scenarios" / f"{prefix}.jsonl").write_text("\n".join(lines) + "\n")
        expected[prefix] = row
    (dest / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    (dest / "journal.replay.jsonl").write_text(
        "\n".join(convert_journal(src / "journal.jsonl")) + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
