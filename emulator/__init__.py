"""Red Pitaya board emulator: real TCP servers speaking the board's SCPI and MCPHA protocols."""
