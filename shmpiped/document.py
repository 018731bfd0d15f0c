"""Editable pipeline documents: plain mappings of the YAML format (shmpipeline's ``document``).

A document is what an editor holds while a pipeline is being changed: a
``dict`` with the four section lists (and ``namespace`` when set), free to
be incomplete or invalid until ``PipelineConfig.from_dict`` checks it.  This
module creates, copies, completes, loads, saves and serialises documents and
turns a loaded ``PipelineConfig`` back into one.  Reading and parsing YAML go
through ``config_loading``, like every pipeline file.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .config import PipelineConfig
from .config_entries import plain_data
from .config_loading import parse_yaml, read_config_text
from .errors import ConfigValidationError

__all__ = [
    "Document",
    "clone_document",
    "config_to_document",
    "default_document",
    "document_to_yaml",
    "load_document",
    "normalize_document",
    "parse_inline_yaml",
    "save_document",
]

Document = dict[str, Any]

SECTIONS = ("shared_memory", "sources", "kernels", "sinks")


def default_document() -> Document:
    """An empty document: the four sections, each an empty list."""
    return {section: [] for section in SECTIONS}


def clone_document(document: Mapping[str, Any]) -> Document:
    """A deep copy of ``document`` that can be edited freely."""
    return copy.deepcopy(dict(document))


def normalize_document(document: Mapping[str, Any]) -> Document:
    """A copy of ``document`` with every missing section added as an empty list."""
    normalized = clone_document(document)
    for section in SECTIONS:
        normalized.setdefault(section, [])
    return normalized


def load_document(path: str | os.PathLike) -> Document:
    """The document in a YAML file (an empty file gives ``default_document()``)."""
    source = str(path)
    data, _ = parse_yaml(read_config_text(path), source)
    if data is None:
        return default_document()
    if not isinstance(data, Mapping):
        raise ConfigValidationError(f"pipeline config must be a mapping (in {source})")
    return normalize_document(plain_data(data))


def document_to_yaml(document: Mapping[str, Any]) -> str:
    """``document`` as YAML text, sections in the order of the file format."""
    return yaml.safe_dump(normalize_document(plain_data(document)), sort_keys=False, allow_unicode=False)


def save_document(path: str | os.PathLike, document: Mapping[str, Any]) -> None:
    """Write ``document`` to ``path`` as YAML."""
    Path(path).write_text(document_to_yaml(document), encoding="utf-8")


def parse_inline_yaml(text: str, *, fallback: Any) -> Any:
    """The value of a small YAML fragment (a field typed in an editor); ``fallback`` when empty."""
    if not text.strip():
        return copy.deepcopy(fallback)
    value, _ = parse_yaml(text)
    return copy.deepcopy(fallback) if value is None else plain_data(value)


def config_to_document(config: PipelineConfig) -> Document:
    """The document of a loaded pipeline: ``PipelineConfig.from_dict`` of it gives ``config`` back."""
    return normalize_document(config.to_dict())
