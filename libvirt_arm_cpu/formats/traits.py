"""OpenStack placement traits: the CPU models a host runs and the features
its host-passthrough guests have, as trait names, and Nova's provider
config file that sets them.

* The standard AArch64 CPU traits of os-traits are Linux hwcap names,
  upper case, after ``HW_CPU_AARCH64_`` (os-traits
  ``os_traits/hw/cpu/aarch64.py``; the list below, as placement's
  ``openstack trait list`` shows it).  ``evtstrm`` and ``cpuid`` cannot be
  told from ID registers, so they are never given.
* Any other name is a custom trait: ``CUSTOM_`` then ``[A-Z0-9_]``, 255
  characters at most (placement ``placement/schemas/common.py``
  ``CUSTOM_TRAIT_PATTERN``, ``placement/schemas/trait.py`` ``maxLength``).
  Ours all begin ``CUSTOM_ARM_CPU_`` so a script can tell which it owns.
* Nova's provider config file (``[compute] provider_config_location``, read
  when nova-compute starts) adds custom traits only (nova
  ``nova/compute/provider_config.py``: schema 1.0, ``identification`` by
  ``uuid`` or the sentinel ``$COMPUTE_NODE``, ``traits: additional:``); the
  standard ones are set through placement's API instead.

Pure: names in, text out.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from libvirt_arm_cpu.errors import DataError

__all__ = ["OS_TRAITS_AARCH64", "MODEL_PREFIX", "HWCAP_PREFIX", "CUSTOM", "MAX_LENGTH",
           "model_trait", "feature_trait", "traits", "provider_yaml"]

# os_traits/hw/cpu/aarch64.py: HW_CPU_AARCH64_<hwcap>
OS_TRAITS_AARCH64 = frozenset((
    "FP", "ASIMD", "EVTSTRM", "AES", "PMULL", "SHA1", "SHA2", "CRC32", "FPHP", "ASIMDHP",
    "ASIMDRDM", "ATOMICS", "JSCVT", "FCMA", "LRCPC", "DCPOP", "SHA3", "SM3", "SM4", "ASIMDDP",
    "SHA512", "SVE", "CPUID"))
MODEL_PREFIX = "CUSTOM_ARM_CPU_MODEL_"
HWCAP_PREFIX = "CUSTOM_ARM_CPU_HWCAP_"
CUSTOM = re.compile(r"^CUSTOM_[A-Z0-9_]+$")     # placement's CUSTOM_TRAIT_PATTERN
MAX_LENGTH = 255
# nova/compute/provider_config.py providerIdentification uuid pattern
_UUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")


def _custom(prefix: str, name: str, what: str) -> str:
    trait = prefix + re.sub(r"[^A-Z0-9]", "_", name.upper())
    if not CUSTOM.match(trait) or len(trait) > MAX_LENGTH:
        raise DataError(f"{what} {name}: no placement trait can name it ({trait[:80]}...: "
                        f"CUSTOM_ and [A-Z0-9_], at most {MAX_LENGTH} characters)")
    return trait


def model_trait(name: str) -> str:
    """``neoverse-n1-v1`` -> ``CUSTOM_ARM_CPU_MODEL_NEOVERSE_N1_V1``."""
    return _custom(MODEL_PREFIX, name, "CPU model")


def feature_trait(hwcap: str) -> str:
    """The os-traits name where there is one, else a custom trait."""
    if hwcap.upper() in OS_TRAITS_AARCH64:
        return "HW_CPU_AARCH64_" + hwcap.upper()
    return _custom(HWCAP_PREFIX, hwcap, "feature")


def traits(models: Sequence[str], features: Sequence[str]) -> list[str]:
    """The traits of a host that runs *models* and whose host-passthrough
    guests have the hwcaps *features*: models first, each list sorted.

    :raise DataError: two models whose names differ only where a trait
        cannot (case, '.', '-', '+'): placement could not tell them apart.
    """
    seen: dict[str, str] = {}
    for name in models:
        t = model_trait(name)
        if t in seen:
            raise DataError(f"CPU models {seen[t]} and {name} both become trait {t}: "
                            f"rename one")
        seen[t] = name
    return sorted(seen) + sorted({feature_trait(f) for f in features})


def provider_yaml(trait_names: Sequence[str], header: Sequence[str] = (),
                  provider: str = "$COMPUTE_NODE") -> str:
    """Nova's provider config file giving the *provider* (a UUID, or every
    compute node of the service) the custom traits among *trait_names*
    (Nova refuses standard ones there)."""
    if provider != "$COMPUTE_NODE" and not _UUID.fullmatch(provider):
        raise DataError(f"'{provider}' is not a resource provider UUID (or $COMPUTE_NODE)")
    custom = [t for t in trait_names if CUSTOM.match(t)]
    lines = [f"# {h}" if h else "#" for h in header]
    lines += ["meta:", "  schema_version: '1.0'", "providers:",
              "  - identification:", f"      uuid: '{provider}'", "    traits:"]
    lines += ["      additional:" + ("" if custom else " []")]
    lines += [f"        - {t}" for t in custom]
    return "".join(line + "\n" for line in lines)
