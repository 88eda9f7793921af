"""The panel's unit tests (extension/test) read the server's vocabulary from a fixture:
it must stay what ``GET /api/states`` answers."""

from __future__ import annotations

import json
from pathlib import Path

from panda_lab.model import vocabulary

FIXTURE = Path(__file__).resolve().parents[2] / "extension/test/fixtures/vocabulary.json"


def test_the_panels_vocabulary_fixture_is_the_servers():
    assert json.loads(FIXTURE.read_text()) == vocabulary()
