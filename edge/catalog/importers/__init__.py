"""Catalog importers: product tables and image folders (tables), the Grocery Store dataset layout (gsd)."""
