"""What a set of requirements installs, read from the shared environment's package metadata.

Used to tell the server's packages (the ``server`` extra and everything it pulls in) from the SDK's
(``httpx`` and what it pulls in), by the names they are imported under.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from importlib.metadata import Distribution, PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def project() -> dict[str, object]:
    return tomllib.loads(PYPROJECT.read_text())["project"]  # type: ignore[no-any-return]


def base_requirements() -> list[str]:
    return list(project()["dependencies"])  # type: ignore[call-overload]


def extra_requirements(extra: str) -> list[str]:
    return list(project()["optional-dependencies"][extra])  # type: ignore[index]


def names(requirements: Iterable[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def installed_closure(requirements: Iterable[str]) -> dict[str, Distribution]:
    """Every installed distribution that ``requirements`` bring in, extras and markers included."""
    found: dict[str, Distribution] = {}
    done: set[tuple[str, frozenset[str]]] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name, extras = canonicalize_name(req.name), frozenset(req.extras)
        if (name, extras) in done:
            continue
        done.add((name, extras))
        try:
            dist = found.get(name) or distribution(name)
        except PackageNotFoundError:
            continue  # not for this platform or Python (its marker said so), or optional
        found[name] = dist
        for line in dist.requires or []:
            sub = Requirement(line)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras | {""}):
                todo.append(sub)
    return found


def import_names(dist: Distribution) -> set[str]:
    """The top-level modules and packages a distribution installs."""
    top_level = dist.read_text("top_level.txt")
    if top_level:
        return {line.strip() for line in top_level.splitlines() if line.strip()}
    result: set[str] = set()
    for file in dist.files or []:
        first = file.parts[0]
        if first in {"..", "__pycache__"} or first.endswith((".dist-info", ".data", ".pth")):
            continue
        if len(file.parts) == 1:
            if first.endswith((".py", ".so", ".pyd")):
                result.add(first.split(".", 1)[0])
        elif first.isidentifier():
            result.add(first)
    return result


def modules_of(dists: Iterable[Distribution]) -> set[str]:
    return {name for dist in dists for name in import_names(dist)}


def server_only_modules() -> set[str]:
    """Modules the server extra brings that the SDK's own requirements do not."""
    server = installed_closure(extra_requirements("server"))
    sdk = installed_closure(base_requirements())
    return modules_of(server.values()) - modules_of(sdk.values()) - {"keygate"}
