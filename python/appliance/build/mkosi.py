"""Run mkosi on the repository's configuration with the rendered trees."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def mkosi_command(repo: Path, render_dir: Path, output_dir: Path, cache_dir: Path,
                  profile: str, *, extra_tree: Path | None = None, incremental: str = "incremental") -> list[str]:
    """The mkosi command line for one build (pure, so it is tested). ``repo`` is the
    directory with mkosi.conf; ``extra_tree`` defaults to the rendered ``extra``."""
    cmd = [
        "mkosi",
        f"--directory={repo}",
        f"--package-manager-tree={render_dir / 'pkgmngr'}:/",
        f"--extra-tree={extra_tree or render_dir / 'extra'}:/",
        f"--output-dir={output_dir}",
        f"--cache-dir={cache_dir / incremental}",
        f"--package-cache-dir={cache_dir / 'packages'}",
        # Keep the tree as it is after the packages and the prepare script, outside the
        # clone: a rebuild after a change to python/ or the core starts from there.
        "--incremental=yes",
    ]
    if profile != "default":
        cmd.append(f"--profile={profile}")
    cmd += ["--force", "build"]
    return cmd


def run_mkosi(cmd: list[str]) -> None:
    """Run mkosi with its output on our stderr (its progress is the user's progress)."""
    sys.stderr.flush()
    result = subprocess.run(cmd, stdout=sys.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"mkosi failed (exit {result.returncode}); its output is above. Command: {' '.join(cmd)}")
