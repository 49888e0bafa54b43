"""YAML with line numbers, so config and rule-pack errors can say where they are.

Lives in storage because every stage may import storage (it is the shared base of types).
"""

from __future__ import annotations

from typing import Any

import yaml

Loc = tuple[str | int, ...]


class _LineLoader(yaml.SafeLoader):
    """A SafeLoader that remembers the line of every mapping key and sequence item."""


def load_yaml_with_lines(text: str) -> tuple[Any, dict[Loc, int]]:
    loader = _LineLoader(text)
    try:
        node = loader.get_single_node()
        lines: dict[Loc, int] = {}

        def walk(n: yaml.Node, loc: Loc) -> Any:
            lines.setdefault(loc, n.start_mark.line + 1)
            if isinstance(n, yaml.MappingNode):
                out: dict[Any, Any] = {}
                for k, v in n.value:
                    key = loader.construct_object(k, deep=True)
                    lines[(*loc, key)] = k.start_mark.line + 1
                    out[key] = walk(v, (*loc, key))
                return out
            if isinstance(n, yaml.SequenceNode):
                return [walk(item, (*loc, i)) for i, item in enumerate(n.value)]
            return loader.construct_object(n, deep=True)

        return (walk(node, ()) if node is not None else None), lines
    finally:
        loader.dispose()


def nearest_line(lines: dict[Loc, int], loc: Loc) -> int | None:
    for cut in range(len(loc), -1, -1):
        if loc[:cut] in lines:
            return lines[loc[:cut]]
    return None


def dotted_path(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"
