"""Checks real responses against the service's own OpenAPI document."""

from __future__ import annotations

import re
from typing import Any

import httpx
import jsonschema
from openapi_spec_validator import validate


class OpenApiChecker:
    """Validates the document once, then every response handed to `check` against its declared schema."""

    def __init__(self, document: dict[str, Any]) -> None:
        validate(document)
        self.document = document
        self.violations: list[str] = []
        self.checked = 0

    def _operation(self, path: str, method: str) -> dict[str, Any] | None:
        """The operation of `path`: its own entry, else one whose template (`/api/v1/events/{event_id}`) matches."""
        paths: dict[str, dict[str, Any]] = self.document["paths"]
        if path in paths:
            return paths[path].get(method)
        for template, operations in paths.items():
            pattern = re.sub(r"\\\{[^/]+\\\}", "[^/]+", re.escape(template))
            if re.fullmatch(pattern, path):
                return operations.get(method)
        return None

    def check(self, response: httpx.Response) -> None:
        response.read()
        path = response.request.url.path
        method = response.request.method.lower()
        operation = self._operation(path, method)
        where = f"{method.upper()} {path} -> {response.status_code}"
        if operation is None:
            if response.status_code not in (404, 405):
                self.violations.append(f"{where}: undocumented operation")
            return
        declared = operation["responses"].get(str(response.status_code))
        if declared is None:
            self.violations.append(f"{where}: undocumented status")
            return
        for header in declared.get("headers", {}):
            if header == "Retry-After" and header.lower() not in response.headers:
                self.violations.append(f"{where}: missing {header}")
        content_type = response.headers.get("content-type", "").split(";")[0]
        media = declared.get("content", {})
        if content_type not in media:
            self.violations.append(f"{where}: content type {content_type!r} not in {sorted(media)}")
            return
        schema = media[content_type].get("schema")
        if schema is None or not content_type.endswith("json"):
            self.checked += 1
            return
        wrapped = {**schema, "components": self.document["components"]}
        try:
            jsonschema.validate(response.json(), wrapped, cls=jsonschema.Draft202012Validator)
        except jsonschema.ValidationError as error:
            self.violations.append(f"{where}: {error.message} at {list(error.absolute_path)}")
        self.checked += 1
