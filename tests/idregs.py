"""The output of the EL1 ID-register payload (/testbed/idregs-aarch64.bin,
made by contrib/testbed/idregs_payload.py) as Python values.

The payload prints, on the nested guest's first UART::

    IDREGS BEGIN
    MIDR_EL1=0x00000000410fd0c1
    GMID_EL1=undef
    IDREGS END

and prints a new block after each system_reset.  ``parse_idregs`` gives the
registers of one complete block (the last, by default) as name -> value;
registers whose MRS was UNDEFINED are left out (``undefined`` lists them).
"""

from __future__ import annotations

import re

__all__ = ["IdregsError", "blocks", "parse_idregs", "undefined", "platform_values", "PAYLOAD",
           "TOOL"]

PAYLOAD = "/testbed/idregs-aarch64.bin"      # in the guest
TOOL = "testbed-run-idregs"                   # guest/run-idregs, on the guest's PATH

_LINE = re.compile(r"^([A-Z][A-Z0-9_]*)=(0x[0-9a-f]{16}|undef)$")


class IdregsError(ValueError):
    """No complete block, a malformed line, or a fault in the payload."""


def blocks(text: str) -> list[dict[str, int | None]]:
    """Every complete BEGIN..END block, in order; None for 'undef'."""
    out: list[dict[str, int | None]] = []
    current: dict[str, int | None] | None = None
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        lines.pop()         # a line still being written (output read while the guest runs)
    for raw in lines:
        line = raw.strip("\r\x00 ")
        if line.startswith("IDREGS FAULT"):
            raise IdregsError(f"the payload faulted: {line}")
        if line == "IDREGS BEGIN":
            current = {}
        elif line == "IDREGS END":
            if current is not None:
                out.append(current)
            current = None
        elif current is not None and line:
            m = _LINE.match(line)
            if not m:
                raise IdregsError(f"malformed payload line {line!r}")
            current[m.group(1)] = None if m.group(2) == "undef" else int(m.group(2), 16)
    return out


def _block(text: str, which: int) -> dict[str, int | None]:
    found = blocks(text)
    if not found:
        tail = " | ".join(text.strip().splitlines()[-3:])
        raise IdregsError(f"no complete 'IDREGS BEGIN' .. 'IDREGS END' block in the output ({tail!r})")
    return found[which]


def parse_idregs(text: str, which: int = -1) -> dict[str, int]:
    """Register name -> value of block ``which`` (the last by default)."""
    return {k: v for k, v in _block(text, which).items() if v is not None}


def undefined(text: str, which: int = -1) -> set[str]:
    """The registers whose MRS was UNDEFINED in block ``which``."""
    return {k for k, v in _block(text, which).items() if v is None}


def platform_values(text: str) -> dict[str, int | None]:
    """The last complete ``PLATFORM BEGIN`` .. ``END`` block after the ID
    registers (contrib/testbed/idregs_payload.py PLATFORM_READS): CNTFRQ_EL0,
    PMCR_EL0 and SVE_VL_BYTES; None for 'undef'."""
    out: dict[str, int | None] | None = None
    current: dict[str, int | None] | None = None
    for line in text.replace("\r", "").splitlines():
        if line == "PLATFORM BEGIN":
            current = {}
        elif line == "PLATFORM END" and current is not None:
            out, current = current, None
        elif current is not None:
            m = _LINE.match(line)
            if m:
                current[m.group(1)] = None if m.group(2) == "undef" else int(m.group(2), 16)
    if out is None:
        raise IdregsError("no complete 'PLATFORM BEGIN' .. 'PLATFORM END' block in the output")
    return out
