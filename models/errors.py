"""Typed errors. Library code raises these with a message that says what failed, where, and how to fix
it; only the CLI prints them (one red line, exit code 1, traceback only with --debug)."""


class MonodynError(Exception):
    """Base class: an expected failure whose message is meant for the user."""


class InputError(MonodynError):
    """The user's input (video, folder, option value, file) cannot be used."""


class WeightsNotFoundError(MonodynError):
    """A pretrained component's weights are not on this machine; the message says what to download and where."""


class StageError(MonodynError):
    """A preprocessing stage or method ran but its result is unusable (e.g. COLMAP registered too few frames)."""


class MethodContractError(MonodynError):
    """A method broke the interface (e.g. a render of the wrong shape): a bug in monodyn, not the user's input."""
