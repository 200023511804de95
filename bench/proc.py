"""What a process costs, read from /proc: CPU seconds, memory, connections to the API server."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024
_TICKS = os.sysconf("SC_CLK_TCK")
_ESTABLISHED = "01"


@dataclass(frozen=True)
class Usage:
    cpu_seconds: float  # user + system since the process started
    rss_mib: float
    peak_mib: float  # VmHWM: the most resident memory it ever had


def usage(pid: int) -> Usage:
    # Field 2 (comm) may hold spaces; everything after its closing parenthesis is fixed.
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    cpu = (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime: fields 14 and 15 of stat
    memory = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            memory[key] = int(rest.split()[0]) * 1024 / MIB
    return Usage(round(cpu, 2), round(memory["VmRSS"], 1), round(memory["VmHWM"], 1))


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs of the machine spent not idle (nor waiting on I/O) since boot."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq + steal) / _TICKS


def connections_to(pid: int, port: int) -> int:
    """Established TCP connections of `pid` to `port` (the API server's): watches share them in Go (HTTP/2)."""
    sockets = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            sockets.add(target[8:-1])
    count = 0
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            columns = line.split()
            remote_port = int(columns[2].rpartition(":")[2], 16)
            if remote_port == port and columns[3] == _ESTABLISHED and columns[9] in sockets:
                count += 1
    return count
