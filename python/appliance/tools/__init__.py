"""The harness's command-line programs: ``make qemu`` (``tools.qemu``) and ``make soak``
(``tools.soak``). The library they drive, which the tests use too, is ``appliance.harness``."""
