"""The one exception type users see: a mistake in their input, told in one line."""


class XattnError(Exception):
    """A problem the user can fix (a config key, a data file, a download).

    The message is a single line that names the file, line or config key at fault; the CLI prints it
    as `xattn-ray: error: <message>` and exits with status 2, having written no partial results.
    """


class ConfigError(XattnError):
    """The experiment file is malformed: unknown key, wrong type, missing value."""


class DataError(XattnError):
    """A corpus or dictionary file is missing, misaligned, not UTF-8, or empty."""


class FetchError(XattnError):
    """A download failed or did not match its recorded checksum."""
