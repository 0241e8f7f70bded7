"""Rewrites Suricata eve.json events so they name the real client behind the proxy."""
