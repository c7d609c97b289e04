"""The XML namespaces of the files this project reads and writes, once.

Each format module names its own (``formats.profile.NAMESPACE`` ...) from
here; code that must not import a format module (the hook's memo, the kinds
of input) takes them from here too.
"""

__all__ = ["KB", "HOST_PROFILE", "CPU_MODEL", "DOMAIN_METADATA", "QEMU_COMMANDLINE"]

KB = "urn:x-libvirt-arm-cpu:kb:1"                   # xml/*.xml, the knowledge base
HOST_PROFILE = "urn:x-libvirt-arm-cpu:host:1"       # a host profile (xml/schemas/profile.xsd)
CPU_MODEL = "urn:x-libvirt-arm-cpu:cpu:1"           # a CPU model's <registers> in a libvirt <cpu>
DOMAIN_METADATA = "urn:x-libvirt-arm-cpu:domain:1"  # a translated domain's <metadata>
# libvirt's, for <qemu:commandline> (docs/formatdomain: "Pass-through of
# arbitrary qemu commands")
QEMU_COMMANDLINE = "http://libvirt.org/schemas/domain/qemu/1.0"
