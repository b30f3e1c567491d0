"""What the machine is and how busy it is: cores, CPU model, load average, per-core busy time."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")  # /proc times are in these (100 Hz here: 10 ms resolution)


@dataclass(frozen=True, slots=True)
class Placement:
    """Which core runs the gateway and which runs the upstream and the load generator."""

    gateway: frozenset[int]
    load: frozenset[int]
    cores: int
    note: str


def placement() -> Placement:
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) >= 2:
        return Placement(frozenset({usable[0]}), frozenset({usable[1]}), len(usable),
                         f"gateway pinned to core {usable[0]}; upstream and load generator to core {usable[1]}")
    only = frozenset(usable)
    return Placement(only, only, len(usable),
                     "ONE core usable: gateway, upstream and load generator share it — numbers are much lower "
                     "than on the 2-core harness and ratios mix the load generator's cost in")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def load_average() -> tuple[float, float, float]:
    one, five, fifteen = Path("/proc/loadavg").read_text().split()[:3]
    return float(one), float(five), float(fifteen)


def core_busy_ticks(cores: frozenset[int]) -> int:
    """Non-idle ticks summed over ``cores`` since boot (user+nice+system+irq+softirq+steal)."""
    total = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cores:
            continue
        values = [int(v) for v in fields[:8]]
        total += sum(values) - values[3] - values[4]  # minus idle and iowait
    return total
