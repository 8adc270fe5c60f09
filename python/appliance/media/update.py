"""``make update``: stage the image ``make image`` built onto an existing stick or disk
image, keeping everything else on its ESP (the crash history, the images it runs).

The stick tries the new image on its next boots and keeps it only if its core runs
healthy; otherwise it goes back to the image it runs now (see docs/updates.md).
A device is refused for the same reasons ``make flash`` refuses one (except its size:
nothing but the ESP's files is written).
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from typing import TextIO

from appliance.esp import staging, updatelog
from appliance.media import blockdev, espfs


def update(target: str, image: str, tries: int = staging.DEFAULT_TRIES, allow_non_removable: str = "",
           out: TextIO = sys.stdout, system_paths: tuple[str, ...] = blockdev.SYSTEM_PATHS) -> int:
    if not os.path.isfile(image):
        out.write(f"update: {image} does not exist; build it with `make image`\n")
        return 2
    try:
        st = os.stat(target)
    except OSError as e:
        out.write(f"update: {target}: {e.strerror}\n")
        return 2
    if stat.S_ISBLK(st.st_mode):
        _, why = blockdev.refusals(target, 0, allow_non_removable, system_paths=system_paths)
        if why:
            out.write(f"update: refusing to write {target}, nothing was written:\n")
            out.write("".join(f"  - {reason}\n" for reason in why))
            return 2
    elif not stat.S_ISREG(st.st_mode):
        out.write(f"update: {target} is neither a disk nor a disk image file\n")
        return 2
    try:
        esp = espfs.EspImage(target)
        with open(image, "rb") as f:
            data = f.read()
        staged = staging.stage(esp, data, tries, say=lambda s: print(f"update: {s}", file=out))
        line = (f"staged {staged.version} ({staged.build_id}) as generation {staged.generation}, "
                f"{staged.tries} tries, from a host")
        updatelog.append(esp, line)
    except (staging.StageError, espfs.EspError, OSError) as e:
        out.write(f"update: {e}; the images on {target} are as they were\n")
        return 1
    out.write(f"update: {staged.uki} written and read back; entry {staged.entry}\n")
    out.write(f"update: the next boot tries {staged.version}; it becomes the default once its core runs healthy, "
              f"and after {staged.tries} failed boots the machine goes back to the image it runs now\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m appliance.media.update", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", help="a stick (/dev/sdX) or a disk image file that make image or make flash made")
    p.add_argument("--image", default="build/appliance.efi", help="the UKI to stage (default: %(default)s)")
    p.add_argument("--tries", type=int, default=staging.DEFAULT_TRIES, help="failed boots before going back")
    p.add_argument("--allow-non-removable", default="", metavar="NAME")
    args = p.parse_args(argv)
    return update(args.target, args.image, args.tries, args.allow_non_removable)


if __name__ == "__main__":
    sys.exit(main())
