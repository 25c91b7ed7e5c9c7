"""Resource limits as the learner types them, checked before anything is written.

The units and bounds are docker's (`docker run --memory 64m --pids-limit 20
--cpus 0.5`), so the docker command jailshell shows next to each step is one
docker itself accepts, and means the same thing.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from jailshell.errors import InvalidInput

# docker's units (go-units RAMInBytes): binary multiples, an optional "i" and "b".
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)i?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}

# docker refuses less than 6 MiB: below it not even a shell starts in the jail.
MEMORY_MIN = 6 << 20
# The kernel's page counters stop at about 2**63 bytes; anything near that is "no limit".
MEMORY_MAX = 1 << 62

# CFS bandwidth: runtime `quota` per `period`, both in microseconds. docker
# uses a 100 ms period; the kernel needs a quota of at least 1 ms.
CPU_PERIOD_US = 100_000
CPU_QUOTA_MIN_US = 1_000

_SIZE_HINT = "give a size like 64M, 1g, 512k, or a number of bytes (67108864)"

PidsValue = int | Literal["max"]


@dataclass(frozen=True)
class Limits:
    """Limits to set; None leaves that controller as it is."""

    memory: int | None = None  # bytes
    pids: PidsValue | None = None  # number of tasks, or "max" for no limit
    cpus: float | None = None  # CPUs worth of time, e.g. 0.5

    def controllers(self) -> list[str]:
        return [c for c, v in (("memory", self.memory), ("pids", self.pids), ("cpu", self.cpus)) if v is not None]

    def docker_flags(self) -> list[str]:
        """The `docker run` flags that set the same limits."""
        out = []
        if self.memory is not None:
            out.append(f"--memory {format_size(self.memory)}")
        if self.pids is not None:
            # docker's spelling of "no limit" is -1.
            out.append(f"--pids-limit {-1 if self.pids == 'max' else self.pids}")
        if self.cpus is not None:
            out.append(f"--cpus {format_cpus(self.cpus)}")
        return out


def parse_size(text: str | int) -> int:
    """'64M' -> 67108864, with docker's units (k, m, g, t, p; binary; case-insensitive)."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    s = str(text).strip()
    if s.startswith("-"):
        raise InvalidInput(f"memory={s}: a limit cannot be negative", hint=_SIZE_HINT)
    m = _SIZE.match(s)
    if not m:
        raise InvalidInput(f"memory={s}: not a size", hint=_SIZE_HINT)
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_memory(text: str | int) -> int:
    value = parse_size(text)
    if value <= 0:
        raise InvalidInput(f"memory={text}: a limit must be more than 0", hint=_SIZE_HINT)
    if value < MEMORY_MIN:
        raise InvalidInput(f"memory={text}: below the smallest limit docker allows (6m)",
                           hint="even a shell needs a few megabytes; try 16M or more")
    if value >= MEMORY_MAX:
        raise InvalidInput(f"memory={text}: larger than the kernel can count", hint=_SIZE_HINT)
    return value


def parse_pids(text: str | int | float) -> PidsValue:
    s = str(text).strip().lower()
    if s == "max":
        return "max"
    try:
        value = int(s)
    except ValueError:
        raise InvalidInput(f"pids={text}: not a number", hint="give the most tasks allowed, e.g. pids=20, or pids=max")
    if value < 0:
        raise InvalidInput(f"pids={text}: a limit cannot be negative", hint="pids=max means no limit")
    if value == 0:
        raise InvalidInput(f"pids={text}: the jail's own process counts, so the limit must be at least 1",
                           hint="pids=max means no limit")
    return value


def parse_cpus(text: str | float) -> float:
    s = str(text).strip()
    hint = "give CPUs as a decimal: cpu=0.5 is half of one CPU, cpu=2 is two CPUs"
    try:
        value = float(s)
    except ValueError:
        raise InvalidInput(f"cpu={text}: not a number of CPUs", hint=hint)
    if not math.isfinite(value):
        raise InvalidInput(f"cpu={text}: not a number of CPUs", hint=hint)
    if value < 0:
        raise InvalidInput(f"cpu={text}: a limit cannot be negative", hint=hint)
    if value * CPU_PERIOD_US < CPU_QUOTA_MIN_US:
        raise InvalidInput(f"cpu={text}: the smallest limit is 0.01 CPUs (1 ms of every 100 ms)", hint=hint)
    ncpu = os.cpu_count() or 1
    if value > ncpu:
        # docker refuses this too: a quota above the CPUs present limits nothing.
        raise InvalidInput(f"cpu={text}: this machine has only {ncpu} CPU{'s' if ncpu > 1 else ''}",
                           hint=f"give at most cpu={ncpu}")
    return value


_KEYS = {"memory": "memory", "mem": "memory", "pids": "pids", "cpu": "cpus", "cpus": "cpus"}


def parse_limits(spec: str | Mapping[str, str | int | float]) -> Limits:
    """`memory=64M pids=20 cpu=0.5` (or a mapping) -> Limits. Every value is
    checked before any is returned, so a bad one changes nothing."""
    if isinstance(spec, str):
        pairs: list[tuple[str, str | int | float]] = []
        for word in spec.replace(",", " ").split():
            key, eq, text = word.partition("=")
            if not eq or not text:
                raise InvalidInput(f"{word!r}: expected key=value",
                                   hint="for example: memory=64M pids=20 cpu=0.5")
            pairs.append((key, text))
    else:
        pairs = list(spec.items())
    if not pairs:
        raise InvalidInput("no limit given", hint="for example: memory=64M pids=20 cpu=0.5")
    values: dict[str, str] = {}
    for key, raw in pairs:
        name = _KEYS.get(key.strip().lower())
        if name is None:
            raise InvalidInput(f"{key}: not a limit jailshell sets", hint="use memory=, pids= and cpu=")
        if name in values:
            raise InvalidInput(f"{key} is given twice")
        values[name] = str(raw)
    return Limits(
        memory=parse_memory(values["memory"]) if "memory" in values else None,
        pids=parse_pids(values["pids"]) if "pids" in values else None,
        cpus=parse_cpus(values["cpus"]) if "cpus" in values else None,
    )


def format_size(n: int) -> str:
    """Bytes in docker's spelling, exact: 67108864 -> '64m', 1000 -> '1000'."""
    for unit in ("g", "m", "k"):
        if n >= _UNITS[unit] and n % _UNITS[unit] == 0:
            return f"{n // _UNITS[unit]}{unit}"
    return str(n)


def format_cpus(cpus: float) -> str:
    """0.5 -> '0.5', 2.0 -> '2' (what the quota really holds: whole microseconds)."""
    quota = round(cpus * CPU_PERIOD_US)
    return f"{quota / CPU_PERIOD_US:.5f}".rstrip("0").rstrip(".")


def human_bytes(n: int) -> str:
    """For display: 67108864 -> '64.0 MiB'."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
