"""The exception tree of pedstream: one root, so callers can catch everything pedstream raises."""

from __future__ import annotations


class PedstreamError(Exception):
    """Root of every error pedstream raises on purpose."""


class RecordError(PedstreamError):
    """A record failed validation on its way in or out; the message says which field and why."""


class ConfigError(PedstreamError):
    """A configuration file or setting is invalid; the message names the field."""


class SourceError(PedstreamError):
    """A camera source could not be opened or stopped delivering frames."""


class StackError(PedstreamError):
    """The embedded Kafka/Redis stack could not be started, found or stopped."""
