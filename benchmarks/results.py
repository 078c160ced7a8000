"""Append a measured table, with the command that produced it and the machine, to RESULTS.md."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from datetime import date
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def append_results(title: str, lines: list[str], print_only: bool = False) -> None:
    """``print_only``: a smoke test's table, shown but kept out of RESULTS.md."""
    if print_only:
        print("\n".join(lines))
        return
    command = "python " + shlex.join(["benchmarks/" + Path(sys.argv[0]).name, *sys.argv[1:]])
    python = f"{platform.python_implementation()} {platform.python_version()}"
    machine = f"{os.cpu_count()} cores, {platform.machine()}, {python}"
    block = [
        f"## {title} ({date.today().isoformat()})",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine}",
        "",
        *lines,
        "",
    ]
    with RESULTS.open("a", encoding="utf-8") as handle:
        handle.write("\n".join(block) + "\n")
    print("\n".join(block))
