"""`python -m emulator`: the same as `daq-redpitaya-emulator`."""
from emulator.cli import main

main()
