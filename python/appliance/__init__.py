"""A systemd-free boot appliance: a Python PID 1 that runs one program, the core.

``appliance.init`` runs inside the image (Debian's python3, standard library only);
``appliance.builder`` and ``appliance.harness`` run on the build host.
"""

__version__ = "0.1.0"
