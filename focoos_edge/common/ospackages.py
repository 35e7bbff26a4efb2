"""System package names per distribution, read from ``os-packages.tsv`` (the table the install
scripts use too), so a hint such as "install libturbojpeg" names this system's package."""

from __future__ import annotations

import shlex
from importlib import resources
from pathlib import Path

OS_RELEASE = Path("/etc/os-release")


def os_family(os_release: str) -> str | None:
    """``"debian"`` or ``"ubuntu"`` for the text of an os-release file (ID, then ID_LIKE), else None."""
    values: dict[str, str] = {}
    for line in os_release.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() in ("ID", "ID_LIKE"):
            values[key.strip()] = " ".join(shlex.split(value, comments=True))
    for word in (values.get("ID", "") + " " + values.get("ID_LIKE", "")).split():
        if word == "ubuntu":
            return "ubuntu"
        if word in ("debian", "raspbian"):
            return "debian"
    return None


def package_names(family: str, uses: tuple[str, ...]) -> dict[str, str]:
    """``{role: package}`` of the table rows whose use is in ``uses``, for ``family``."""
    table = resources.files("focoos_edge.common").joinpath("os-packages.tsv").read_text(encoding="utf-8")
    column, names = None, {}
    for line in table.splitlines():
        fields = line.split()
        if fields[:2] == ["#", "role"]:
            column = fields.index(family) - 1 if family in fields else None
        elif fields and not line.startswith("#") and column is not None and fields[1] in uses:
            names[fields[0]] = fields[column]
    return names


def package_for(role: str, os_release: Path = OS_RELEASE) -> str:
    """This system's package for ``role``; on an unknown system, both families' names."""
    try:
        family = os_family(os_release.read_text(encoding="utf-8"))
    except OSError:
        family = None
    uses = ("runtime", "install", "demo", "test")
    if family is not None:
        return package_names(family, uses)[role]
    return " or ".join(dict.fromkeys(package_names(fam, uses)[role] for fam in ("debian", "ubuntu")))
