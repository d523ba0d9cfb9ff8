"""The built-in camera emulator: rendered parts with known defects, scene files, optics."""
