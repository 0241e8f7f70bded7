"""Findings: one class per distinct failure, a few reproducers each, a summary for the report.

A crash's class is its exception type and the innermost frame of project code (file:line
function), so ten thousand inputs hitting one bug make one class, not ten thousand; an invariant
violation's class is the invariant's name. Reproducers are the failing input bytes (a pcap, an
eve line file) plus a JSON note with the options and the traceback head.
"""

from __future__ import annotations

import json
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_PROJECT = ("normalizer/", "eve_enricher/")
KEEP = 3  # reproducers kept per class


def crash_class(exc: BaseException) -> str:
    """``Type at file:line in function``, innermost project frame (else innermost frame)."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = frames[-1] if frames else None
    for fr in reversed(frames):
        if any(p in fr.filename.replace("\\", "/") for p in _PROJECT):
            where = fr
            break
    name = type(exc).__qualname__
    if type(exc).__module__ not in ("builtins", "__main__"):
        name = f"{type(exc).__module__}.{name}"
    if where is None:
        return name
    path = where.filename.replace("\\", "/")
    for p in _PROJECT:
        if p in path:
            path = p + path.split(p, 1)[1]
            break
    return f"{name} at {path}:{where.lineno} in {where.name}"


def stderr_class(text: str) -> str:
    """The same class from a traceback printed on stderr by a CLI run."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    last = lines[-1].strip() if lines else "?"
    name = last.split(":", 1)[0]
    where = ""
    for ln in lines:
        s = ln.strip()
        if s.startswith('File "') and any(p in s for p in _PROJECT):
            path = s.split('"')[1]
            for p in _PROJECT:
                if p in path:
                    path = p + path.split(p, 1)[1]
            rest = s.split('"', 2)[2]  # , line N, in func
            parts = [x.strip() for x in rest.split(",")]
            lineno = parts[1].removeprefix("line ") if len(parts) > 1 else "?"
            func = parts[2].removeprefix("in ") if len(parts) > 2 else "?"
            where = f" at {path}:{lineno} in {func}"
    return f"{name}{where}"


def traceback_head(exc: BaseException, lines: int = 6) -> str:
    text = "".join(traceback.format_exception(exc)).rstrip().splitlines()
    return "\n".join(text[-lines:])


@dataclass
class Finding:
    tier: str  # pipeline, file, cli, enricher
    cls: str
    detail: str
    reproducer: str = ""


@dataclass
class Findings:
    root: Path
    by_class: dict[str, list[Finding]] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)

    def add(
        self,
        tier: str,
        cls: str,
        detail: str,
        files: dict[str, bytes] | None = None,
        note: dict[str, Any] | None = None,
    ) -> Finding | None:
        """Count a finding; keep its reproducer if fewer than KEEP of its class are kept."""
        key = f"{tier}: {cls}"
        self.counts[key] += 1
        kept = self.by_class.setdefault(key, [])
        if len(kept) >= KEEP:
            return None
        f = Finding(tier, cls, detail)
        if files is not None:
            slug = _slug(key)
            d = self.root / f"{slug}-{len(kept) + 1}"
            d.mkdir(parents=True, exist_ok=True)
            for name, data in files.items():
                (d / name).write_bytes(data)
            info = {"tier": tier, "class": cls, "detail": detail, **(note or {})}
            (d / "finding.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
            f.reproducer = str(d)
        kept.append(f)
        return f

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> list[str]:
        out = []
        for key, n in sorted(self.counts.items()):
            first = self.by_class[key][0]
            where = f" -> {first.reproducer}" if first.reproducer else ""
            out.append(f"  {n:7d}  {key}{where}")
        return out


def _slug(text: str) -> str:
    keep = "".join(c if c.isalnum() else "-" for c in text.lower())
    while "--" in keep:
        keep = keep.replace("--", "-")
    return keep.strip("-")[:90]
