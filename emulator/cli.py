"""`daq-redpitaya-emulator` (placeholder until the emulator lands)."""


def main() -> None:
    raise SystemExit("the emulator is not built yet")
