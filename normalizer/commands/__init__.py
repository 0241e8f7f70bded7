"""The commands: rewrite, live, appliance, test-rules, suricata-config, ..."""
