"""linewatch: real-time visual defect inspection."""

__version__ = "0.1.0"
