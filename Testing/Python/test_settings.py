"""Settings: validation reads the strategy registry; older settings files still load."""
from __future__ import annotations

import json

import pytest

from ASSFTLib import strategies
from ASSFTLib.errors import ASSFTError
from ASSFTLib.settings import Settings


def test_settings_accept_exactly_the_registered_names():
    for name in strategies.names():
        assert Settings(strategy=name).strategy == name
    for bad in ("ATSQ", "assft", "random+ssft", "", "badge"):
        with pytest.raises(ASSFTError, match="strategy"):
            Settings(strategy=bad)


def test_an_older_settings_file_with_the_empty_extra_field_still_loads(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({**Settings(budget=3).to_dict(), "extra": {}}))
    assert Settings.load(path) == Settings(budget=3)
    assert "extra" not in Settings().to_dict()
    with pytest.raises(ASSFTError, match="unknown settings: extra"):
        Settings.from_dict({"extra": {"anything": 1}})
