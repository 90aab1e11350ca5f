"""CPU use of a process and all its descendants, read from /proc (Linux): is an idle server really idle?

Both servers stay up for the whole benchmark and only one receives load at a time; that is fair on 2 cores
only if the other one burns nothing meanwhile (an engine loop that polls, OpenMP threads that spin)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


def process_tree(pid: int) -> list[int]:
    """`pid` and every live descendant."""
    children = _children()
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        pending.extend(children.get(current, []))
    return tree


def child_pids(pid: int) -> list[int]:
    """The live direct children of `pid`."""
    return _children().get(pid, [])


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time these processes have used so far."""
    ticks = 0
    for pid in pids:
        if stat := _stat_fields(pid):
            ticks += int(stat[11]) + int(stat[12])  # fields 14 and 15: utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU time every core of the machine has spent busy since boot (all processes, the kernel included)."""
    fields = (PROC / "stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(value) for value in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def idle_cpu_percent(pid: int, window_s: float = 5.0) -> float:
    """Percent of one core the tree under `pid` uses over `window_s` of wall time (100 = one busy core)."""
    pids = process_tree(pid)
    before, started = cpu_seconds(pids), time.perf_counter()
    time.sleep(window_s)
    return 100 * (cpu_seconds(pids) - before) / (time.perf_counter() - started)


@dataclass(frozen=True)
class CpuShares:
    """Where CPU time went during one measured window, in percent of one core (200 = both of 2 cores busy)."""

    watched_percent: float  # the watched process trees (the server not under load)
    foreign_percent: float  # everything outside our own process tree: other people's jobs on a shared machine


class CpuWindow:
    """Started at construction, read by `shares()`: CPU of `watched` trees and of processes outside `own_root`'s
    tree (our servers and the load generator belong to it)."""

    def __init__(self, watched_pids: list[int], own_root: int):
        self.watched = [pid for root in watched_pids for pid in process_tree(root)]
        self.own = process_tree(own_root)
        self.started = time.perf_counter()
        self.watched_before = cpu_seconds(self.watched)
        self.foreign_before = machine_busy_seconds() - cpu_seconds(self.own)

    def shares(self) -> CpuShares:
        elapsed = time.perf_counter() - self.started
        watched = cpu_seconds(self.watched) - self.watched_before
        foreign = machine_busy_seconds() - cpu_seconds(self.own) - self.foreign_before
        return CpuShares(100 * watched / elapsed, 100 * max(foreign, 0.0) / elapsed)


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (stat := _stat_fields(int(entry.name))):
            children.setdefault(int(stat[1]), []).append(int(entry.name))  # field 4 of stat: the parent
    return children


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat from field 3 on (the command name, field 2, may hold spaces and parentheses)."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()
