"""Small helpers the model-training scripts share: times as Ferrite's microseconds, where the
`ferrite` binary is, and a feature service's feature names as the definitions order them."""

import os
import tomllib
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def micros(text):
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()) * 1_000_000


def default_ferrite():
    target = os.environ.get("CARGO_TARGET_DIR") or str(Path.home() / ".cache/ferrite-target")
    for path in (Path(target) / "debug/ferrite", ROOT / "target/debug/ferrite"):
        if path.exists():
            return path
    return Path(target) / "debug/ferrite"


def service_features(features_dir, service):
    """The service's feature names in order, expanded from the definitions (view:* too)."""
    views, services = {}, {}
    for path in sorted(Path(features_dir).glob("*.toml")):
        doc = tomllib.loads(path.read_text())
        for v in doc.get("feature_view", []) + doc.get("request_view", []):
            views[v["name"]] = [f["name"] for f in v["features"]]
        for s in doc.get("feature_service", []):
            services[s["name"]] = s["features"]
    names = []
    for ref in services[service]:
        view, feature = ref.split(":")
        names.extend(views[view] if feature == "*" else [feature])
    assert len(set(names)) == len(names), "feature names must be unique"
    return names
