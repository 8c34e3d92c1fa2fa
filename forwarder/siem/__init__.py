"""The SIEM-side setup shipped in `siem/`: applied through a SIEM's API, or generated."""
