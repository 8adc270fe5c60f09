"""The core's control group: OOM kills reported as such, a memory limit, and a clean sweep.

Best-effort: without cgroup2 (or in tests without root) the core runs without one,
and an OOM kill is then reported as what it looks like, a SIGKILL.
"""

from __future__ import annotations

import os


class CoreCgroup:
    def __init__(self, root: str = "/sys/fs/cgroup", name: str = "core") -> None:
        self.root = root
        self.path = os.path.join(root, name)
        self.ready = False

    def setup(self, memory_max: str | None = None) -> str:
        """Create the group; "" or what went wrong."""
        try:
            if not os.path.exists(os.path.join(self.root, "cgroup.controllers")):
                return f"no cgroup2 file system at {self.root}"
            with open(os.path.join(self.root, "cgroup.subtree_control"), "w") as f:
                f.write("+memory")
            os.makedirs(self.path, exist_ok=True)
            if memory_max:
                with open(os.path.join(self.path, "memory.max"), "w") as f:
                    f.write(str(memory_max))
                # Without swap the limit is the limit.
                try:
                    with open(os.path.join(self.path, "memory.swap.max"), "w") as f:
                        f.write("0")
                except OSError:
                    pass
        except OSError as e:
            return f"could not set up the core's cgroup {self.path}: {e}"
        self.ready = True
        return ""

    @property
    def procs(self) -> str | None:
        """The file a child writes "0" into to join, or None without a group."""
        return os.path.join(self.path, "cgroup.procs") if self.ready else None

    def oom_kills(self) -> int:
        if not self.ready:
            return 0
        try:
            with open(os.path.join(self.path, "memory.events")) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def kill_all(self) -> None:
        """SIGKILL whatever the core left running in its group."""
        if not self.ready:
            return
        try:
            with open(os.path.join(self.path, "cgroup.kill"), "w") as f:
                f.write("1")
        except OSError:
            pass
