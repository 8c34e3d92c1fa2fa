"""Write the pinned OCSF JSON Schemas the OCSF encoder's tests validate against.

Run from the repository root with the dev extra installed:
    .venv/bin/python tests/data/ocsf/make_schemas.py
The test suite regenerates them in memory and fails when the committed files differ.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VERSION = "1.8.0"
# Every event the encoder writes declares exactly these profiles in metadata.profiles.
PROFILES = ["cloud"]
CLASSES = ["entity_management", "authentication", "base_event"]
HERE = Path(__file__).parent / VERSION


def _dump(document: Any) -> str:
    return json.dumps(document, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def _enum_captions(attributes: dict[str, Any]) -> dict[str, Any]:
    """Each enum attribute that has a caption sibling: the sibling's name and the captions."""
    found = {}
    for name, attribute in attributes.items():
        if attribute.get("enum") and attribute.get("sibling"):
            found[name] = {
                "sibling": attribute["sibling"],
                "captions": {key: item.get("caption") for key, item in attribute["enum"].items()},
            }
    return found


def build() -> dict[str, str]:
    """File name -> text of every file this script owns under tests/data/ocsf/<VERSION>/."""
    from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

    export = get_ocsf_schema(VERSION)
    generator = OcsfJsonSchemaEmbedded(export)
    files = {}
    objects: set[str] = set()
    for name in CLASSES:
        schema = generator.get_class_schema(name, PROFILES)
        objects.update(schema.get("$defs", {}))
        files[f"{name}.json"] = _dump(schema)
    # $defs names are object names with "/" (extension objects) written as "_".
    by_slug = {name.replace("/", "_"): name for name in export["objects"]}
    # The compiled JSON Schemas keep enum values but drop their captions; the tests also check
    # that every `*_name`/`severity`/`status`/`type` string matches the caption of its id.
    captions = {
        "version": export["version"],
        "profiles": PROFILES,
        "classes": {
            name: {
                "uid": export["classes"][name]["uid"],
                "attributes": _enum_captions(export["classes"][name]["attributes"]),
            }
            for name in CLASSES
        },
        "objects": {
            slug: _enum_captions(export["objects"][by_slug[slug]]["attributes"])
            for slug in sorted(objects)
        },
    }
    files["captions.json"] = _dump(captions)
    return files


def main() -> None:
    """Write the files."""
    HERE.mkdir(parents=True, exist_ok=True)
    for name, text in build().items():
        (HERE / name).write_text(text, encoding="utf-8")
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
