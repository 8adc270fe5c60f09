"""A systemd-free boot appliance: a Python PID 1 that runs one program, the core.

Inside the image (Debian's python3, standard library only): ``appliance.init`` (PID 1),
``appliance.core`` (the hooks in the core's interpreter) and ``appliance.update`` (the
core's API). Shared by the image and the host: ``appliance.esp`` (what lives on the ESP),
``appliance.efivars`` and ``appliance.initconf``. On the build host: ``appliance.builder``
(make image), ``appliance.media`` (flash, update, dumps), ``appliance.harness`` (QEMU),
``appliance.tools`` (make qemu, make soak) and ``appliance.bench``. No module outside the
init imports the init.
"""

__version__ = "0.1.0"
