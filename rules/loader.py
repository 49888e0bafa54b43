"""Load rule packs from YAML. A broken rule is reported with file and line and skipped; the rest load."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import ValidationError

from rules.model import Rule, RulePack
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


def builtin_pack_files() -> list[Path]:
    return sorted(BUILTIN_PACK_DIR.glob("*.yaml"))


def load_packs(files: list[Path]) -> LoadedRules:
    out = LoadedRules()
    seen: dict[str, Path] = {}
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
        try:
            RulePack.model_validate({**raw, "rules": []})
        except ValidationError as exc:
            for err in exc.errors():
                loc = tuple(err["loc"])
                out.problems.append(PackProblem(f, nearest_line(lines, loc), dotted_path(loc), err["msg"]))
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
                    out.problems.append(PackProblem(f, nearest_line(lines, loc), dotted_path(loc), err["msg"]))
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
            seen[rule.id] = f
            if rule.enabled:
                out.rules.append(rule)
    for p in out.problems:
        log.error("rule pack problem (rule skipped, the others still run): %s", p)
    return out
