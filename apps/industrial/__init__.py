"""Factory QC: PCB defects + machine vibration -> pass/fail per board."""
