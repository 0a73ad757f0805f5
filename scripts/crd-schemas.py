#!/usr/bin/env python3
"""Converts CustomResourceDefinition YAML files into JSON schemas that kubeconform reads.

Usage: crd-schemas.py [--no-strict] OUT_DIR CRD.yaml...

For every CRD document and every version with an openAPIV3Schema it writes
OUT_DIR/<group>/<kind>_<version>.json (lower case), the layout of kubeconform's
-schema-location 'OUT_DIR/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json'.

Like kubeconform's openapi2jsonschema.py, and a little stricter about OpenAPI's quirks:
- strict (the default): every object schema with `properties` and neither
  `additionalProperties` nor `x-kubernetes-preserve-unknown-fields` gets
  `additionalProperties: false`, the root too (apiVersion, kind and metadata are added to the
  root's properties when a CRD leaves them out), so an unknown field is refused;
- `format: int-or-string` becomes a oneOf string/integer;
- `nullable: true` lets null through (JSON Schema has no `nullable`).
Needs PyYAML only.
"""

import json
import os
import sys

import yaml

SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")
SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
SCHEMA_SINGLE = ("items", "additionalProperties", "not", "additionalItems", "contains")


def convert(node, strict):
    """Returns a converted copy of one schema node (and of every schema below it)."""
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: convert(sub, strict) for name, sub in value.items()}
        elif key in SCHEMA_LISTS and isinstance(value, list):
            out[key] = [convert(sub, strict) for sub in value]
        elif key in SCHEMA_SINGLE and isinstance(value, (dict, list)):
            out[key] = [convert(s, strict) for s in value] if isinstance(value, list) else convert(value, strict)
        else:
            out[key] = value
    if out.get("format") == "int-or-string":
        rest = {k: v for k, v in out.items() if k not in ("format", "type")}
        out = {**rest, "oneOf": [{"type": "string"}, {"type": "integer"}]}
    if out.pop("nullable", False) is True:
        kind = out.get("type")
        if isinstance(kind, str):
            out["type"] = [kind, "null"]
        elif isinstance(kind, list) and "null" not in kind:
            out["type"] = kind + ["null"]
        if isinstance(out.get("enum"), list) and None not in out["enum"]:
            out["enum"] = out["enum"] + [None]
        if "type" not in out:  # e.g. an int-or-string or an anyOf: null is one more choice
            out = {"anyOf": [out, {"type": "null"}]}
    if (
        strict
        and "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


# CRDs leave metadata as a bare `type: object` (the API server checks it as ObjectMeta); in
# strict mode it gets ObjectMeta's fields so that a misspelt metadata field is refused too.
_STRING = {"type": ["string", "null"]}
_STRING_MAP = {"type": ["object", "null"], "additionalProperties": _STRING}
_OBJECT_LIST = {"type": ["array", "null"], "items": {"type": "object"}}
OBJECT_META = {
    "type": "object",
    "properties": {
        "name": _STRING, "generateName": _STRING, "namespace": _STRING, "uid": _STRING,
        "resourceVersion": _STRING, "selfLink": _STRING,
        "generation": {"type": ["integer", "null"]},
        "creationTimestamp": _STRING, "deletionTimestamp": _STRING,
        "deletionGracePeriodSeconds": {"type": ["integer", "null"]},
        "labels": _STRING_MAP, "annotations": _STRING_MAP,
        "finalizers": {"type": ["array", "null"], "items": _STRING},
        "ownerReferences": _OBJECT_LIST, "managedFields": _OBJECT_LIST,
    },
}


def root_schema(schema, strict):
    schema = dict(schema)
    props = dict(schema.get("properties") or {})
    props.setdefault("apiVersion", {"type": "string"})
    props.setdefault("kind", {"type": "string"})
    metadata = props.get("metadata")
    if metadata is None or (strict and not metadata.get("properties")):
        props["metadata"] = OBJECT_META
    schema["properties"] = props
    schema.setdefault("type", "object")
    return convert(schema, strict)


def main(argv):
    strict = True
    if argv and argv[0] == "--no-strict":
        strict, argv = False, argv[1:]
    if len(argv) < 2:
        sys.exit(__doc__)
    out_dir, files = argv[0], argv[1:]
    written = 0
    for path in files:
        with open(path, encoding="utf-8") as handle:
            docs = list(yaml.safe_load_all(handle))
        for doc in docs:
            if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            group, kind = spec["group"], spec["names"]["kind"]
            for version in spec.get("versions") or []:
                schema = (version.get("schema") or {}).get("openAPIV3Schema")
                if schema is None:  # apiextensions v1beta1 kept one schema for all versions
                    schema = (spec.get("validation") or {}).get("openAPIV3Schema")
                if schema is None:
                    continue
                target = os.path.join(out_dir, group.lower(), f"{kind}_{version['name']}".lower() + ".json")
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with open(target, "w", encoding="utf-8") as handle:
                    json.dump(root_schema(schema, strict), handle, indent=1, sort_keys=True)
                    handle.write("\n")
                written += 1
    if written == 0:
        sys.exit(f"crd-schemas: no CRD with an openAPIV3Schema in {' '.join(files)}")
    print(f"crd-schemas: wrote {written} schema(s) under {out_dir}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
