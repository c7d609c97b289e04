"""Kubernetes node-feature-discovery labels: NFD's local feature file.

nfd-worker's ``local`` feature source reads every file in
``/etc/kubernetes/node-feature-discovery/features.d/`` and turns each line
into a node label (NFD ``docs/usage/customization-guide.md``, "Local feature
source", "Input format"):

* one ``<namespace>/<name>[=<value>]`` a line; the value defaults to
  ``true``;
* lines starting with ``#`` are comments, except the directives
  ``# +expiry-time=<RFC 3339>``, ``# +no-label`` and ``# +no-feature``
  (so no comment written here starts with ``# +``);
* a file over 64 kB is ignored as a whole;
* dot files are ignored, so a writer writes ``.name`` and renames it
  (:func:`libvirt_arm_cpu.fileio.atomic_write` does).

nfd-master publishes labels of any namespace but ``kubernetes.io`` and its
subdomains, its own ``feature.node.kubernetes.io`` excepted (NFD
``docs/reference/master-configuration-reference.md``, ``denyLabelNs``), so
the default namespace is NFD's own.  A label key must be a Kubernetes
qualified name and a value a valid label value (k8s.io/apimachinery
``pkg/util/validation``: ``IsQualifiedName``, ``IsValidLabelValue``), checked
here so that nfd-master never drops a line.

Pure: names in, text out.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from libvirt_arm_cpu.errors import DataError

__all__ = ["MODEL_PREFIX", "FEATURE_PREFIX", "MAX_FILE", "label_problem", "feature_file"]

# "this host runs CPU model NAME" and "a host-passthrough guest here has hwcap NAME"
MODEL_PREFIX = "feature.node.kubernetes.io/arm-cpu-model."
FEATURE_PREFIX = "feature.node.kubernetes.io/arm-cpu-hwcap."
MAX_FILE = 64 * 1024            # nfd-worker ignores a larger feature file

# k8s.io/apimachinery/pkg/util/validation: qualifiedNameFmt (63 at most) and
# DNS1123SubdomainFmt (253 at most) for the optional prefix
_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN = re.compile(_DNS_LABEL + r"(\." + _DNS_LABEL + r")*")


def label_problem(key: str, value: str = "true") -> str | None:
    """Why *key*=*value* is not a Kubernetes node label, or None."""
    prefix, slash, name = key.rpartition("/")
    if not slash:
        return f"'{key}' has no namespace (NAMESPACE/NAME)"
    if not _SUBDOMAIN.fullmatch(prefix) or len(prefix) > 253:
        return f"'{prefix}' is not a DNS subdomain (lower case, at most 253 characters)"
    if not _NAME.fullmatch(name) or len(name) > 63:
        return (f"'{name}' is not a label name (at most 63 letters, digits, '-', '_', '.', "
                f"beginning and ending with a letter or digit)")
    if value and (not _NAME.fullmatch(value) or len(value) > 63):
        return f"'{value}' is not a label value"
    return None


def feature_file(models: Sequence[str], features: Sequence[str], header: Sequence[str] = (),
                 model_prefix: str = MODEL_PREFIX, feature_prefix: str = FEATURE_PREFIX
                 ) -> tuple[str, list[str]]:
    """The feature file labelling a node with the CPU *models* it runs and
    the hwcaps *features* of its host-passthrough guests, after the comment
    lines *header*; and a note for each name that cannot be a label (left
    out, and said so in the file).

    :raise DataError: a prefix that makes no label at all, or a file over
        nfd-worker's 64 kB.
    """
    lines = [f"# {h}" if h else "#" for h in header]
    notes: list[str] = []
    for prefix, names, what in ((model_prefix, models, "CPU model"),
                                (feature_prefix, features, "feature")):
        problem = label_problem(prefix + "x")
        if problem:
            raise DataError(f"label prefix '{prefix}': {problem}")
        for name in names:
            problem = label_problem(prefix + name)
            if problem:
                notes.append(f"{what} {name} left out: {problem}")
                lines.append(f"# {what} {name} left out: {problem}")
            else:
                lines.append(prefix + name)
    text = "".join(line + "\n" for line in lines)
    if len(text.encode()) > MAX_FILE:
        raise DataError(f"the feature file would have {len(text.encode())} bytes, and "
                        f"nfd-worker ignores one over {MAX_FILE}")
    return text, notes
