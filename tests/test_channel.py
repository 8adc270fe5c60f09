"""The update channel on a host: make publish's channel, refusals and rollouts, and the
machine's checker against it over a real HTTP server on the loopback (the ESP a folder)."""

from __future__ import annotations

import datetime
import functools
import http.server
import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance import initconf
from appliance.channel import check, publish
from appliance.channel import index as idx
from appliance.esp import identity, layout, updatelog
from appliance.esp.files import MountedEsp
from tests.test_trial import make_esp
from tests.test_uki import a_uki, make_pe


def image(tmp_path: Path, version: str, build: str = "0123456789ab", pad: bytes = b"") -> Path:
    path = tmp_path / f"appliance-{version}.efi"
    path.write_bytes(make_pe(a_uki(osrel=f"ID=debian\nIMAGE_ID=appliance\nIMAGE_VERSION={version}\n"
                                         f"BUILD_ID={build}\n".encode(), linux=b"kernel" * 10 + pad)))
    return path


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> publish.Keys:
    k = publish.Keys(tmp_path_factory.mktemp("keys") / "channel")
    k.ensure(say=lambda _: None)
    return k


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A channel directory and the URL of a real HTTP server that serves it."""
    root = tmp_path / "channel"
    root.mkdir()
    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def machine(tmp_path: Path, keys: publish.Keys, version: str = "1.0") -> tuple[check.Checker, list[str]]:
    root, _ = make_esp(tmp_path / "esp", {"appliance-000001.conf": version}, "appliance-000001.conf")
    said: list[str] = []
    checker = check.Checker(MountedEsp(root), initconf.Config(), said.append, identity.Identity(version, "b"),
                            "machine-1", root=str(keys.root_path))
    return checker, said


def settings(url: str) -> check.Settings:
    return check.Settings(url, 60.0, None, "the test")


def quiet(_: str) -> None:
    pass


@pytest.fixture(autouse=True)
def downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "run").mkdir()
    monkeypatch.setattr(check, "DOWNLOAD_DIR", str(tmp_path / "run"))


def test_a_machine_takes_a_newer_release_and_nothing_else(tmp_path: Path, keys: publish.Keys,
                                                          served: tuple[Path, str]) -> None:
    channel, url = served
    publish.publish(channel, keys, image(tmp_path, "1.0"), say=quiet)
    checker, _ = machine(tmp_path, keys)
    result = checker.check(settings(url))
    assert result.kind == "nothing" and "nothing newer than 1.0" in result.line, result
    publish.publish(channel, keys, image(tmp_path, "2.0"), say=quiet)
    result = checker.check(settings(url))
    assert result.kind == "staged" and result.staged is not None and result.staged.version == "2.0", result
    assert checker.files.read(result.staged.uki) == image(tmp_path, "2.0").read_bytes()


def test_a_replay_of_the_channels_old_files_is_refused(tmp_path: Path, keys: publish.Keys,
                                                       served: tuple[Path, str]) -> None:
    channel, url = served
    publish.publish(channel, keys, image(tmp_path, "1.0"), say=quiet)
    old = tmp_path / "old"
    shutil.copytree(channel, old)
    publish.publish(channel, keys, image(tmp_path, "2.0"), rollout=0, say=quiet)
    checker, _ = machine(tmp_path, keys)
    assert "not for this machine yet (rollout 0%)" in checker.check(settings(url)).line
    shutil.rmtree(channel)
    shutil.copytree(old, channel)
    result = checker.check(settings(url))
    assert result.kind == "refused" and "older than what this machine already trusts" in result.line, result


def test_an_image_changed_on_the_mirror_is_refused(tmp_path: Path, keys: publish.Keys,
                                                   served: tuple[Path, str]) -> None:
    channel, url = served
    publish.publish(channel, keys, image(tmp_path, "1.0"), say=quiet)
    publish.publish(channel, keys, image(tmp_path, "2.0"), say=quiet)
    (target,) = (channel / "targets" / "images").glob("*.appliance-2.0.efi")
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    checker, _ = machine(tmp_path, keys)
    result = checker.check(settings(url))
    assert result.kind == "refused" and "does not match its signed length and hash" in result.line, result
    assert checker.files.list(layout.IMAGES_DIR) == ["000001-1.0.efi"]


def test_expired_timestamp_is_refused(tmp_path: Path, keys: publish.Keys, served: tuple[Path, str]) -> None:
    channel, url = served
    publish.publish(channel, keys, image(tmp_path, "1.0"), timestamp_seconds=1, say=quiet)
    time.sleep(2.1)
    checker, _ = machine(tmp_path, keys)
    result = checker.check(settings(url))
    assert result.kind == "refused" and "has expired" in result.line, result


def test_a_rolled_back_version_is_not_tried_again_until_a_newer_one(tmp_path: Path, keys: publish.Keys,
                                                                    served: tuple[Path, str]) -> None:
    channel, url = served
    publish.publish(channel, keys, image(tmp_path, "2.0"), say=quiet)
    checker, _ = machine(tmp_path, keys)
    checker.files.write(layout.ROLLED_BACK, b"2.0 = 2026-12-03T10:00:00Z\n")
    result = checker.check(settings(url))
    assert result.kind == "nothing" and "2.0 was rolled back on this machine" in result.line, result
    publish.publish(channel, keys, image(tmp_path, "2.1"), say=quiet)
    assert checker.check(settings(url)).kind == "staged"


def test_a_channel_that_is_not_there_or_answers_garbage_is_said(tmp_path: Path, keys: publish.Keys,
                                                                served: tuple[Path, str]) -> None:
    channel, url = served
    checker, _ = machine(tmp_path, keys)
    result = checker.check(settings(url))
    assert result.kind == "failed" and "could not be read" in result.line and "404" in result.line, result
    (channel / "timestamp.json").write_bytes(b"\x00garbage" * 100)
    result = checker.check(settings(url))
    assert result.kind == "refused", result
    (channel / "timestamp.json").write_bytes(b"{" * 1_000_000)  # past timestamp's bound
    result = checker.check(settings(url))
    assert result.kind in ("refused", "failed") and "16384" in result.line, result


def test_rotating_the_timestamp_key_keeps_the_machines(tmp_path: Path, served: tuple[Path, str]) -> None:
    channel, url = served
    keys = publish.Keys(tmp_path / "own-keys")
    keys.ensure(say=quiet)
    publish.publish(channel, keys, image(tmp_path, "1.0"), say=quiet)
    checker, _ = machine(tmp_path, keys)  # trusts root version 1
    built_in = tmp_path / "root-v1.json"
    shutil.copy2(keys.root_path, built_in)
    checker.root = str(built_in)
    assert checker.check(settings(url)).kind == "nothing"
    keys.rotate("timestamp", say=quiet)
    keys.rotate("root", say=quiet)
    publish.publish(channel, keys, image(tmp_path, "2.0"), say=quiet)
    assert json.loads((channel / "root.json").read_bytes())["signed"]["version"] == 3
    result = checker.check(settings(url))
    assert result.kind == "staged", result


def test_publish_refuses_what_machines_could_not_take(tmp_path: Path, keys: publish.Keys) -> None:
    channel = tmp_path / "channel"
    publish.publish(channel, keys, image(tmp_path, "2.0"), say=quiet)
    with pytest.raises(publish.PublishError, match=r"not newer than the channel's newest, 2\.0"):
        publish.publish(channel, keys, image(tmp_path, "1.9"), say=quiet)
    with pytest.raises(publish.PublishError, match=r"already has version 2\.0 with other bytes"):
        publish.publish(channel, keys, image(tmp_path, "2.0", build="ffffffffffff"), say=quiet)
    with pytest.raises(publish.PublishError, match="made with other keys"):
        other = publish.Keys(tmp_path / "other")
        publish.publish(channel, other, image(tmp_path, "3.0"), say=quiet)
    with pytest.raises(publish.PublishError, match="ROLLOUT=150"):
        publish.publish(channel, keys, image(tmp_path, "3.0"), rollout=150, say=quiet)
    with pytest.raises(publish.PublishError, match="not an image to publish"):
        bad = tmp_path / "bad.efi"
        bad.write_bytes(b"MZ nothing")
        publish.publish(channel, keys, bad, say=quiet)


def test_publish_refuses_an_image_of_another_signer() -> None:
    a, b = "a" * 64, "b" * 64
    old = idx.Index((idx.Release("1.0", "x", idx.image_target("1.0")),), (a,))
    with pytest.raises(publish.PublishError, match="another Secure Boot key"):
        publish.plan(old, "2.0", "y", (b,), "00", None, None, False)
    with pytest.raises(publish.PublishError, match="not signed and the channel's images are"):
        publish.plan(old, "2.0", "y", (), "00", None, None, False)
    unsigned = old._replace(signers=())
    with pytest.raises(publish.PublishError, match="unsigned and this one is signed"):
        publish.plan(unsigned, "2.0", "y", (a,), "00", None, None, False)
    new, said = publish.plan(old, "2.0", "y", (a, b), "00", None, 25, False)
    assert new.newest is not None and new.newest.rollout == 25 and "2.0 published: 2.0 (rollout 25%)" in said


def test_raising_the_rollout_widens_it_and_pause_stops_it(tmp_path: Path, keys: publish.Keys) -> None:
    channel = tmp_path / "channel"
    publish.publish(channel, keys, image(tmp_path, "1.0"), say=quiet)
    v2 = image(tmp_path, "2.0")
    publish.publish(channel, keys, v2, rollout=10, say=quiet)
    publish.publish(channel, keys, v2, rollout=50, say=quiet)
    index = publish.Channel(channel).state()[3]
    assert [r.describe() for r in index.releases] == ["1.0 (rollout 100%)", "2.0 (rollout 50%)"]
    publish.publish(channel, keys, v2, rollout=50, paused=True, say=quiet)
    index = publish.Channel(channel).state()[3]
    assert index.newest is not None and index.newest.paused
    assert "2.0 is paused" in idx.choose(index, "1.0", "m").why


def test_the_rollout_is_stable_and_even() -> None:
    ids = [f"machine-{n}" for n in range(10_000)]
    for percent in (1, 10, 25, 50, 90):
        share = sum(idx.in_rollout(i, "2.0", percent) for i in ids) / 100
        assert abs(share - percent) <= 1, (percent, share)
    for i in ids[:2000]:  # a wider rollout keeps every machine it had
        assert not idx.in_rollout(i, "2.0", 10) or idx.in_rollout(i, "2.0", 20)
        assert idx.in_rollout(i, "2.0", 33.3) == idx.in_rollout(i, "2.0", 33.3)
    assert not any(idx.in_rollout(i, "2.0", 0) for i in ids) and all(idx.in_rollout(i, "2.0", 100) for i in ids)


@pytest.mark.parametrize("older, newer", [
    ("1.0", "1.1"), ("1.9", "1.10"), ("1.0~rc1", "1.0"), ("1.0", "1.0.1"), ("2026.12.03.101500-ab12",
                                                                           "2026.12.03.101501-00ff"),
    ("test-v1", "test-v2"), ("1.0a", "1.0.1"),
])
def test_versions_are_ordered_as_systemd_orders_them(older: str, newer: str) -> None:
    assert idx.newer(newer, older) and not idx.newer(older, newer)


@pytest.mark.parametrize("data", [
    b"", b"[]", b'{"releases": 3}', b'{"releases": [{"version": "1", "target": "images/x.efi"}]}',
    b'{"releases": [{"version": "1", "target": "images/appliance-1.efi", "rollout": 101}]}',
    b'{"releases": [], "signers": ["short"]}', b"\xff\xfe", b"[" * 100_000,
])
def test_an_index_that_makes_no_sense_is_refused_with_a_reason(data: bytes) -> None:
    with pytest.raises(idx.BadIndex):
        idx.parse(data)


def test_the_settings_on_the_esp_override_the_image(tmp_path: Path) -> None:
    files = MountedEsp(str(tmp_path))
    conf = initconf.Config(update_channel="http://10.0.2.2/c", update_interval_seconds=3600)
    assert check.settings(files, conf) == check.Settings("http://10.0.2.2/c/", 3600, None, "the image")
    files.make_dirs(layout.APP_DIR)
    files.write(layout.UPDATE_CHANNEL, b"url = https://example.invalid/ch/\ninterval = 20\n")
    assert check.settings(files, conf).url == "https://example.invalid/ch/"
    assert check.settings(files, conf).interval == 20
    files.write(layout.UPDATE_CHANNEL, b"url = off\n")
    assert check.settings(files, conf).url == ""
    files.write(layout.UPDATE_CHANNEL, b"url = ftp://x/\n")
    assert "not http:// or https://" in check.settings(files, conf).origin


def test_timestamps_say_when_they_expire(tmp_path: Path, keys: publish.Keys) -> None:
    channel = tmp_path / "channel"
    publish.publish(channel, keys, image(tmp_path, "1.0"), timestamp_seconds=3600, say=quiet)
    expires = publish.Channel(channel).state()[0].signed.expires
    left = expires - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(minutes=59) < left <= datetime.timedelta(hours=1)
    publish.publish(channel, keys, None, say=quiet)  # REFRESH=1
    assert publish.Channel(channel).state()[0].signed.version == 2


def test_each_outcome_goes_to_the_error_tracker_when_the_machine_sends_reports(tmp_path: Path) -> None:
    from tests.loopback_tracker import Tracker
    t = Tracker()
    try:
        conf = initconf.Config(crash_reports=t.dsn.text)
        said: list[str] = []
        send = check.tracker(conf, MountedEsp(str(tmp_path)), said.append)
        send(check.Outcome("refused", "refused: the channel's metadata has expired"))
        (body,) = t.received
        event = json.loads(body.split(b"\n")[2])
        assert event["level"] == "warning" and event["tags"]["kind"] == "update"
        assert event["tags"]["update"] == "refused" and "has expired" in event["message"]["formatted"]
        assert said == []
        t.mode = "500"
        send(check.Outcome("nothing", "checked: nothing newer than 1.0"))
        assert said == ["update channel: the tracker did not take the outcome: 500"]
    finally:
        t.close()
    assert check.tracker(initconf.Config(), MountedEsp(str(tmp_path)), said.append) is not send  # no DSN: off


class Dripping(http.server.BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        try:
            for _ in range(100):
                self.wfile.write(b"{")
                self.wfile.flush()
                time.sleep(0.1)
        except OSError:  # the checker hung up: what the test wants
            pass


def test_a_channel_that_drips_its_bytes_is_cut_off_by_the_deadline(tmp_path: Path, keys: publish.Keys) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Dripping)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        checker, _ = machine(tmp_path, keys)
        started = time.monotonic()
        import unittest.mock
        with unittest.mock.patch.object(check, "METADATA_SECONDS", 1.0):
            result = checker.check(settings(f"http://127.0.0.1:{server.server_address[1]}/"))
        assert result.kind == "failed" and "no whole answer within 1 s" in result.line, result
        assert time.monotonic() - started < 5
    finally:
        server.shutdown()
        server.server_close()


def test_the_commit_of_the_running_image_is_reported_once(tmp_path: Path, keys: publish.Keys) -> None:
    checker, _ = machine(tmp_path, keys, version="2.0")
    sent: list[check.Outcome] = []
    checker.report = sent.append
    checker.report_commit()
    assert sent == []  # nothing committed in the update log
    updatelog.append(checker.files, "committed 2.0 (generation 2)")
    checker.report_commit()
    checker.report_commit()
    assert [o.line for o in sent] == ["committed 2.0: it is the default image from now on"]


def test_the_tracker_hears_an_outcome_when_its_kind_changes(tmp_path: Path, keys: publish.Keys) -> None:
    checker, said = machine(tmp_path, keys)
    sent: list[str] = []
    checker.report = lambda o: sent.append(o.kind)
    for kind in ("failed", "failed", "nothing", "nothing", "failed", "refused"):
        checker.outcome(check.Outcome(kind, f"{kind}: ..."))
    assert sent == ["failed", "nothing", "failed", "refused"]
    assert len(said) == 6 and len(updatelog.read(checker.files, 50)) == 6  # said and logged every time
