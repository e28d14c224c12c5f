"""CPU used by the processes of a benchmark, read from /proc (same machine), grouped by role.

    before = snapshot()
    ... the load ...
    after = snapshot()
    split = cpu_split(before, after, roles={"web": web.pid}, alone={"load": os.getpid()},
                      connections=backends("af_bench_latency"))

A role is a process and all its descendants (gunicorn's and Celery's workers). The PostgreSQL backends of
`database` are attributed to the role whose process holds the client end of their connection (matched by
the client's port through /proc/net/tcp and the processes' socket inodes): "postgresql(web)" and so on.
Every other PostgreSQL process (the WAL writer, other databases' backends) is "postgresql(other)", and
the machine's whole CPU (from /proc/stat) is printed beside, so what no role accounts for is visible.
"""

from __future__ import annotations

import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, str, float] | None:
    """(parent pid, command name, CPU seconds) of a process, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = text[text.index("(") + 1 : text.rindex(")")]
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[1]), name, (int(fields[11]) + int(fields[12])) / TICK


def snapshot() -> dict[int, tuple[int, str, float]]:
    processes = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            processes[int(entry)] = stat
    return processes


def machine_cpu_seconds() -> float:
    """All CPUs' busy time so far (user, nice, system, irq, softirq, steal), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / TICK


def _descendants(processes: dict[int, tuple[int, str, float]], root: int) -> set[int]:
    found = {root}
    grew = True
    while grew:
        grew = False
        for pid, (parent, _, _) in processes.items():
            if parent in found and pid not in found:
                found.add(pid)
                grew = True
    return found


def _socket_owners() -> dict[int, int]:
    """Local TCP port -> pid holding the socket (for the loopback connections to PostgreSQL)."""
    inode_port: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            inode_port[parts[9]] = int(parts[1].rsplit(":", 1)[1], 16)
    owners: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                try:
                    target = os.readlink(f"/proc/{entry}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    port = inode_port.get(target[8:-1])
                    if port is not None:
                        owners.setdefault(port, int(entry))
        except OSError:
            continue
    return owners


def backends(database: str) -> dict[int, int]:
    """PostgreSQL backend pid -> client port, for the connections to `database` (psycopg, its own connection)."""
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid, client_port FROM pg_stat_activity WHERE datname = %s AND client_port IS NOT NULL",
            [database],
        ).fetchall()
    return {pid: port for pid, port in rows}


def cpu_split(
    before: dict[int, tuple[int, str, float]],
    after: dict[int, tuple[int, str, float]],
    *,
    roles: dict[str, int],
    alone: dict[str, int],
    connections: dict[int, int],
) -> dict[str, float]:
    """CPU seconds each role used between the two snapshots (a process born meanwhile counts from 0).
    `roles`: a process and its descendants; `alone`: a process without them (the benchmark itself, whose
    children are the service). `connections`: backends(database), read while the processes still run."""
    members = {role: _descendants(after, pid) for role, pid in roles.items()}
    members |= {role: {pid} for role, pid in alone.items()}
    owners = _socket_owners() if connections else {}

    def used(pid: int) -> float:
        if pid not in after:
            return 0.0
        start = before[pid][2] if pid in before and before[pid][0] == after[pid][0] else 0.0
        return after[pid][2] - start

    split: dict[str, float] = {}
    for role, pids in members.items():
        split[role] = sum(used(pid) for pid in pids)
    counted: set[int] = set()
    for backend, port in connections.items():
        owner = owners.get(port)
        role = next((r for r, pids in members.items() if owner in pids), "unknown")
        split[f"postgresql({role})"] = split.get(f"postgresql({role})", 0.0) + used(backend)
        counted.add(backend)
    split["postgresql(other)"] = sum(
        used(pid) for pid, (_, name, _) in after.items() if name == "postgres" and pid not in counted
    )
    return {role: round(seconds, 3) for role, seconds in split.items()}
