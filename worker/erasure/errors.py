"""Errors the engine raises for input a user can correct."""


class ErasureInputError(ValueError):
    """A request the engine cannot run as given; the message says what to change."""


class ModelNotFoundError(ErasureInputError):
    """A base model that is neither a local diffusers folder nor in the local HF cache."""


class ErasureCancelled(RuntimeError):
    """The caller asked to stop; raised between steps, nothing half-written is kept."""
