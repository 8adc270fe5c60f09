"""``make publish CHANNEL=<dir>``: add the image last built to a channel directory, a TUF
repository any static web server can serve (on a host; needs python-tuf and, to sign,
pyca/cryptography).

The keys (one ed25519 key per TUF role) are made once, outside the clone, beside the
Secure Boot key (``default_keys_dir``; CHANNEL_KEYS= for a fleet's own), with the root
metadata they sign: the build puts that root into every image that checks the channel
(``make image UPDATE_CHANNEL=``). The channel directory:

    1.root.json ...           every root version (a machine walks them to the newest)
    timestamp.json            the newest snapshot's version; expires soon (7 days)
    N.snapshot.json           the newest targets metadata's version
    N.targets.json            the targets: the index and the images, with length and hash
    targets/<sha256>.channel.json               the index (appliance.channel.index)
    targets/images/<sha256>.appliance-<v>.efi   the images

Files are written so that a machine checking while a publication is under way sees the
old channel or the new one: the targets first, then the metadata that names them,
timestamp.json last, each by rename.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from appliance.channel import index as idx
from appliance.esp import uki

ROLES = ("root", "targets", "snapshot", "timestamp")
DAY = 24 * 3600
ROOT_DAYS = 365  # root, targets and snapshot: renewed by a publication when fewer than RENEW_DAYS are left
RENEW_DAYS = 60
TIMESTAMP_SECONDS = 7 * DAY  # how long a frozen mirror can hold a machine back (TIMESTAMP_EXPIRES=)
KEEP_METADATA = 2  # versions of snapshot/targets kept: a machine checking mid-publication finds the one it was told


class PublishError(Exception):
    pass


def default_keys_dir() -> Path:
    """CHANNEL_KEYS=, else beside the Secure Boot key: in KEYS_DIR= when that is given."""
    if os.environ.get("CHANNEL_KEYS"):
        return Path(os.environ["CHANNEL_KEYS"])
    if os.environ.get("KEYS_DIR"):
        return Path(os.environ["KEYS_DIR"]) / "channel"
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return Path(base) / "appliance" / "channel"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Whole or not at all: a temporary file, flushed, renamed over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Keys:
    """The channel's signing keys and its root metadata, in one directory (private keys 0600)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def signer(self, role: str) -> Any:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
        from securesystemslib.signer import CryptoSigner
        path = self.dir / f"{role}.pem"
        try:
            return CryptoSigner(load_pem_private_key(path.read_bytes(), None))
        except (OSError, ValueError) as e:
            raise PublishError(f"the channel's {role} key {path} cannot be read: {e}") from None

    @property
    def root_path(self) -> Path:
        return self.dir / "root.json"

    def root(self) -> Any:
        from tuf.api.metadata import Metadata
        try:
            return Metadata.from_bytes(self.root_path.read_bytes())
        except (OSError, ValueError) as e:
            raise PublishError(f"the channel's root metadata {self.root_path} cannot be read: {e}") from None

    def ensure(self, say: Any = print) -> None:
        """Make the keys and the first root, once."""
        if self.root_path.exists():
            return
        from securesystemslib.signer import CryptoSigner
        from tuf.api.metadata import Metadata, Root
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        root = Root(expires=_now() + datetime.timedelta(days=ROOT_DAYS), consistent_snapshot=True)
        for role in ROLES:
            signer = CryptoSigner.generate_ed25519()
            _write(self.dir / f"{role}.pem", signer.private_bytes, 0o600)
            root.add_key(signer.public_key, role)
        self._save_root(Metadata(root), [self.signer("root")])
        say(f"publish: made the channel's keys and root metadata in {self.dir} (keep them: every image "
            "checking this channel trusts them)")

    def _save_root(self, md: Any, signers: list[Any]) -> None:
        md.signatures.clear()
        for s in signers:
            md.sign(s, append=True)
        data = md.to_bytes()
        _write(self.dir / f"{md.signed.version}.root.json", data)
        _write(self.root_path, data)

    def renew_root(self, say: Any = print) -> bool:
        """A new root version when the current one expires within RENEW_DAYS."""
        md = self.root()
        if md.signed.expires - _now() > datetime.timedelta(days=RENEW_DAYS):
            return False
        md.signed.version += 1
        md.signed.expires = _now() + datetime.timedelta(days=ROOT_DAYS)
        self._save_root(md, [self.signer("root")])
        say(f"publish: root metadata renewed (version {md.signed.version})")
        return True

    def rotate(self, role: str, say: Any = print) -> None:
        """A new key for ``role``: a new root version lists it instead of the old one,
        signed by the old root key and (for root) the new one too, so that machines
        trusting the old root accept it."""
        from securesystemslib.signer import CryptoSigner
        if role not in ROLES:
            raise PublishError(f"ROTATE={role}: one of {', '.join(ROLES)}")
        md = self.root()
        old_root = self.signer("root")
        new = CryptoSigner.generate_ed25519()
        for keyid in list(md.signed.roles[role].keyids):
            md.signed.revoke_key(keyid, role)
        md.signed.add_key(new.public_key, role)
        md.signed.version += 1
        md.signed.expires = _now() + datetime.timedelta(days=ROOT_DAYS)
        old_pem = self.dir / f"{role}.pem"
        _write(self.dir / f"{role}.pem.old-{md.signed.version - 1}", old_pem.read_bytes(), 0o600)
        _write(old_pem, new.private_bytes, 0o600)
        self._save_root(md, [old_root, new] if role == "root" else [old_root])
        say(f"publish: new {role} key; root metadata version {md.signed.version} names it (the old key is kept "
            f"as {role}.pem.old-{md.signed.version - 1}: remove it once no machine runs an image older than this)")


class Channel:
    """A channel directory as it is: the newest metadata of each role, and the index."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def _read(self, name: str) -> Any:
        from tuf.api.metadata import Metadata
        path = self.dir / name
        try:
            return Metadata.from_bytes(path.read_bytes())
        except (OSError, ValueError) as e:
            raise PublishError(f"{path}: {e}; this is not a channel made by make publish") from None

    def exists(self) -> bool:
        return (self.dir / "timestamp.json").exists()

    def roots(self) -> list[int]:
        return sorted(int(p.name.split(".")[0]) for p in self.dir.glob("*.root.json")
                      if p.name.split(".")[0].isdigit())

    def state(self) -> tuple[Any, Any, Any, idx.Index]:
        """timestamp, snapshot, targets metadata and the index."""
        timestamp = self._read("timestamp.json")
        snapshot = self._read(f"{timestamp.signed.snapshot_meta.version}.snapshot.json")
        targets = self._read(f"{snapshot.signed.meta['targets.json'].version}.targets.json")
        info = targets.signed.targets.get(idx.INDEX)
        if info is None:
            return timestamp, snapshot, targets, idx.Index(())
        path = self.dir / "targets" / f"{info.hashes['sha256']}.{idx.INDEX}"
        try:
            return timestamp, snapshot, targets, idx.parse(path.read_bytes())
        except (OSError, ValueError) as e:
            raise PublishError(f"the channel's index {path}: {e}") from None

    def target_path(self, path: str, sha256: str) -> Path:
        dirname, _, base = path.rpartition("/")
        return self.dir / "targets" / dirname / f"{sha256}.{base}"


def fingerprints(data: bytes, found: uki.Uki) -> tuple[str, ...]:
    try:
        return tuple(sorted(hashlib.sha256(c).hexdigest() for c in uki.certificates(io.BytesIO(data), found)))
    except uki.UkiError as e:
        raise PublishError(f"the image's signature cannot be read: {e}") from None


def read_image(path: Path) -> tuple[bytes, uki.Uki]:
    try:
        data = path.read_bytes()
        found = uki.read(io.BytesIO(data))
    except OSError as e:
        raise PublishError(f"{path}: {e} (build it first: make image)") from None
    except uki.UkiError as e:
        raise PublishError(f"{path} is not an image to publish: {e}") from None
    if not found.identity.version:
        raise PublishError(f"{path} has no IMAGE_VERSION: not an image made by make image")
    return data, found


def plan(index: idx.Index, version: str, build_id: str, signers: tuple[str, ...], sha256: str,
         current_sha256: str | None, rollout: float | None, paused: bool) -> tuple[idx.Index, str]:
    """The index after publishing this image (or changing the newest's rollout, when it is
    the same image), and what to say; PublishError for what is refused."""
    if rollout is not None and not 0 <= rollout <= 100:
        raise PublishError(f"ROLLOUT={rollout:g}: a percentage from 0 to 100")
    newest = index.newest
    if newest is not None and set(index.signers) != set(signers):
        if not index.signers:
            raise PublishError("the channel's images are unsigned and this one is signed: machines running them "
                               "boot unsigned images only (publish to a new channel)")
        if not signers:
            raise PublishError("the image is not signed and the channel's images are: with Secure Boot on, "
                               "every machine would refuse it (build it with the channel's SECURE_BOOT and key)")
        if not set(index.signers) & set(signers):
            raise PublishError("the image is signed by another Secure Boot key than the channel's images: "
                               "the machines' firmware or shim would refuse it (build it with KEYS_DIR=/SB_KEY= "
                               "of this channel)")
    if newest is not None and newest.version == version:
        if current_sha256 != sha256:
            raise PublishError(f"the channel already has version {version} with other bytes: give the new image "
                               "a newer version (make image VERSION=, or rebuild: the default version is the time)")
        changed = newest._replace(rollout=newest.rollout if rollout is None else rollout, paused=paused)
        return index._replace(releases=(*index.releases[:-1], changed)), f"{version} republished: " \
            f"{changed.describe()}"
    if newest is not None and not idx.newer(version, newest.version):
        raise PublishError(f"version {version} is not newer than the channel's newest, {newest.version}: "
                           "machines would never take it (make image VERSION= with a newer one)")
    release = idx.Release(version, build_id, idx.image_target(version), 100.0 if rollout is None else rollout,
                          paused, _now().isoformat().replace("+00:00", "Z"))
    releases = (*index.releases, release)[-idx.KEEP:]
    return idx.Index(releases, signers or index.signers), f"{version} published: {release.describe()}"


def publish(channel_dir: Path, keys: Keys, image: Path | None, rollout: float | None = None, paused: bool = False,
            timestamp_seconds: float = TIMESTAMP_SECONDS, say: Any = print) -> None:
    """Publish ``image`` (None: only re-sign the timestamp, and renew what expires soon)."""
    from tuf.api.metadata import Metadata, MetaFile, Snapshot, TargetFile, Targets, Timestamp
    keys.ensure(say)
    channel = Channel(channel_dir)
    roots = channel.roots()
    key_root = keys.root()
    if roots:
        theirs = channel._read(f"{roots[-1]}.root.json")
        if theirs.signed.version > key_root.signed.version or (
                theirs.signed.version in range(1, key_root.signed.version + 1) and
                (channel_dir / f"{theirs.signed.version}.root.json").read_bytes() !=
                (keys.dir / f"{theirs.signed.version}.root.json").read_bytes()):
            raise PublishError(f"{channel_dir} was made with other keys than {keys.dir} (CHANNEL_KEYS=)")
    elif channel.exists():
        raise PublishError(f"{channel_dir} has metadata but no root: not a channel made by make publish")
    elif image is None:
        raise PublishError(f"{channel_dir} is no channel yet: publish an image to it first")
    keys.renew_root(say)
    key_root = keys.root()
    channel_dir.mkdir(parents=True, exist_ok=True)
    for v in range(1, key_root.signed.version + 1):  # the roots the machines walk, in order
        if v not in roots:
            shutil.copy2(keys.dir / f"{v}.root.json", channel_dir / f"{v}.root.json")
    _write(channel_dir / "root.json", keys.root_path.read_bytes())

    if channel.exists():
        timestamp, snapshot, targets, index = channel.state()
        ts_version, sn_version, tg_version = (timestamp.signed.version, snapshot.signed.version,
                                              targets.signed.version)
        old_targets: dict[str, Any] = dict(targets.signed.targets)
    else:
        ts_version = sn_version = tg_version = 0
        old_targets, index = {}, idx.Index(())
    expires = _now() + datetime.timedelta(days=ROOT_DAYS)
    renew = not old_targets or targets.signed.expires - _now() < datetime.timedelta(days=RENEW_DAYS)
    rotated = bool(roots) and roots[-1] < key_root.signed.version  # new keys sign everything anew

    if image is not None:
        data, found = read_image(image)
        sha256 = hashlib.sha256(data).hexdigest()
        version = found.identity.version
        current = old_targets.get(idx.image_target(version))
        new_index, said = plan(index, version, found.identity.build_id, fingerprints(data, found), sha256,
                               current.hashes.get("sha256") if current else None, rollout, paused)
        info = TargetFile.from_data(idx.image_target(version), data, ["sha256"])
        path = channel.target_path(info.path, sha256)
        if not (path.exists() and path.stat().st_size == len(data)):
            _write(path, data)
        old_targets[info.path] = info
        index_data = new_index.dump()
        index_info = TargetFile.from_data(idx.INDEX, index_data, ["sha256"])
        _write(channel.target_path(idx.INDEX, index_info.hashes["sha256"]), index_data)
        wanted = {r.target for r in new_index.releases}
        targets_now = {p: t for p, t in old_targets.items() if p in wanted}
        targets_now[idx.INDEX] = index_info
        tg_version += 1
        md_targets = Metadata(Targets(version=tg_version, expires=expires, targets=targets_now))
        md_targets.sign(keys.signer("targets"))
        _write(channel_dir / f"{tg_version}.targets.json", md_targets.to_bytes())
    elif renew or rotated:
        tg_version += 1
        md_targets = Metadata(Targets(version=tg_version, expires=expires, targets=old_targets))
        md_targets.sign(keys.signer("targets"))
        _write(channel_dir / f"{tg_version}.targets.json", md_targets.to_bytes())
        said = "targets metadata renewed"
    else:
        said = "timestamp re-signed"
    if image is not None or renew or rotated or (sn_version != 0 and \
            snapshot.signed.expires - _now() < datetime.timedelta(days=RENEW_DAYS)):
        sn_version += 1
        md_snapshot = Metadata(Snapshot(version=sn_version, expires=expires,
                                        meta={"targets.json": MetaFile(version=tg_version)}))
        md_snapshot.sign(keys.signer("snapshot"))
        _write(channel_dir / f"{sn_version}.snapshot.json", md_snapshot.to_bytes())
    ts_version += 1
    ts_expires = _now() + datetime.timedelta(seconds=timestamp_seconds)
    md_timestamp = Metadata(Timestamp(version=ts_version, expires=ts_expires, snapshot_meta=MetaFile(
        version=sn_version)))
    md_timestamp.sign(keys.signer("timestamp"))
    _write(channel_dir / "timestamp.json", md_timestamp.to_bytes())
    prune(channel)
    say(f"publish: {said}; timestamp version {ts_version} expires {ts_expires.isoformat()} "
        f"(publish again before then: make publish CHANNEL={channel_dir} REFRESH=1)")


def prune(channel: Channel) -> None:
    """Remove metadata versions and targets that no kept targets metadata names."""
    kept_targets: set[Path] = set()
    for role in ("snapshot", "targets"):
        versions = sorted(int(p.name.split(".")[0]) for p in channel.dir.glob(f"*.{role}.json")
                          if p.name.split(".")[0].isdigit())
        for v in versions[:-KEEP_METADATA]:
            (channel.dir / f"{v}.{role}.json").unlink()
        if role == "targets":
            for v in versions[-KEEP_METADATA:]:
                for path, t in channel._read(f"{v}.targets.json").signed.targets.items():
                    kept_targets.add(channel.target_path(path, t.hashes["sha256"]))
    for p in (channel.dir / "targets").rglob("*"):
        if p.is_file() and p not in kept_targets:
            p.unlink()


def describe(channel_dir: Path) -> str:
    channel = Channel(channel_dir)
    if not channel.exists():
        return f"{channel_dir}: no channel"
    timestamp, _, _, index = channel.state()
    lines = [f"{channel_dir}: timestamp version {timestamp.signed.version}, expires "
             f"{timestamp.signed.expires.isoformat()}"]
    lines += [f"  {r.describe()}, build {r.build_id}, published {r.published}" for r in index.releases]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="appliance.channel.publish", description=__doc__.splitlines()[0])
    p.add_argument("channel", help="the channel directory (made on the first publication)")
    p.add_argument("--image", default="build/appliance.efi", help="the UKI to publish (make image's)")
    p.add_argument("--keys", default=str(default_keys_dir()),
                   help="the channel's keys (CHANNEL_KEYS=)")
    p.add_argument("--rollout", type=float, default=None, help="percent of the machines (new release: 100)")
    p.add_argument("--pause", action="store_true", help="stop the rollout (machines that have it keep it)")
    p.add_argument("--refresh", action="store_true", help="no image: re-sign the timestamp (and renew)")
    p.add_argument("--rotate", default="", help="a new key for this role (root, targets, snapshot, timestamp)")
    p.add_argument("--timestamp-expires", type=float, default=TIMESTAMP_SECONDS,
                   help="seconds the timestamp stays valid (a frozen mirror is found out after that)")
    p.add_argument("--show", action="store_true", help="only say what the channel holds")
    args = p.parse_args(argv)
    channel = Path(args.channel)
    try:
        if args.show:
            print(describe(channel))
            return 0
        keys = Keys(Path(args.keys))
        if args.rotate:
            keys.ensure()
            keys.rotate(args.rotate)
        publish(channel, keys, None if args.refresh or args.rotate else Path(args.image), args.rollout, args.pause,
                args.timestamp_expires)
        print(describe(channel))
    except PublishError as e:
        print(f"publish: error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:
        print(f"publish: error: {e}: make deps installs python-tuf and cryptography", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
