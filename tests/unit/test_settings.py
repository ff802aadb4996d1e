import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_settings_read_lookalike_environment_variables(monkeypatch):
    monkeypatch.setenv("LOOKALIKE_BATCH_SIZE", "8")
    monkeypatch.setenv("LOOKALIKE_PRECISION", "bfloat16")
    settings = Settings()
    assert settings.batch_size == 8
    assert settings.precision == "bfloat16"


def test_invalid_setting_is_refused_with_its_name(monkeypatch):
    monkeypatch.setenv("LOOKALIKE_PRECISION", "int8")
    with pytest.raises(ValidationError, match="precision"):
        Settings()


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_readme_lists_every_setting_with_its_default(name):
    row = re.search(rf"^\| `LOOKALIKE_{name.upper()}` \| ([^|]*) \|", README, re.MULTILINE)
    assert row, f"README has no row for LOOKALIKE_{name.upper()}"
    default = Settings.model_fields[name].default
    shown = str(default).lower() if isinstance(default, bool) else str(default)
    assert row.group(1) == ("unset" if default is None else f"`{shown}`")
