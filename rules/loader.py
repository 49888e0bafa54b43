"""Load rule packs from YAML. A broken rule is reported with file and line and skipped; the rest load."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import ValidationError

from rules.engine import apply_overrides
from rules.model import DEVICE_KINDS, Override, Rule, RulePack
from storage.yamlsource import dotted_path, load_yaml_with_lines, nearest_line

log = logging.getLogger(__name__)

BUILTIN_PACK_DIR = Path(__file__).parent / "packs"


@dataclass(frozen=True)
class PackProblem:
    file: Path
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else str(self.file)
        return f"{where}: {self.path}: {self.message}"


@dataclass
class LoadedRules:
    rules: list[Rule] = field(default_factory=list)
    problems: list[PackProblem] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    overrides: list[Override] = field(default_factory=list)
    disabled: list[Rule] = field(default_factory=list)
    origin: dict[str, Path] = field(default_factory=dict)


def _msg(text: str) -> str:
    return text.removeprefix("Value error, ")


def builtin_pack_files() -> list[Path]:
    return sorted(BUILTIN_PACK_DIR.glob("*.yaml"))


def load_packs(files: list[Path], known_metrics: set[str] | None = None) -> LoadedRules:
    """Load packs in order. With `known_metrics` (the metric catalogue), a rule reading a metric
    outside it is refused. Overrides are checked against the rules they change."""
    out = LoadedRules()
    seen: dict[str, Path] = {}
    pending_overrides: list[tuple[Path, dict[tuple[str | int, ...], int], int, Override]] = []
    for f in files:
        out.files.append(f)
        try:
            raw, lines = load_yaml_with_lines(f.read_text(encoding="utf-8"))
        except OSError as exc:
            out.problems.append(PackProblem(f, None, "(file)", f"cannot read the rule pack: {exc.strerror}"))
            continue
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            out.problems.append(PackProblem(f, mark.line + 1 if mark else None, "(yaml)", f"not valid YAML: {exc}"))
            continue
        if not isinstance(raw, dict):
            out.problems.append(PackProblem(f, 1, "(top level)", "a rule pack is a mapping with 'pack' and 'rules'"))
            continue
        raw_rules = raw.get("rules") or []
        raw_overrides = raw.get("overrides") or []
        try:
            RulePack.model_validate({**raw, "rules": [], "overrides": []})
        except ValidationError as exc:
            for err in exc.errors():
                loc = tuple(err["loc"])
                out.problems.append(PackProblem(f, nearest_line(lines, loc), dotted_path(loc), _msg(err["msg"])))
            continue
        if not isinstance(raw_rules, list):
            out.problems.append(PackProblem(f, nearest_line(lines, ("rules",)), "rules", "must be a list of rules"))
            continue
        for i, item in enumerate(raw_rules):
            try:
                rule = Rule.model_validate(item)
            except ValidationError as exc:
                for err in exc.errors():
                    loc = ("rules", i, *err["loc"])
                    out.problems.append(PackProblem(f, nearest_line(lines, loc), dotted_path(loc), _msg(err["msg"])))
                continue
            if rule.id in seen:
                out.problems.append(
                    PackProblem(
                        f,
                        nearest_line(lines, ("rules", i)),
                        f"rules[{i}].id",
                        f"rule id {rule.id!r} is already defined in {seen[rule.id]}",
                    )
                )
                continue
            unknown = [m for m in rule.input_metrics if m not in known_metrics] if known_metrics is not None else []
            if unknown and rule.kind not in DEVICE_KINDS:
                out.problems.append(
                    PackProblem(
                        f,
                        nearest_line(lines, ("rules", i, "expression" if rule.kind == "expression" else "metric")),
                        f"rules[{i}].metric",
                        f"unknown metric(s) {', '.join(unknown)}: not in the metric catalogue; check the spelling "
                        "or add them under metrics: in the config",
                    )
                )
                continue
            seen[rule.id] = f
            out.origin[rule.id] = f
            (out.rules if rule.enabled else out.disabled).append(rule)
        if not isinstance(raw_overrides, list):
            out.problems.append(
                PackProblem(f, nearest_line(lines, ("overrides",)), "overrides", "must be a list of overrides")
            )
            continue
        for i, item in enumerate(raw_overrides):
            try:
                override = Override.model_validate(item)
            except ValidationError as exc:
                for err in exc.errors():
                    loc = ("overrides", i, *err["loc"])
                    out.problems.append(PackProblem(f, nearest_line(lines, loc), dotted_path(loc), _msg(err["msg"])))
                continue
            pending_overrides.append((f, lines, i, override))
    by_id = {r.id: r for r in out.rules + out.disabled}
    for f, lines, i, override in pending_overrides:
        ok = True
        for rule_id in override.rules:
            target = by_id.get(rule_id)
            where = nearest_line(lines, ("overrides", i, "rules"))
            if target is None:
                out.problems.append(
                    PackProblem(f, where, f"overrides[{i}].rules", f"no rule {rule_id!r} is loaded; check the id")
                )
                ok = False
                continue
            try:
                apply_overrides(target, [override])
            except ValidationError as exc:
                for err in exc.errors():
                    loc = ("overrides", i, "set", *err["loc"])
                    out.problems.append(
                        PackProblem(
                            f,
                            nearest_line(lines, loc),
                            dotted_path(loc),
                            f"{_msg(err['msg'])} (when applied to rule {rule_id})",
                        )
                    )
                ok = False
        if ok:
            out.overrides.append(override)
    for p in out.problems:
        log.error("rule pack problem (rule skipped, the others still run): %s", p)
    return out
