"""The served OpenAPI document is the committed one, and it is a valid OpenAPI 3.0 document."""
import json
import pathlib
import urllib.request

from openapi_spec_validator import validate

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_served_openapi_is_valid_and_matches_the_committed_file(server):
    with urllib.request.urlopen(f"{server.base_url}/openapi.json", timeout=10) as response:
        assert response.status == 200
        served = json.load(response)
    validate(served)
    committed = json.loads((REPO / "docs" / "openapi.json").read_text())
    assert served == committed
    # Every Graph presence operation is described.
    paths = served["paths"]
    for action in ("setPresence", "clearPresence", "setUserPreferredPresence", "clearUserPreferredPresence", "setStatusMessage"):
        assert f"/{{version}}/users/{{id}}/presence/{action}" in paths
    assert "post" in paths["/{version}/subscriptions"] and "get" in paths["/{version}/subscriptions"]
