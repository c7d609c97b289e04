"""The ``libvirt-arm-cpu`` command: one module a subcommand (or a family of
them), the parser and dispatch in :mod:`.main`."""
