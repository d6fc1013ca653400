"""Frame sources of an acquisition node (synthetic now; Red Pitaya, emulator and replay later)."""
