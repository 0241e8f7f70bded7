"""Real-component lab: namespaces, HAProxy/nginx, curl, tcpdump and Suricata (needs root)."""
