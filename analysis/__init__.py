"""The science of intermod."""
