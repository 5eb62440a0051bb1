"""Radiology: chest CT + report -> lung-cancer probability with heat maps."""
