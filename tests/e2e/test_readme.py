"""The README stays true to the code: every endpoint and every setting is documented, links resolve."""

from __future__ import annotations

import re
from pathlib import Path

from keygate.api.endpoints import ENDPOINTS
from keygate.config import READ_ELSEWHERE, Settings, env_name

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def table_names(text: str) -> set[str]:
    """The first-column names of every Markdown table row: | `Name` | ..."""
    return set(re.findall(r"^\| `([^`]+)` \|", text, re.MULTILINE))


def test_every_endpoint_is_in_the_endpoint_table() -> None:
    missing = set(ENDPOINTS) - table_names(README)
    assert not missing, f"README's endpoint table lacks {sorted(missing)}"


def configuration_table() -> dict[str, str]:
    """Variable → its Default cell, from the README's configuration table."""
    section = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `(KEYGATE_[A-Z0-9_]+)` \| ([^|]*) \|", section, re.MULTILINE))


def shown(default: object) -> str | None:
    """A default as the README writes it, or None for "no value" (the cell then says unset)."""
    if default in (None, "", ()):
        return None
    if isinstance(default, bool):
        return "true" if default else "false"
    return str(default)


def test_configuration_table_lists_every_setting_with_its_real_default() -> None:
    table = configuration_table()
    model = {env_name(name): info.default for name, info in Settings.model_fields.items()}
    assert set(table) == set(model) | set(READ_ELSEWHERE), (
        f"not in the README: {sorted(set(model) | set(READ_ELSEWHERE) - set(table))}; "
        f"in the README but no setting: {sorted(set(table) - set(model) - set(READ_ELSEWHERE))}")
    for variable, cell in table.items():
        cell = cell.strip()
        written = re.match(r"`([^`]*)`", cell)
        expected = shown(model.get(variable))
        if expected is None:
            assert written is None and cell.startswith("unset"), f"{variable}: the README says {cell!r}, the default is unset"
        else:
            assert written and written.group(1) == expected, f"{variable}: the README says {cell!r}, the default is {expected!r}"


def test_every_variable_the_code_names_is_a_setting_or_read_elsewhere() -> None:
    """A KEYGATE_ name written in the code must be in the table (and so not refused as unknown)."""
    source = "".join(p.read_text() for p in (ROOT / "src/keygate").rglob("*.py"))
    variables = set(re.findall(r"KEYGATE_[A-Z0-9_]*[A-Z0-9]", source)) - {"KEYGATE_TEST"}
    assert "KEYGATE_PREVIOUS_MASTER_KEYS" in variables
    missing = variables - set(configuration_table())
    assert not missing, f"README's configuration table lacks {sorted(missing)}"


def test_quickstart_commands_and_sections() -> None:
    for text in ("make run", "make test", "make bench", "## Web console", "## Quickstart"):
        assert text in README


def test_relative_links_resolve() -> None:
    for target in re.findall(r"\]\(((?!https?:)[^)#]+)\)", README):
        assert (ROOT / target).exists(), f"README links to missing {target}"
