"""libvirt-arm-cpu: migratable CPU models for ARM64 KVM hosts.

Layers, each importing only from those above it:

* ``registers``, ``features``, ``implementers`` -- the register knowledge base
  (generated into ``xml/`` by ``kbgen`` from Linux's sysreg file);
* ``dump`` -- register dumps (``NAME=VALUE`` lines);
* ``cli`` and ``helper`` -- the command-line front ends.
"""

__version__ = "0.1.0"
