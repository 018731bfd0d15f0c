"""What the built-in synthetic sources share: their parameters' checks, their streams' storage, and
one stream's ``SyntheticInputConfig`` from the parameters."""

from __future__ import annotations

import math
from typing import Any, Mapping

from shmpiped.errors import ConfigValidationError
from shmpiped.synthetic import PATTERN_PARAMETERS, SyntheticInputConfig, as_integer, is_number

STORAGES = ("cpu", "gpu")


def source_error(config, message: str) -> ConfigValidationError:
    """A configuration error of source ``config``, named with its kind."""
    return ConfigValidationError(f"source {config.name!r} ({config.kind}): {message}")


def check_parameters(config, allowed: tuple[str, ...]) -> dict:
    """``config``'s parameters: only ``allowed`` keys, ``rate_hz`` positive or null."""
    parameters = dict(config.parameters or {})
    unknown = sorted(set(parameters) - set(allowed))
    if unknown:
        raise source_error(
            config,
            f"unknown parameter(s) {', '.join(unknown)}; expected any of: {', '.join(allowed)}",
        )
    rate = parameters.get("rate_hz")
    if rate is not None and (not is_number(rate) or not rate > 0 or not math.isfinite(rate)):
        raise source_error(
            config, f"parameter rate_hz must be a positive number or null, got {rate!r}"
        )
    return parameters


def pattern_config(config, stream_name: str, parameters: Mapping[str, Any], seed_offset: int = 0):
    """The SyntheticInputConfig of one stream of a synthetic source."""
    fields = {key: parameters[key] for key in PATTERN_PARAMETERS if key in parameters}
    fields["rate_hz"] = parameters.get("rate_hz")
    try:
        if seed_offset:
            fields["seed"] = as_integer("seed", fields.get("seed", 0)) + seed_offset
        return SyntheticInputConfig(stream_name=stream_name, **fields)
    except ConfigValidationError as exc:
        raise source_error(config, str(exc)) from None


def check_storages(config, shared_memory) -> None:
    """The source's streams share one storage, CPU or GPU."""
    storages = {shared_memory[name].storage for name in config.streams}
    for storage in storages:
        if storage not in STORAGES:
            raise source_error(config, f"unsupported storage {storage!r}")
    if len(storages) > 1:
        raise source_error(config, "all streams must have the same storage")
