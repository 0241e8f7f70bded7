"""Decapsulation in front of the core: VXLAN, GENEVE, fragments, tunnel references."""
