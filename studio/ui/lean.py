"""A lean page config and API description, so that many scripted clients can connect at once.

Every `gradio_client.Client()` and every browser tab downloads ``/config`` and every client
``/gradio_api/info``; the server rebuilds and serializes both per request, the client parses
both. Out of the box, for the studio's ~700 components and ~140 events, they were 0.74 MB and
0.41 MB, and 20 clients connecting at once all hit the client's default timeout. What made
them heavy, measured (see bench/load.py):

- Each component carried its JSON schema three times (``api_info``, ``api_info_as_input``,
  ``api_info_as_output``, identical for almost all) plus ``example_inputs``: 0.3 MB, although
  only the components of API endpoints need one copy (gradio_client reads ``api_info`` to
  find file inputs; the server builds ``/info`` from it; the page itself reads none of it).
- In ``/info``, each file-like schema (Chatbot, File, Gallery, Image) repeats the long
  docstrings of Gradio's FileData model and friends as ``description``. The schemas'
  structure, parameter names, defaults and Python types stay.
"""

from __future__ import annotations

from typing import Any

import gradio as gr


class LeanBlocks(gr.Blocks):
    """`gr.Blocks` whose served config and API description leave out what no one reads."""

    def get_config_file(self) -> Any:
        config = super().get_config_file()
        slim_config(config, api_component_ids(self))
        return config

    def get_api_info(self, all_endpoints: bool = False, page: str | None = None) -> Any:
        info = super().get_api_info(all_endpoints=all_endpoints, page=page)
        for endpoint in info.get("named_endpoints", {}).values():
            for item in endpoint.get("parameters", []) + endpoint.get("returns", []):
                if isinstance(item.get("type"), dict):
                    item["type"] = _without_descriptions(item["type"])
                py = item.get("python_type")
                if isinstance(py, dict) and len(py.get("description") or "") > 200:
                    py["description"] = ""  # a model's docstring, not a note for the caller
        return info


def api_component_ids(blocks: gr.Blocks) -> set[int]:
    """Ids of the components that are inputs or outputs of an event a client may call."""
    fns = blocks.fns.values() if isinstance(blocks.fns, dict) else blocks.fns
    ids: set[int] = set()
    for fn in fns:
        if fn.fn is None or getattr(fn, "api_visibility", "public") == "private":
            continue
        ids.update(b._id for b in list(fn.inputs) + list(fn.outputs))
    return ids


def slim_config(config: dict[str, Any], keep_api_info: set[int]) -> None:
    """In place: one schema per API component, none for the others."""
    for comp in config.get("components", []):
        info = comp.get("api_info")
        if info is None:
            continue
        if comp["id"] not in keep_api_info:
            for k in ("api_info", "api_info_as_input", "api_info_as_output", "example_inputs"):
                comp.pop(k, None)
            continue
        for k in ("api_info_as_input", "api_info_as_output"):
            if comp.get(k) == info:
                del comp[k]  # readers fall back to api_info
        comp.pop("example_inputs", None)  # /info takes examples from the component itself


def _without_descriptions(schema: Any) -> Any:
    """The schema without its ``description`` texts (model docstrings); structure kept."""
    if isinstance(schema, dict):
        return {k: _without_descriptions(v) for k, v in schema.items()
                if not (k == "description" and isinstance(v, str))
                and not (k == "additional_description" and len(str(v)) > 200)}
    if isinstance(schema, list):
        return [_without_descriptions(v) for v in schema]
    return schema
