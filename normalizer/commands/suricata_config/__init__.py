"""suricata_config."""
