"""Small helpers that turn numbers into the words the pages and commands share."""

from __future__ import annotations

from collections.abc import Iterable


def spans(numbers: Iterable[int], noun: str = "step") -> str:
    """`[3, 4, 5, 8]` -> "steps 3–5 and 8"; `[7]` -> "step 7" (runs of consecutive numbers)."""
    runs: list[list[int]] = []
    for number in sorted(set(numbers)):
        if runs and number == runs[-1][-1] + 1:
            runs[-1].append(number)
        else:
            runs.append([number])
    if not runs:
        return ""
    parts = [f"{run[0]}–{run[-1]}" if len(run) > 1 else f"{run[0]}" for run in runs]
    plural = len(runs) > 1 or len(runs[0]) > 1
    joined = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{noun}{'s' if plural else ''} {joined}"
