"""libvirt-arm-cpu: migratable CPU models for ARM64 KVM hosts.

The layers, lowest first (docs/architecture.md; tests/test_lint.py holds
the imports to them): base (errors, paths, settings, fileio, xmlsafe),
``kb`` (the knowledge base and its generators), ``model`` (the values),
``engine`` (baseline, compare, translate, validate: pure functions) and
``formats`` (the file forms), ``host`` (KVM and this host's profile),
``service`` (inputs and domains for the edges), and the edges: ``cli``,
``hook``, ``api``, ``helper``.
"""

__version__ = "0.1.0"
