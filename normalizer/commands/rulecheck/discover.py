"""Which captures to check: files and directories from the command line, paired with manifests.

Why report orphans instead of skipping them: a capture dropped into ``pcaps/`` without its
manifest, or a manifest whose capture was renamed, would otherwise silently test nothing.
``NAME.baseline.pcap`` files are the header-free twins the expectations were derived from, not
test cases, so a directory scan leaves them out (naming one explicitly still checks it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from normalizer.commands.rulecheck.manifest import CAPTURE_SUFFIXES, manifest_for


@dataclass(frozen=True)
class Target:
    """One test case: a capture and its manifest; either may be missing (reported per case)."""

    capture: Path
    manifest: Path | None

    @property
    def name(self) -> str:
        return self.capture.name


def is_test_capture(path: Path) -> bool:
    """A capture file that is not a ``.baseline`` twin."""
    return path.suffix in CAPTURE_SUFFIXES and not path.stem.endswith(".baseline")


def _capture_for(manifest: Path) -> Path:
    for suffix in CAPTURE_SUFFIXES:
        candidate = manifest.with_suffix(suffix)
        if candidate.exists():
            return candidate
    return manifest.with_suffix(CAPTURE_SUFFIXES[0])


def _target(capture: Path) -> Target:
    manifest = manifest_for(capture)
    return Target(capture, manifest if manifest.exists() else None)


def _in_dir(directory: Path) -> Iterable[Target]:
    for path in sorted(directory.iterdir()):
        if path.is_file() and is_test_capture(path):
            yield _target(path)
        elif path.suffix == ".yaml" and not _capture_for(path).exists():
            yield Target(_capture_for(path), path)


def discover(paths: Iterable[Path]) -> list[Target]:
    """Targets in command-line order, each capture once. FileNotFoundError for a bad path."""
    seen: dict[Path, Target] = {}
    for path in paths:
        if path.is_dir():
            found: Iterable[Target] = _in_dir(path)
        elif path.suffix == ".yaml" and path.is_file():
            found = [Target(_capture_for(path), path)]
        elif path.is_file():
            found = [_target(path)]
        else:
            raise FileNotFoundError(2, "no such capture, manifest or directory", str(path))
        for t in found:
            seen.setdefault(t.capture.resolve(), t)
    return list(seen.values())
