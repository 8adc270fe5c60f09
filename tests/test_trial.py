"""The update trial on an ESP: entries, counters, commit, rollback (on a directory)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.init import bootentries, fsutil, records, trial
from appliance.init.bootentries import Entry


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
        (efivars / f"LoaderEntrySelected-{trial.LOADER_GUID}").write_bytes(
            b"\x06\0\0\0" + (selected + "\0").encode("utf-16-le"))
    return str(root / "esp"), str(efivars)


def test_an_image_on_trial_is_said_and_committed_once_healthy(tmp_path: Path) -> None:
    esp, efivars = make_esp(tmp_path, {"appliance-000001.conf": "1.0", "appliance-000002.conf": "1.1",
                                       "appliance-000003+2-1.conf": "1.2"}, "appliance-000003+2-1.conf")
    said: list[str] = []
    slots = trial.at_boot(esp, esp + "/appliance", list, said.append, efivars)
    assert said == ["trying update 1.2: try 1 of 3 (committed once the core runs healthy)"]
    assert trial.commit(esp, slots, esp + "/appliance") == "update 1.2 committed: it is the default image from now on"
    assert sorted(p.name for p in Path(esp, "loader/entries").iterdir()) == [
        "appliance-000002.conf", "appliance-000003.conf"]  # the one before the previous is gone
    assert sorted(p.name for p in Path(esp, "EFI/appliance").iterdir()) == ["000002-1.1.efi", "000003-1.2.efi"]
    assert "committed 1.2 (generation 3)" in Path(esp, "appliance", trial.UPDATE_LOG).read_text()


def test_an_update_that_used_its_tries_is_rolled_back_with_its_causes(tmp_path: Path) -> None:
    esp, efivars = make_esp(tmp_path, {"appliance-000001.conf": "1.0", "appliance-000002+0-3.conf": "2.0"},
                            "appliance-000001.conf")
    history = [records.decode(records.encode("runtime-log", b"x", {"boot-ended": cause, "image": image}))
               for cause, image in (("core crash (exited with status 1)", "2.0 (aaaa)"),
                                    ("requested restart", "1.0 (bbbb)"),
                                    ("kernel panic (Panic, kept by pstore)", "2.0 (aaaa)"),
                                    ("watchdog reset (watchdog0: i6300ESB timer): the machine hung", "2.0 (aaaa)"))]
    said: list[str] = []
    slots = trial.at_boot(esp, esp + "/appliance", lambda: history, said.append, efivars)
    assert said == [
        "boot entry appliance-000001.conf: image 1.0, committed",
        "update to 2.0 rolled back after 3 failed boots: core crash (exited with status 1); kernel panic (Panic, "
        "kept by pstore); watchdog reset (watchdog0: i6300ESB timer): the machine hung"]
    assert [i.entry for i in slots.images] == [Entry(1, None)]  # the failed image is gone, said once
    assert not Path(esp, "EFI/appliance/000002-2.0.efi").exists()
    assert "rolled back after 3 failed boots" in Path(esp, "appliance", trial.UPDATE_LOG).read_text()
    said.clear()
    trial.at_boot(esp, esp + "/appliance", lambda: history, said.append, efivars)
    assert said == ["boot entry appliance-000001.conf: image 1.0, committed"]


def test_the_last_try_is_still_a_try(tmp_path: Path) -> None:
    """systemd-boot renames +1-2 to +0-3 before the last try: booted, it is not a rollback."""
    esp, efivars = make_esp(tmp_path, {"appliance-000001.conf": "1.0", "appliance-000002+0-3.conf": "2.0"},
                            "appliance-000002+0-3.conf")
    said: list[str] = []
    slots = trial.at_boot(esp, esp + "/appliance", list, said.append, efivars)
    assert said == ["trying update 2.0: try 3 of 3 (committed once the core runs healthy)"]
    trial.commit(esp, slots, None)
    assert sorted(p.name for p in Path(esp, "loader/entries").iterdir()) == [
        "appliance-000001.conf", "appliance-000002.conf"]


def test_without_systemd_boot_or_entries_nothing_is_tried(tmp_path: Path) -> None:
    esp, efivars = make_esp(tmp_path, {}, "")
    said: list[str] = []
    assert trial.at_boot(esp, None, list, said.append, efivars) == trial.Slots([], None)
    assert said == []
    esp2, efivars2 = make_esp(tmp_path / "b", {"appliance-000001.conf": "1.0"}, "")
    trial.at_boot(esp2, None, list, said.append, efivars2)
    assert said == ["no boot entry was selected (booted without systemd-boot): updates cannot be tried"]


def test_the_update_log_stays_bounded(tmp_path: Path) -> None:
    for i in range(1200):
        trial.log(str(tmp_path), f"event {i} " + "x" * 60)
    data = (tmp_path / trial.UPDATE_LOG).read_bytes()
    assert len(data) <= trial.LOG_MAX and data.endswith(b"x\n") and b"event 1199 " in data
    assert data.split(b"\n")[0].count(b" event ") == 1  # whole lines only


def test_a_host_appending_to_the_update_log_keeps_it_bounded_too() -> None:
    old = b"".join(trial.log_line(f"event {i} " + "x" * 60) for i in range(1200))
    new = trial.appended(old, "staged 2.0")
    assert len(new) <= trial.LOG_MAX and new.endswith(b" staged 2.0\n") and new.startswith(b"20")
    assert trial.appended(b"", "staged 2.0").endswith(b" staged 2.0\n")


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
    app = esp + "/appliance"
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
    slots = trial.at_boot(esp, app, list, lambda _: None, efivars)
    with monkeypatch.context() as patch:
        patch.setattr(fsutil, "rename", step(fsutil.rename))
        patch.setattr(fsutil, "remove", step(fsutil.remove))
        patch.setattr(trial, "log", step(trial.log))
        try:
            trial.commit(esp, slots, app)
        except PowerCut:
            pass
    # The next boot: whatever systemd-boot picks runs a whole image, 1.2 or 1.1.
    selected = systemd_boot(esp)
    (Path(efivars) / f"LoaderEntrySelected-{trial.LOADER_GUID}").write_bytes(
        b"\x06\0\0\0" + (selected + "\0").encode("utf-16-le"))
    said: list[str] = []
    slots = trial.at_boot(esp, app, list, said.append, efivars)
    assert slots.booted is not None and slots.booted.version in ("1.2", "1.1"), said
    assert Path(esp + slots.booted.uki).read_bytes() == b"MZ uki " + slots.booted.version.encode()
    names = sorted(p.name for p in Path(esp, "loader/entries").iterdir())
    assert len({bootentries.parse_name(n).generation for n in names}) == len(names), names  # type: ignore[union-attr]
    for image in slots.images:  # every entry left runs a whole image
        assert Path(esp + image.uki).read_bytes() == b"MZ uki " + image.version.encode()
    if slots.booted.entry.tries_left is not None:  # cut before the commit counted: the core commits again
        trial.commit(esp, slots, app)
    # Committed in the end; an image older than the previous one may stay until the next commit.
    assert sorted(p.name for p in Path(esp, "loader/entries").iterdir())[-2:] == [
        "appliance-000002.conf", "appliance-000003.conf"]
