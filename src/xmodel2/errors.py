"""The one exception type the command line turns into `xmodel2: error: ...` and exit status 2."""


class UserError(Exception):
    """Bad input from the user: a missing file, a malformed line, an unknown key.

    The message must name the file, line or key so that one line is enough to fix it.
    """
