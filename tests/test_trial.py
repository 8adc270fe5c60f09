"""The update trial on an ESP: entries, counters, commit, rollback (on a directory)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance import efivars as efi
from appliance.esp import bootentries, fsutil, layout, records, slots, updatelog
from appliance.esp.bootentries import Entry
from appliance.esp.files import MountedEsp
from appliance.init import trial
from tests.helpers import esp_folder, on_esp


def at_boot(esp: str, writable: bool, history: Callable[[], list[records.Record]], say: Callable[[str], None],
            efivars: str, keep: Callable[[str, str], object] = lambda line, version: None) -> slots.Slots:
    """The trial's look at boot, on the ESP in the folder ``esp``, with ``efivars`` saying what booted."""
    return trial.at_boot(MountedEsp(esp), writable, history, say, trial.selected_entry(efivars), keep)


def commit(esp: str, found: slots.Slots) -> str:
    return trial.commit(MountedEsp(esp), found)


@pytest.mark.parametrize("name, entry", [
    ("appliance-000001.conf", Entry(1, None)),
    ("appliance-000002+3.conf", Entry(2, 3)),
    ("appliance-000002+2-1.conf", Entry(2, 2, 1)),
    ("appliance-000002+0-3.conf", Entry(2, 0, 3)),
    ("APPLIANCE-000002+0-3.CONF", Entry(2, 0, 3)),  # systemd-boot says ids in lower case; FAT keeps either
])
def test_entry_names_carry_the_generation_and_the_boot_counter(name: str, entry: Entry) -> None:
    assert bootentries.parse_name(name) == entry
    assert entry.name == name.lower()


def test_what_is_not_our_entry_is_ignored() -> None:
    for name in ("other.conf", "appliance-1.conf", "appliance-000001.conf.tmp", "appliance-000001+x.conf"):
        assert bootentries.parse_name(name) is None


@given(st.text(max_size=60))
def test_any_name(name: str) -> None:
    entry = bootentries.parse_name(name)
    assert entry is None or bootentries.parse_name(entry.name) == entry


def make_esp(root: Path, entries: dict[str, str], selected: str) -> tuple[str, str]:
    """An ESP with the given entries (name -> version), and efivars saying ``selected``."""
    (root / "esp/loader/entries").mkdir(parents=True)
    (root / "esp/EFI/appliance").mkdir(parents=True)
    (root / "esp/appliance").mkdir()
    for name, version in entries.items():
        entry = bootentries.parse_name(name)
        assert entry
        uki = bootentries.uki_path(entry.generation, version)
        (root / "esp" / uki.lstrip("/")).write_bytes(b"MZ uki " + version.encode())
        (root / "esp/loader/entries" / name).write_text(bootentries.entry_text(entry.generation, version, uki))
    efivars = root / "efivars"
    efivars.mkdir()
    if selected:
        (efivars / f"LoaderEntrySelected-{efi.LOADER}").write_bytes(
            b"\x06\0\0\0" + (selected + "\0").encode("utf-16-le"))
    return str(root / "esp"), str(efivars)


def test_an_image_on_trial_is_said_and_committed_once_healthy(tmp_path: Path) -> None:
    esp, efivars = make_esp(tmp_path, {"appliance-000001.conf": "1.0", "appliance-000002.conf": "1.1",
                                       "appliance-000003+2-1.conf": "1.2"}, "appliance-000003+2-1.conf")
    said: list[str] = []
    slots = at_boot(esp, True, list, said.append, efivars)
    assert said == ["trying update 1.2: try 1 of 3 (committed once the core runs healthy)"]
    assert commit(esp, slots) == "update 1.2 committed: it is the default image from now on"
    assert sorted(p.name for p in Path(esp, "loader/entries").iterdir()) == [
        "appliance-000002.conf", "appliance-000003.conf"]  # the one before the previous is gone
    assert sorted(p.name for p in Path(esp, "EFI/appliance").iterdir()) == ["000002-1.1.efi", "000003-1.2.efi"]
    assert "committed 1.2 (generation 3)" in on_esp(Path(esp), layout.UPDATE_LOG).read_text()


def test_an_update_that_used_its_tries_is_rolled_back_with_its_causes(tmp_path: Path) -> None:
    esp, efivars = make_esp(tmp_path, {"appliance-000001.conf": "1.0", "appliance-000002+0-3.conf": "2.0"},
                            "appliance-000001.conf")
    history = [records.decode(records.encode("runtime-log", b"x", {"boot-ended": cause, "image": image}))
               for cause, image in (("core crash (exited with status 1)", "2.0 (aaaa)"),
                                    ("requested restart", "1.0 (bbbb)"),
                                    ("kernel panic (Panic, kept by pstore)", "2.0 (aaaa)"),
                                    ("watchdog reset (watchdog0: i6300ESB timer): the machine hung", "2.0 (aaaa)"))]
    said: list[str] = []
    kept: list[tuple[str, str]] = []
    slots = at_boot(esp, True, lambda: history, said.append, efivars,
                    lambda line, version: kept.append((line, version)))
    assert kept == [(said[1], "2.0")]  # a record for the crash history: the fleet hears of it
    assert said == [
        "boot entry appliance-000001.conf: image 1.0, committed",
        "update to 2.0 rolled back after 3 failed boots: core crash (exited with status 1); kernel panic (Panic, "
        "kept by pstore); watchdog reset (watchdog0: i6300ESB timer): the machine hung"]
    assert [i.entry for i in slots.images] == [Entry(1, None)]  # the failed image is gone, said once
    assert not Path(esp, "EFI/appliance/000002-2.0.efi").exists()
    assert "rolled back after 3 failed boots" in on_esp(Path(esp), layout.UPDATE_LOG).read_text()
    said.clear()
    at_boot(esp, True, lambda: history, said.append, efivars)
    assert said == ["boot entry appliance-000001.conf: image 1.0, committed"]


def test_the_last_try_is_still_a_try(tmp_path: Path) -> None:
    """systemd-boot renames +1-2 to +0-3 before the last try: booted, it is not a rollback."""
    esp, efivars = make_esp(tmp_path, {"appliance-000001.conf": "1.0", "appliance-000002+0-3.conf": "2.0"},
                            "appliance-000002+0-3.conf")
    said: list[str] = []
    slots = at_boot(esp, True, list, said.append, efivars)
    assert said == ["trying update 2.0: try 3 of 3 (committed once the core runs healthy)"]
    commit(esp, slots)
    assert sorted(p.name for p in Path(esp, "loader/entries").iterdir()) == [
        "appliance-000001.conf", "appliance-000002.conf"]


def test_without_systemd_boot_or_entries_nothing_is_tried(tmp_path: Path) -> None:
    esp, efivars = make_esp(tmp_path, {}, "")
    said: list[str] = []
    assert at_boot(esp, False, list, said.append, efivars) == slots.Slots([], None)
    assert said == []
    esp2, efivars2 = make_esp(tmp_path / "b", {"appliance-000001.conf": "1.0"}, "")
    at_boot(esp2, False, list, said.append, efivars2)
    assert said == ["no boot entry was selected (booted without systemd-boot): updates cannot be tried"]


def test_the_update_log_stays_bounded(tmp_path: Path) -> None:
    esp = esp_folder(tmp_path)
    esp.make_dirs(layout.APP_DIR)
    for i in range(1200):
        updatelog.append(esp, f"event {i} " + "x" * 60)
    data = on_esp(tmp_path, layout.UPDATE_LOG).read_bytes()
    assert len(data) <= updatelog.LOG_MAX and data.endswith(b"x\n") and b"event 1199 " in data
    assert data.split(b"\n")[0].count(b" event ") == 1  # whole lines only


def test_a_log_over_its_bound_is_trimmed_by_the_next_line(tmp_path: Path) -> None:
    """A log written past its bound (by an older image, or by hand) is trimmed in one rewrite."""
    esp = esp_folder(tmp_path)
    esp.write(layout.UPDATE_LOG, b"".join(updatelog.log_line(f"event {i} " + "x" * 60) for i in range(1200)))
    updatelog.append(esp, "staged 2.0")
    new = on_esp(tmp_path, layout.UPDATE_LOG).read_bytes()
    assert len(new) <= updatelog.LOG_MAX and new.endswith(b" staged 2.0\n") and new.startswith(b"20")
    fresh = esp_folder(tmp_path / "fresh")
    fresh.make_dirs(layout.APP_DIR)
    updatelog.append(fresh, "staged 2.0")
    assert updatelog.read(fresh)[-1].endswith(" staged 2.0")


class PowerCut(Exception):
    pass


def systemd_boot(esp: str) -> str:
    """Which entry systemd-boot boots (the newest generation not out of tries), counting the
    try as it does, by renaming the entry: the name it leaves."""
    entries = [e for n in os.listdir(Path(esp, "loader/entries")) if (e := bootentries.parse_name(n))]
    chosen = max((e for e in entries if not e.failed), key=lambda e: (e.generation, e.tries_left is None))
    if chosen.tries_left is None:
        return chosen.name
    tried = Entry(chosen.generation, chosen.tries_left - 1, chosen.tries_done + 1)
    os.rename(Path(esp, "loader/entries", chosen.name), Path(esp, "loader/entries", tried.name))
    return tried.name


@pytest.mark.parametrize("cut", range(5))
@pytest.mark.parametrize("torn_rename", [False, True])
def test_a_power_cut_at_each_step_of_committing_leaves_a_machine_that_boots_a_good_image(
        cut: int, torn_rename: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The power goes before the ``cut``-th change commit makes (a torn rename: FAT wrote
    the new name and not yet the removal of the old). The next boot runs the update or the
    image before it, whole; a half-done commit is finished or done again; nothing else."""
    esp, efivars = make_esp(tmp_path, {"appliance-000001.conf": "1.0", "appliance-000002.conf": "1.1",
                                       "appliance-000003+2-1.conf": "1.2"}, "appliance-000003+2-1.conf")
    done = 0

    def step(real: Callable[..., None]) -> Callable[..., None]:
        def wrapped(*args: str) -> None:
            nonlocal done
            if done == cut:
                if torn_rename and real is os_rename:
                    shutil.copy(args[0], args[1])
                raise PowerCut()
            done += 1
            real(*args)
        return wrapped

    os_rename = fsutil.rename
    slots = at_boot(esp, True, list, lambda _: None, efivars)
    with monkeypatch.context() as patch:
        patch.setattr(fsutil, "rename", step(fsutil.rename))
        patch.setattr(fsutil, "remove", step(fsutil.remove))
        patch.setattr(updatelog, "append", step(updatelog.append))
        try:
            commit(esp, slots)
        except PowerCut:
            pass
    # The next boot: whatever systemd-boot picks runs a whole image, 1.2 or 1.1.
    selected = systemd_boot(esp)
    (Path(efivars) / f"LoaderEntrySelected-{efi.LOADER}").write_bytes(
        b"\x06\0\0\0" + (selected + "\0").encode("utf-16-le"))
    said: list[str] = []
    slots = at_boot(esp, True, list, said.append, efivars)
    assert slots.booted is not None and slots.booted.version in ("1.2", "1.1"), said
    assert Path(esp + slots.booted.uki).read_bytes() == b"MZ uki " + slots.booted.version.encode()
    names = sorted(p.name for p in Path(esp, "loader/entries").iterdir())
    assert len({bootentries.parse_name(n).generation for n in names}) == len(names), names  # type: ignore[union-attr]
    for image in slots.images:  # every entry left runs a whole image
        assert Path(esp + image.uki).read_bytes() == b"MZ uki " + image.version.encode()
    if slots.booted.entry.tries_left is not None:  # cut before the commit counted: the core commits again
        commit(esp, slots)
    # Committed in the end; an image older than the previous one may stay until the next commit.
    assert sorted(p.name for p in Path(esp, "loader/entries").iterdir())[-2:] == [
        "appliance-000002.conf", "appliance-000003.conf"]


def test_a_planned_restart_on_trial_gives_its_try_back(tmp_path: Path) -> None:
    esp, efivars = make_esp(tmp_path, {"appliance-000001.conf": "1.0", "appliance-000002+1-2.conf": "2.0"},
                            "appliance-000002+1-2.conf")
    found = at_boot(esp, True, list, lambda _: None, efivars)
    said = trial.give_back(MountedEsp(esp), found)
    assert said == "update 2.0 on trial: a planned restart, not a failure: its try is given back (2 left)"
    assert sorted(p.name for p in Path(esp, "loader/entries").iterdir()) == [
        "appliance-000001.conf", "appliance-000002+2-1.conf"]
    esp2, efivars2 = make_esp(tmp_path / "b", {"appliance-000001.conf": "1.0"}, "appliance-000001.conf")
    assert trial.give_back(MountedEsp(esp2), at_boot(esp2, True, list, lambda _: None, efivars2)) is None


def test_rolled_back_versions_are_remembered_for_the_update_checker(tmp_path: Path) -> None:
    esp, efivars = make_esp(tmp_path, {"appliance-000001.conf": "1.0", "appliance-000002+0-3.conf": "2.0"},
                            "appliance-000001.conf")
    on_esp(Path(esp), layout.ROLLED_BACK).write_bytes(b"\xff not key value")  # garbage: started anew
    at_boot(esp, True, list, lambda _: None, efivars)
    from appliance.channel import check
    assert check.rolled_back(MountedEsp(esp)) == frozenset({"2.0"})
    for n in range(40):
        trial.note_rolled_back(MountedEsp(esp), f"3.{n}")
    kept = check.rolled_back(MountedEsp(esp))
    assert len(kept) == trial.ROLLED_BACK_KEEP and "3.39" in kept and "2.0" not in kept
