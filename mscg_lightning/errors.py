"""User-facing errors: one sentence that names the file, column or value at fault."""


class MscgError(Exception):
    """An error caused by the user's input or configuration; the CLI prints it and exits with 2."""
