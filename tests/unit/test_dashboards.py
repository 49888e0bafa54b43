"""The committed dashboards are what the code generates, and each one is a sound Grafana dashboard."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from grafana_foundation_sdk.models import dashboard as dm

from dashboards.generate import DASHBOARDS, OUT_DIR, main, render_all

REPO = Path(__file__).resolve().parents[2]
DATASOURCE_UID = yaml.safe_load((REPO / "dashboards/provisioning/datasources/prometheus.yaml").read_text())[
    "datasources"
][0]["uid"]
GRAFANA_MACROS = {"__rate_interval", "__interval", "__range", "__all"}


def committed() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(OUT_DIR.glob("*.json"))}


def panels(d: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in d["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def test_committed_json_is_what_the_code_generates(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert set(render_all()) == set(committed()) == {f"gridsentry-{n}.json" for n in DASHBOARDS}
    assert main(["--check"]) == 0, "dashboards/json is stale: run `make dashboards` and commit the result"
    # --check notices a hand edit.
    for name, text in render_all().items():
        (tmp_path / name).write_text(
            text.replace("gridsentry_alerts_open", "gridsentry_alerts_opened"), encoding="utf-8"
        )
    assert main(["--check", "--out", str(tmp_path)]) == 1
    assert "make dashboards" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(f"gridsentry-{n}.json" for n in DASHBOARDS))
def test_dashboard_schema(name: str):
    data = committed()[name]
    model = dm.Dashboard.from_json(data)  # the SDK's schema types accept it back
    assert model.uid == name.removesuffix(".json") and len(model.uid) <= 40
    assert data["schemaVersion"] >= 39 and data["title"] and "gridsentry" in data["tags"]
    variables = {v["name"] for v in data.get("templating", {}).get("list", [])}
    ids = [p["id"] for p in panels(data)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for p in panels(data):
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, (p["title"], pos)
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == DATASOURCE_UID, p["title"]
        assert p["targets"], f"{p['title']} has no query"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs))
        for t in p["targets"]:
            assert t["datasource"]["uid"] == DATASOURCE_UID
            used = set(re.findall(r"\$(\w+)", t["expr"]))
            assert used <= variables | GRAFANA_MACROS, (p["title"], used - variables)
            assert t["expr"].count("(") == t["expr"].count(")") and t["expr"].count("{") == t["expr"].count("}")
    for v in data.get("templating", {}).get("list", []):
        assert v["datasource"]["uid"] == DATASOURCE_UID
        assert set(re.findall(r"\$(\w+)", v["query"]["query"])) <= variables
