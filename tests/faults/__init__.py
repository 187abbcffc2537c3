"""Fault injection: backends that die, stall, restart, refuse or fill up under running FTP sessions."""
