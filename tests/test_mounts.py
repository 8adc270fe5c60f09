import errno
from pathlib import Path

from appliance.init import mounts
from appliance.init.kernel import MS_NODEV, MS_NOEXEC, MS_NOSUID


def test_table_order_and_flags() -> None:
    targets = [s.target if isinstance(s, mounts.Mount) else s.path for s in mounts.EARLY]
    assert len(targets) == len(set(targets))
    order = {t: i for i, t in enumerate(targets)}
    assert order["/proc"] < order["/dev/fd"]  # links point into /proc
    assert order["/dev"] < order["/dev/pts"] < order["/dev/shm"]
    assert order["/sys"] < order["/sys/fs/cgroup"] and order["/sys"] < order["/sys/kernel/security"]
    for step in mounts.EARLY + mounts.FIRMWARE:
        if isinstance(step, mounts.Mount):
            assert step.flags & MS_NOSUID, step
            if step.fstype in ("proc", "sysfs", "efivarfs", "pstore", "cgroup2", "securityfs"):
                assert step.flags & MS_NODEV and step.flags & MS_NOEXEC, step
    required = {s.target for s in mounts.EARLY if isinstance(s, mounts.Mount) and s.required}
    assert required == {"/proc", "/sys", "/dev", "/dev/pts", "/run", "/tmp"}
    assert all(not s.required for s in mounts.FIRMWARE)


class Recorder:
    def __init__(self, fail: dict[str, int]) -> None:
        self.fail = fail
        self.mounted: list[tuple[str, str]] = []

    def mount(self, source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
        for suffix, err in self.fail.items():
            if target.endswith(suffix):
                raise OSError(err, "refused", target)
        self.mounted.append((fstype, target))


def test_apply_reports_each_step_and_never_raises(tmp_path: Path) -> None:
    k = Recorder({"/sys/fs/cgroup": errno.ENODEV, "/tmp": errno.ENOMEM})
    results = mounts.apply(mounts.EARLY, k, str(tmp_path))
    by = {r.step.describe(): r for r in results}
    assert by["cgroup2 on /sys/fs/cgroup"].message().endswith("(continuing: best-effort)")
    assert by["tmpfs on /tmp"].message().endswith("(required)")
    assert (tmp_path / "dev/fd").is_symlink() and (tmp_path / "dev/fd").readlink() == Path("/proc/self/fd")
    assert ("proc", str(tmp_path / "proc")) in k.mounted
