"""qt: real-time B3 market-data machine learning from the shell."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("qt-cli")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
