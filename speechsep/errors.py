"""The one error type the command-line tools turn into a single `error: ...` line instead of a traceback."""


class RecipeError(ValueError):
    """A problem with the user's input (path, file, config key); the message names it and what was expected."""
