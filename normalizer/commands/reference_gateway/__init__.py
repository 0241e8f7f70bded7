"""reference_gateway."""
