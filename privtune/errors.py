"""Errors privtune raises for problems the user must fix. Each message names the cause and the fix."""


class PrivtuneError(Exception):
    """Base class: a problem with the user's input or setup (printed without a traceback by the CLI)."""


class PrivacyError(PrivtuneError):
    """Training as asked would not be differentially private (or not provably so): privtune refuses."""


class UnsupportedModuleError(PrivacyError):
    """A module holds trainable parameters whose per-example gradients privtune cannot compute."""


class AccountingError(PrivtuneError):
    """Bad accounting input: impossible target epsilon, delta too large, sample rate out of range, ..."""


class DataError(PrivtuneError):
    """Malformed or empty data."""
