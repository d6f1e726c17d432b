"""StoreLens edge runtime: on-device product recognition and search.

This package never imports torch or ``export``: it must install and run on a small x86
store box with only the runtime dependencies.
"""

__version__ = "0.1.0"
