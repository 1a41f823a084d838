"""Who owns which field: the part of an object a field manager set (from its managedFields),
and taking back what a finished rollout changed, so the next deploy is not a conflict.
"""

from __future__ import annotations

import copy
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass


def extract(obj: dict[str, Any], manager: str) -> dict[str, Any]:
    """The fields of ``obj`` that ``manager`` owns through Apply (client-go's Extract...)."""
    for entry in obj["metadata"].get("managedFields") or []:
        if entry.get("manager") == manager and entry.get("operation") == "Apply" \
                and not entry.get("subresource"):
            owned = _owned(obj, entry.get("fieldsV1") or {})
            return owned if isinstance(owned, dict) else {}
    return {}


def _owned(value: Any, fields: dict[str, Any]) -> Any:
    """``value`` filtered to a managedFields (fieldsV1) trie: f:field, k:{key}, v:value."""
    children = {key: sub for key, sub in fields.items() if key != "."}
    if not children:
        return copy.deepcopy(value)  # a leaf, or a map/list owned as a whole
    if isinstance(value, dict):
        return {key[2:]: _owned(value[key[2:]], sub) for key, sub in children.items()
                if key.startswith("f:") and key[2:] in value}
    if isinstance(value, list):
        kept = []
        for item in value:
            for key, sub in children.items():
                if key.startswith("k:") and isinstance(item, dict) and all(
                        item.get(k) == v for k, v in json.loads(key[2:]).items()):
                    kept.append(_owned(item, sub))
                elif key.startswith("v:") and json.loads(key[2:]) == item:
                    kept.append(copy.deepcopy(item))
        return kept
    return copy.deepcopy(value)


