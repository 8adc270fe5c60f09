"""Load the kernel modules the image lists, with their dependencies, without kmod.

modules.dep says which file holds a module and what it needs; the kernel
decompresses .ko.xz itself (finit_module with MODULE_INIT_COMPRESSED_FILE). One
system call per module instead of one modprobe process per module matters under TCG.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


class ModuleLoader(Protocol):
    def finit_module(self, path: str, params: str = "") -> None: ...


def module_name(path: str) -> str:
    """``kernel/fs/fat/vfat.ko.xz`` -> ``vfat``; dashes and underscores are the same name."""
    base = os.path.basename(path)
    return base.split(".ko", 1)[0].replace("-", "_")


@dataclass
class ModuleIndex:
    """modules.dep and modules.builtin of one kernel."""

    files: dict[str, str] = field(default_factory=dict)  # name -> path relative to the modules dir
    deps: dict[str, list[str]] = field(default_factory=dict)  # name -> names it needs, in load order
    builtin: set[str] = field(default_factory=set)

    @classmethod
    def parse(cls, dep_text: str, builtin_text: str = "") -> ModuleIndex:
        index = cls()
        for line in dep_text.splitlines():
            if ":" not in line:
                continue
            path, _, needs = line.partition(":")
            name = module_name(path)
            index.files[name] = path.strip()
            index.deps[name] = [module_name(d) for d in needs.split()]
        index.builtin = {module_name(line) for line in builtin_text.split()}
        return index

    @classmethod
    def read(cls, moddir: str) -> ModuleIndex:
        with open(os.path.join(moddir, "modules.dep")) as f:
            dep = f.read()
        try:
            with open(os.path.join(moddir, "modules.builtin")) as f:
                builtin = f.read()
        except FileNotFoundError:
            builtin = ""
        return cls.parse(dep, builtin)

    def load_order(self, wanted: list[str]) -> tuple[list[str], list[str], list[str]]:
        """(modules to load, dependencies first; names that are built in; names unknown)."""
        order: list[str] = []
        seen: set[str] = set()
        builtin: list[str] = []
        unknown: list[str] = []

        def visit(name: str) -> None:
            if name in seen:
                return
            seen.add(name)
            # modules.dep lists the whole closure, deepest last: load it in reverse.
            for dep in reversed(self.deps.get(name, [])):
                visit(dep)
            order.append(name)

        for raw in wanted:
            name = raw.replace("-", "_")
            if name in self.files:
                visit(name)
            elif name in self.builtin:
                builtin.append(name)
            else:
                unknown.append(name)
        return order, builtin, unknown


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    builtin: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    no_device: list[str] = field(default_factory=list)  # loaded nothing: no such hardware here
    failed: list[tuple[str, OSError]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # time each load took

    def slowest(self, n: int = 5) -> str:
        top = sorted(self.seconds.items(), key=lambda kv: kv[1], reverse=True)[:n]
        return ", ".join(f"{name} {t * 1000:.0f} ms" for name, t in top)

    def lines(self) -> list[str]:
        out = [f"kernel modules: {len(self.loaded)} loaded, {len(self.already)} already loaded, "
               f"{len(self.builtin)} built in, {len(self.no_device)} without hardware here"]
        if self.unknown:
            out.append(f"kernel modules not in this image (skipped): {', '.join(self.unknown)}")
        for name, err in self.failed:
            out.append(f"could not load kernel module {name}: {err} (continuing: best-effort)")
        return out


def load_modules(wanted: list[str], moddir: str, kernel: ModuleLoader,
                 clock: Callable[[], float] = time.monotonic) -> LoadReport:
    """Load ``wanted`` and what they need. Never raises: every outcome is in the report."""
    report = LoadReport()
    try:
        index = ModuleIndex.read(moddir)
    except OSError as e:
        report.failed.append(("(all)", e))
        return report
    order, report.builtin, report.unknown = index.load_order(wanted)
    for name in order:
        started = clock()
        try:
            kernel.finit_module(os.path.join(moddir, index.files[name]))
            report.loaded.append(name)
        except OSError as e:
            if e.errno == errno.EEXIST:
                report.already.append(name)
            elif e.errno == errno.ENODEV:
                report.no_device.append(name)
            else:
                report.failed.append((name, e))
        finally:
            report.seconds[name] = clock() - started
    return report
