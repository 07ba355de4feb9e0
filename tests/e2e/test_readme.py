"""The README stays true to the code: every endpoint and every setting is documented, links resolve."""

from __future__ import annotations

import re
from pathlib import Path

import keygate.config
from keygate.api.endpoints import ENDPOINTS

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def table_names(text: str) -> set[str]:
    """The first-column names of every Markdown table row: | `Name` | ..."""
    return set(re.findall(r"^\| `([^`]+)` \|", text, re.MULTILINE))


def test_every_endpoint_is_in_the_endpoint_table() -> None:
    missing = set(ENDPOINTS) - table_names(README)
    assert not missing, f"README's endpoint table lacks {sorted(missing)}"


def test_every_setting_is_in_the_configuration_table() -> None:
    source = Path(keygate.config.__file__).read_text() + (ROOT / "src/keygate/service/container.py").read_text()
    variables = set(re.findall(r"KEYGATE_[A-Z0-9_]+", source))
    assert "KEYGATE_PREVIOUS_MASTER_KEYS" in variables
    missing = variables - table_names(README)
    assert not missing, f"README's configuration table lacks {sorted(missing)}"


def test_quickstart_commands_and_sections() -> None:
    for text in ("make run", "make test", "make bench", "## Web console", "## Quickstart"):
        assert text in README


def test_relative_links_resolve() -> None:
    for target in re.findall(r"\]\(((?!https?:)[^)#]+)\)", README):
        assert (ROOT / target).exists(), f"README links to missing {target}"
