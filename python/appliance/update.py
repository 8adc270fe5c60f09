"""Updates from the core, on the device.

    from appliance import update

    update.stage("/tmp/appliance.efi")  # a UKI from `make image`, fetched as the core likes
    update.healthy()                   # this image works: commit it now (else after 10 minutes)
    update.status()                    # the images on the ESP, the one running, the update log
    update.defer_restarts()            # the update channel stages, the core restarts when it likes
    update.pending()                   # the version staged and waiting for a restart, or None

``stage`` checks the file before it touches the ESP (a whole UKI for x86-64, made by
``make image``; signed when Secure Boot is on; room for it with the crash history's
reserve left), then writes it so that a power cut at any moment leaves the machine
booting a good image. The next boots try it; see docs/updates.md.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from appliance import efivars
from appliance.esp import slots, staging, updatelog
from appliance.esp.files import MountedEsp
from appliance.esp.staging import Staged, StageError
from appliance.initconf import UPDATE_DEFER

__all__ = ["StageError", "Staged", "defer_restarts", "healthy", "pending", "stage", "status"]


def _esp() -> MountedEsp:
    esp = os.environ.get("APPLIANCE_ESP", "")
    if not esp:
        raise StageError("no ESP is mounted (the init said why on the console): nothing can be staged")
    return MountedEsp(esp)


def stage(path: str, tries: int = staging.DEFAULT_TRIES, step: Callable[[str], None] = lambda _: None) -> Staged:
    """Stage the UKI at ``path``: tried on the next boots, ``tries`` failed boots at most.
    ``step`` hears each step as it begins (to show progress)."""
    esp = _esp()
    with open(path, "rb") as f:
        data = f.read()
    try:
        staged = staging.stage(esp, data, tries, secure_boot=efivars.secure_boot() is True, step=step)
    except OSError as e:
        raise StageError(f"writing to the ESP failed: {e}; the images on it are as they were") from e
    updatelog.append(esp, f"staged {staged.version} ({staged.build_id}) as generation {staged.generation}, "
                          f"{staged.tries} tries, from the core")
    return staged


def healthy() -> None:
    """Say that this image works: an update on trial is committed now, and the crash-loop
    counter is reset, without waiting for the core to have run 10 minutes."""
    os.write(int(os.environ.get("APPLIANCE_WATCHDOG_FD", "3")), b"healthy\n")


def status() -> dict[str, Any]:
    esp = _esp()
    found, problems = slots.scan(esp, efivars.read_string("LoaderEntrySelected", efivars.LOADER))
    try:
        log = updatelog.read(esp)
    except OSError:
        log = []
    return {"booted": found.booted.version if found.booted else None,
            "images": [{"version": i.version, "generation": i.entry.generation, "entry": i.entry.name,
                        "on_trial": i.entry.tries_left is not None} for i in found.images],
            "log": log, "problems": problems}


def defer_restarts(defer: bool = True) -> None:
    """With an update channel (``make image UPDATE_CHANNEL=``): the checker stages a new
    image and does not restart the machine; the core chooses the moment (``pending()``
    says what waits) and restarts by exiting with status 0, which spends none of the
    update's tries. ``defer_restarts(False)`` gives the choice back (for this boot)."""
    if defer:
        os.makedirs(os.path.dirname(UPDATE_DEFER), exist_ok=True)
        with open(UPDATE_DEFER, "w") as f:
            f.write("the core restarts when it chooses\n")
    else:
        try:
            os.unlink(UPDATE_DEFER)
        except FileNotFoundError:
            pass


def pending() -> str | None:
    """The version staged and not tried yet (it boots at the next restart), or None."""
    esp = _esp()
    found, _ = slots.scan(esp, efivars.read_string("LoaderEntrySelected", efivars.LOADER))
    waiting = [i for i in found.images if i.entry.tries_left is not None and i.entry.tries_done == 0]
    return waiting[-1].version if waiting else None
