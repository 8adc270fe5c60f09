"""The update channel: machines pull their updates from plain files on any web server.

The channel is a TUF repository (The Update Framework): root, targets, snapshot and
timestamp metadata, signed with keys kept beside the Secure Boot key, and two kinds of
target: the images (UKIs) and ``channel.json``, the index of the releases with their
rollout. ``make publish`` writes it (``appliance.channel.publish``, on a host); the
machine checks it (``appliance.channel.check``, a process the init starts) with
python-tuf's client, so a mirror cannot forge an image, replay old metadata or freeze a
machine on an old version for longer than the timestamp's expiry. See docs/channel.md.
"""
