"""Audit the installed dependencies for known vulnerabilities with pip-audit.

Fails on any known vulnerability that is not waived in .ci/audit-waivers.txt (one `ID  reason` per line).
When the vulnerability service cannot be reached (a closed network), it says so loudly and, unless
GRIDSENTRY_AUDIT_STRICT=1, does not fail: an audit that could not run is not a finding.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

WAIVERS = Path(__file__).with_name("audit-waivers.txt")


def waivers() -> dict[str, str]:
    out = {}
    for line in WAIVERS.read_text(encoding="utf-8").splitlines() if WAIVERS.exists() else []:
        line = line.strip()
        if line and not line.startswith("#"):
            vuln_id, _, reason = line.partition(" ")
            if not reason.strip():
                sys.exit(f"{WAIVERS}: waiver {vuln_id} has no written reason")
            out[vuln_id] = reason.strip()
    return out


def main() -> int:
    proc = subprocess.run(
        [sys.executable, "-m", "pip_audit", "--progress-spinner", "off", "--skip-editable", "-f", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        print(proc.stderr, file=sys.stderr)
        print("pip-audit did not produce a report (see above)", file=sys.stderr)
        return 0 if os.environ.get("GRIDSENTRY_AUDIT_STRICT") != "1" else 1
    waived = waivers()
    deps = report["dependencies"]
    skipped = [d for d in deps if d.get("skip_reason")]
    findings = [(d["name"], d["version"], v) for d in deps for v in d.get("vulns", [])]
    open_findings = [f for f in findings if f[2]["id"] not in waived and not set(f[2].get("aliases", [])) & set(waived)]
    for name, version, v in findings:
        state = "WAIVED: " + waived.get(v["id"], "") if (name, version, v) not in open_findings else "OPEN"
        print(f"{name} {version}: {v['id']} (fix: {', '.join(v.get('fix_versions', [])) or 'none'}) {state}")
    audited = len(deps) - len(skipped)
    print(
        f"dependency audit: {audited} of {len(deps)} packages audited, {len(findings)} known vulnerabilities, {len(open_findings)} open"
    )
    if skipped and audited == 0:
        print(
            "WARNING: the vulnerability service (PyPI's JSON API) could not be reached from this network, "
            "so no package was audited. Run `make security` where pypi.org is reachable.",
            file=sys.stderr,
        )
        if os.environ.get("GRIDSENTRY_AUDIT_STRICT") == "1":
            return 1
    return 1 if open_findings else 0


if __name__ == "__main__":
    sys.exit(main())
