"""Write charts/sidecarless/README.md from the chart's values.yaml (`make chart-docs`).

Every value documented with a `# -- text` comment right above it gets a row: its dotted
path, its default and the text. tests/chart checks that the README is current.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parents[1] / "charts" / "sidecarless"
_KEY = re.compile(r"^(\s*)([A-Za-z0-9_]+):")

HEADER = """# Sidecarless Helm chart

One operator that does the kubernetes-csi controller sidecars' job (external-provisioner,
external-attacher, external-resizer, external-snapshotter's csi-snapshotter and the
snapshot-controller) for many CSI drivers. See the project's README for the whole picture.

```sh
helm install sidecarless charts/sidecarless --namespace sidecarless-system --create-namespace
kubectl get driverendpoints
```

The CRDs are templates: `crds.enabled` installs them, `crds.keep` (default) leaves them and
every DriverEndpoint in place on `helm uninstall`. `helm test <release>` runs
`sidecarless status` as the operator's ServiceAccount.

## Values

This table is generated from `values.yaml` by `make chart-docs`; do not edit it by hand.

| key | default | description |
|---|---|---|
"""


def documented_values(text: str) -> list[tuple[str, str]]:
    """(dotted key, description) for every key with a `# --` comment above it, in file order."""
    rows: list[tuple[str, str]] = []
    path: list[tuple[int, str]] = []
    pending: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = [stripped.removeprefix("# --").strip()]
            continue
        if stripped.startswith("#") and pending:
            pending.append(stripped.lstrip("#").strip())
            continue
        match = _KEY.match(line)
        if match is None:
            continue
        indent, key = len(match.group(1)), match.group(2)
        path = [(i, k) for i, k in path if i < indent] + [(indent, key)]
        if pending:
            rows.append((".".join(k for _, k in path), " ".join(pending)))
            pending = []
    return rows


def _default(values: object, dotted: str) -> str:
    for part in dotted.split("."):
        assert isinstance(values, dict)
        values = values[part]
    return json.dumps(values, separators=(", ", ": "))


def render() -> str:
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    rows = [f"| `{key}` | `{_default(values, key)}` | {description} |" for key, description in documented_values(text)]
    return HEADER + "\n".join(rows) + "\n"


def main() -> int:
    target = CHART / "README.md"
    target.write_text(render())
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
