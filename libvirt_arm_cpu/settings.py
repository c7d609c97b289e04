"""The settings file, ``/etc/libvirt-arm-cpu.conf`` (INI).

::

    [hook]
    # enforce: refuse a start, restore or incoming migration whose CPU this
    #          host cannot present; warn: log it and go on; off: do nothing
    mode = enforce
    # the host profile the hook checks against; re-probed when stale
    profile = /var/cache/libvirt-arm-cpu/host.xml
    # auto: probe again when the cached profile is stale; never: use it as it
    # is (a profile made elsewhere, e.g. by 'libvirt-arm-cpu import')
    refresh = auto
    # also ask KVM itself (the helper's try-apply) before a start
    try_apply = yes
    # auto: syslog when /dev/log exists, else stderr
    log = auto
    # the resident checker's socket ('libvirt-arm-cpu hook serve'): the hook
    # asks it, when it runs, to check a CPU it has not allowed before; none:
    # never ask (the hook checks by itself, as it does when none runs)
    checker = /run/libvirt-arm-cpu/checker.sock

    [models]
    # where cpu-baseline --save puts CPU models, and translate finds them
    dir = /var/lib/libvirt-arm-cpu/models

``LIBVIRT_ARM_CPU_CONFIG`` names another file (``hook install --config``
bakes one into the hook).  A missing file means the defaults.
"""

from __future__ import annotations

import os

from libvirt_arm_cpu.errors import ParseError

__all__ = ["Settings", "load", "DEFAULT_PATH", "DEFAULT_CHECKER"]

DEFAULT_PATH = "/etc/libvirt-arm-cpu.conf"
DEFAULT_CHECKER = "/run/libvirt-arm-cpu/checker.sock"
MODES = ("enforce", "warn", "off")


class Settings:
    """The settings, defaults where the file says nothing.

    A plain class, not a dataclass like the rest: the hook reads it on every
    domain start, and a start whose verdict it remembers (host.verdicts)
    must not pay for importing dataclasses (6 ms).
    """

    __slots__ = ("mode", "profile", "refresh", "try_apply", "log", "models_dir", "path",
                 "checker")

    def __init__(self, mode: str = "enforce",
                 profile: str = "/var/cache/libvirt-arm-cpu/host.xml", refresh: bool = True,
                 try_apply: bool = True, log: str = "auto",
                 models_dir: str = "/var/lib/libvirt-arm-cpu/models", path: str = "",
                 checker: str = DEFAULT_CHECKER) -> None:
        self.mode = mode
        self.profile = profile
        self.refresh = refresh
        self.try_apply = try_apply
        self.log = log
        self.models_dir = models_dir
        self.path = path
        self.checker = checker      # "": none

    def as_dict(self) -> dict[str, str | bool]:
        return {k: getattr(self, k) for k in self.__slots__}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Settings) and self.as_dict() == other.as_dict()

    def __repr__(self) -> str:
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items()) + ")"


CACHE_ENV = "LIBVIRT_ARM_CPU_CACHE_DIR"     # a directory; "" or "none" switches the caches off


def cache_dir(profile: str | None = None) -> str:
    """Where the caches of fleet commands live (the profile cache, the
    compiled knowledge base): ``LIBVIRT_ARM_CPU_CACHE_DIR``, else
    ``profiles/`` beside the settings' host profile (*profile*, else read
    from the settings: ``/var/cache/libvirt-arm-cpu/profiles``); "" (no
    cache) when the variable is empty or ``none``.

    :raise ParseError: (*profile* None) the settings file does not read.
    """
    env = os.environ.get(CACHE_ENV)
    if env is not None:
        return "" if env.strip().lower() in ("", "none", "off") else env
    if profile is None:
        profile = load().profile
    return os.path.join(os.path.dirname(os.path.abspath(profile)), "profiles")


def load(path: str | None = None) -> Settings:
    """Read the settings; defaults where the file or a key is missing.

    :raise ParseError: a file that does not parse, or a value out of range.
    """
    path = path or os.environ.get("LIBVIRT_ARM_CPU_CONFIG") or DEFAULT_PATH
    defaults = Settings()
    models_env = os.environ.get("LIBVIRT_ARM_CPU_MODELS_DIR")
    if models_env:
        defaults = Settings(models_dir=models_env)
    if not os.path.exists(path):
        return Settings(models_dir=defaults.models_dir, path=path)
    try:
        with open(path, encoding="utf-8") as fh:
            sections = _plain_sections(fh.read())
    except (OSError, UnicodeDecodeError):
        sections = None         # configparser's reading below says what is wrong
    if sections is None:
        sections = _configparser_sections(path)
    hook = sections.get("hook", {})
    models = sections.get("models", {})

    def choice(key: str, allowed: tuple[str, ...], default: str) -> str:
        value = hook.get(key, default).strip().lower()
        if value not in allowed:
            raise ParseError(path, None, f"[hook] {key} = {value}: must be one of "
                             f"{', '.join(allowed)}")
        return value

    return Settings(
        mode=choice("mode", MODES, defaults.mode),
        profile=hook.get("profile", defaults.profile).strip(),
        refresh=choice("refresh", ("auto", "never"), "auto") == "auto",
        try_apply=choice("try_apply", ("yes", "no"), "yes") == "yes",
        log=choice("log", ("auto", "syslog", "stderr"), defaults.log),
        models_dir=models.get("dir", defaults.models_dir).strip(),
        path=path,
        checker=_checker(hook.get("checker", DEFAULT_CHECKER)))


def _checker(value: str) -> str:
    """The checker's socket path; "" for none."""
    value = value.strip()
    return "" if value.lower() in ("", "none", "off", "no") else value


def _configparser_sections(path: str) -> dict[str, dict[str, str]]:
    """The file's sections as :mod:`configparser` reads them (what the
    settings file is defined by), its DEFAULT section merged into each.

    :raise ParseError: a file that cannot be read or does not parse.
    """
    import configparser
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as fh:
            parser.read_file(fh)
    except (OSError, UnicodeDecodeError) as err:
        raise ParseError(path, None, f"cannot read: {err}") from None
    except configparser.Error as err:
        line = getattr(err, "lineno", None)
        raise ParseError(path, line, f"not a valid settings file: "
                         f"{str(err).splitlines()[0]}") from None
    return {name: dict(parser[name]) for name in parser.sections()}


def _plain_sections(text: str) -> dict[str, dict[str, str]] | None:
    """The sections of a settings file in the plain form (``[section]``
    headers, ``key = value`` lines, comments and blank lines, nothing
    indented, no name twice, no DEFAULT section), exactly as configparser
    reads them; None for anything else, which configparser then reads (and
    reports).  The hook reads the settings on every domain start, and
    importing configparser costs it about a millisecond."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.split("\n"):      # text mode: every line ending is \n
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue                    # blank, or a comment (configparser: wherever it starts)
        if line[0].isspace():
            return None                 # a continuation line, or an indented name
        if stripped[0] == "[":
            # configparser: "[" name "]", the name up to the last "]"
            end = stripped.rfind("]")
            name = stripped[1:end]
            if end != len(stripped) - 1 or not name or name in sections or name == "DEFAULT":
                return None
            current = sections[name] = {}
            continue
        # "name = value" or "name: value", split at the first of either
        cut = min((i for i in (stripped.find("="), stripped.find(":")) if i >= 0), default=-1)
        key = stripped[:cut].rstrip().lower()
        if current is None or cut < 0 or not key or key in current:
            return None
        current[key] = stripped[cut + 1:].strip()
    return sections
