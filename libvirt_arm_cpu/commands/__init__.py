"""Subcommands of ``libvirt-arm-cpu``, one module each."""
