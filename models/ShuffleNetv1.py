"""Placeholder: architectures are added here."""
