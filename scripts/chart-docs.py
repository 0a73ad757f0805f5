#!/usr/bin/env python3
"""Keeps a chart's values.yaml, values.schema.json and README values table in step.

    scripts/chart-docs.py charts/agentmesh            # rewrite the README's values table
    scripts/chart-docs.py --check charts/agentmesh    # fail on any drift (make chart-test)

Checked: every key of values.yaml is in the schema (helm lint refuses unknown keys too), every
key the schema fixes is in values.yaml with its default, every key has a description, and the
README's tables are the generated ones: the values (between `<!-- values:start -->` and
`<!-- values:end -->`) and the checkov checks skipped with their reasons (tests/checkov-skips.txt,
between `<!-- checkov:start -->` and `<!-- checkov:end -->`).
Needs PyYAML (the chart tools' Python has it).
"""

import argparse
import json
import pathlib
import sys

import yaml

START, END = "<!-- values:start -->", "<!-- values:end -->"
CHECKOV_START, CHECKOV_END = "<!-- checkov:start -->", "<!-- checkov:end -->"


def is_map(schema):
    """A free-form map (labels, resources...): its keys are data, not documented values."""
    return schema.get("type") == "object" and schema.get("additionalProperties") is not False


def rows(values, schema, path, problems):
    """(key, type, default, description) of every documented value, in values.yaml order."""
    props = schema.get("properties", {})
    for key, value in values.items():
        sub = f"{path}.{key}" if path else key
        if key not in props:
            if schema.get("additionalProperties") is False:
                problems.append(f"{sub}: in values.yaml, not in values.schema.json")
            continue
        child = props[key]
        if "description" not in child:
            problems.append(f"{sub}: no description in values.schema.json")
        if isinstance(value, dict) and value and not is_map(child):
            yield from rows(value, child, sub, problems)
        else:
            kind = child.get("type", "any")
            if isinstance(kind, list):
                kind = " or ".join(kind)
            if "enum" in child:
                kind = " \\| ".join(f"`{v}`" for v in child["enum"])
            yield sub, kind, value, child.get("description", "")
    for key in props:
        if key not in values and values != {}:
            problems.append(f"{path + '.' if path else ''}{key}: in values.schema.json, not in values.yaml")


def table(chart, problems):
    values = yaml.safe_load((chart / "values.yaml").read_text()) or {}
    schema = json.loads((chart / "values.schema.json").read_text())
    out = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    for key, kind, default, description in rows(values, schema, "", problems):
        shown = json.dumps(default, ensure_ascii=False)
        description = " ".join(description.split()).replace("|", "\\|")
        out.append(f"| `{key}` | {kind} | `{shown}` | {description} |")
    return "\n".join(out)


def checkov_table(chart):
    """The checks skipped in tests/checkov-skips.txt (`CKV_ID  reason` per line), as a table."""
    skips = chart / "tests" / "checkov-skips.txt"
    lines = [line.split(None, 1) for line in skips.read_text().splitlines() if line.strip()] if skips.exists() else []
    if not lines:
        return "None: every check passes."
    out = ["| Check | Why it is not fixed |", "|---|---|"]
    out += [f"| `{check}` | {reason.strip()} |" for check, reason in lines]
    return "\n".join(out)


def splice(text, start, end, body, problems, readme):
    """`text` with `body` between the `start` and `end` markers."""
    if start not in text or end not in text:
        problems.append(f"{readme}: no {start} ... {end} markers")
        return text
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail on drift, change nothing")
    parser.add_argument("charts", nargs="+", type=pathlib.Path)
    args = parser.parse_args()
    failed = False
    for chart in args.charts:
        problems = []
        generated = table(chart, problems)
        readme = chart / "README.md"
        text = readme.read_text()
        wanted = splice(text, START, END, generated, problems, readme)
        wanted = splice(wanted, CHECKOV_START, CHECKOV_END, checkov_table(chart), problems, readme)
        if wanted != text:
            if args.check:
                problems.append(f"{readme}: tables out of date (run {sys.argv[0]} {chart})")
            else:
                readme.write_text(wanted)
                print(f"{readme}: tables rewritten")
        for problem in problems:
            print(f"{chart}: {problem}", file=sys.stderr)
        failed |= bool(problems)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
